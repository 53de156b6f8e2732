#include "dpserve/entrypoints/launch_server.h"

#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <thread>

#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/common/logging.h"
#include "dpserve/http/http_server.h"
#include "dpserve/http/native_api.h"
#include "dpserve/http/serving_context.h"
#include "dpserve/ipc/process.h"
#include "dpserve/ipc/zmq_socket.h"
#include "dpserve/managers/scheduler_process.h"
#include "dpserve/managers/tokenizer_manager.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {

namespace {

// Signal state: before the server is up a signal removes the runtime directory, kills the child
// and ends the process; afterwards it wakes the main thread through a pipe.
std::atomic<bool> g_serving{false};
std::atomic<pid_t> g_child_pid{-1};
int g_signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  if (!g_serving.load()) {
    cleanup_runtime_dirs();
    const pid_t child = g_child_pid.load();
    if (child > 0) ::kill(child, SIGKILL);
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  const auto b = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t n = ::write(g_signal_pipe[1], &b, 1);
}

void install_signal_handlers() {
  if (g_signal_pipe[0] < 0 && ::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    throw_error("cannot create the signal pipe: {}", std::strerror(errno));
  }
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);      // a client that hangs up must not kill the server
  install_cleanup_signal_handlers();  // SIGHUP / SIGQUIT: remove the runtime dir and die
}

// What ended the serving loop.
struct StopCause {
  int signal = 0;                   // the signal received, or 0
  std::optional<ExitStatus> child;  // set when the scheduler died
};

// Waits for a signal or for the scheduler's exit.
StopCause wait_for_stop(ChildProcess& child) {
  for (;;) {
    pollfd fds[2] = {{g_signal_pipe[0], POLLIN, 0}, {child.exit_fd(), POLLIN, 0}};
    const int nfds = child.exit_fd() >= 0 ? 2 : 1;
    const int rc = ::poll(fds, nfds, child.exit_fd() >= 0 ? -1 : 200);
    if (rc < 0 && errno != EINTR) throw_error("poll: {}", std::strerror(errno));
    if (rc > 0 && (fds[0].revents & POLLIN) != 0) {
      unsigned char b = 0;
      if (::read(g_signal_pipe[0], &b, 1) == 1) return {static_cast<int>(b), std::nullopt};
    }
    if (auto status = child.poll_exit()) return {0, status};
  }
}

// Waits until every open response finished (or `timeout` passed).
void drain(TokenizerManager& tm, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (tm.num_open_handles() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (tm.num_open_handles() > 0) {
    spdlog::warn("shutdown: {} responses still open; closing them", tm.num_open_handles());
  }
}

}  // namespace

int launch_server(const ServerArgs& args, const std::vector<std::string>& serve_args) {
  install_signal_handlers();

  // Sockets first: the child connects to them as soon as it has loaded the model.
  RuntimeDir runtime_dir("dpserve");
  MessageSocket to_scheduler(zmq::socket_type::push);
  to_scheduler.bind(runtime_dir.endpoint(kSchedulerInputSocket));
  MessageSocket from_scheduler(zmq::socket_type::pull);
  from_scheduler.bind(runtime_dir.endpoint(kSchedulerOutputSocket));

  // Spawned from the main thread, which lives as long as the child (PDEATHSIG follows threads).
  ChildProcess child({.role = kSchedulerRole,
                      .args = scheduler_child_args(runtime_dir.path(), serve_args),
                      .name = "scheduler"});
  g_child_pid.store(child.pid());
  spdlog::info("scheduler process started (pid {}), runtime dir {}", child.pid(),
               runtime_dir.path());
  const nlohmann::json ready = child.wait_ready(std::chrono::hours(1));
  const SchedulerInfo info = SchedulerInfo::from_json(ready);

  std::shared_ptr<const Tokenizer> tokenizer(load_tokenizer(args.effective_tokenizer_path()));
  TokenizerManager tm(tokenizer, info, std::move(to_scheduler), std::move(from_scheduler),
                      args.context_length, args.log_requests);

  HttpServerOptions http_options;
  http_options.host = args.host;
  http_options.port = args.port;
  http_options.api_key = args.api_key;
  http_options.log_requests = args.log_requests;
  HttpServer http(http_options);
  ServingContext ctx{args, tm, runtime_dir.path(), static_cast<int64_t>(child.pid())};
  register_native_routes(http, ctx);
  // API families that plug in next to the native one:
  //   register_openai_routes(http, ctx);   // /v1/models, /v1/completions, /v1/chat/completions
  //   if (args.enable_metrics) register_metrics_route(http, ctx);   // /metrics

  http.bind();  // the port opens only now that the scheduler is ready
  http.start();
  g_serving.store(true);
  spdlog::info("The server is fired up and ready to roll! Listening on http://{}:{}", args.host,
               args.port);

  const StopCause cause = wait_for_stop(child);
  if (cause.child) {
    spdlog::critical("the scheduler process (pid {}) died: {}; the server exits", child.pid(),
                     cause.child->describe());
    tm.set_scheduler_dead(fmt::format("the scheduler process died ({})", cause.child->describe()));
    drain(tm, std::chrono::seconds(2));
    http.stop();
    tm.shutdown();
    runtime_dir.remove();
    return 1;
  }

  spdlog::info("received {}: shutting down gracefully ({} requests in flight)",
               strsignal(cause.signal), tm.num_live_requests());
  tm.stop_accepting();
  if (auto st = child.poll_exit()) {
    // Killed together with us (e.g. SIGTERM to the whole process group).
    spdlog::warn("the scheduler process already exited ({})", st->describe());
    tm.set_scheduler_dead("the server is shutting down");
  } else {
    tm.abort_all();
  }
  drain(tm, std::chrono::seconds(5));
  http.stop();
  tm.shutdown();
  const ExitStatus st = child.terminate(std::chrono::seconds(5));
  spdlog::info("scheduler process stopped ({})", st.describe());
  runtime_dir.remove();
  spdlog::info("server stopped");
  return 0;
}

}  // namespace dpserve
