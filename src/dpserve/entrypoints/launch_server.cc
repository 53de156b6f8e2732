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
#include "dpserve/entrypoints/rank_launcher.h"
#include "dpserve/http/http_server.h"
#include "dpserve/http/native_api.h"
#include "dpserve/http/openai_api.h"
#include "dpserve/http/serving_context.h"
#include "dpserve/ipc/process.h"
#include "dpserve/ipc/zmq_socket.h"
#include "dpserve/managers/scheduler_process.h"
#include "dpserve/managers/tokenizer_manager.h"
#include "dpserve/openai/api_error.h"
#include "dpserve/openai/metrics.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {

namespace {

// Signal state: before the server is up a signal removes the runtime directory, kills the child
// and ends the process; afterwards it wakes the main thread through a pipe.
std::atomic<bool> g_serving{false};
constexpr int kMaxLocalRanks = 64;
std::atomic<pid_t> g_child_pids[kMaxLocalRanks];  // this node's scheduler ranks; 0 = none
int g_signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  if (!g_serving.load()) {
    cleanup_runtime_dirs();
    for (auto& p : g_child_pids) {
      const pid_t child = p.load();
      if (child > 0) ::kill(child, SIGKILL);
    }
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

void remember_pids(const std::vector<pid_t>& pids) {
  DPSERVE_CHECK(pids.size() <= kMaxLocalRanks, "at most {} scheduler ranks per node",
                kMaxLocalRanks);
  for (size_t i = 0; i < pids.size(); ++i) g_child_pids[i].store(pids[i]);
}

// What ended the serving loop.
struct StopCause {
  int signal = 0;                // the signal received, or 0
  std::optional<RankExit> rank;  // set when a scheduler rank died
};

// Waits for a signal or for a scheduler rank's exit.
StopCause wait_for_stop(RankLauncher& ranks) {
  for (;;) {
    std::vector<pollfd> fds = {{g_signal_pipe[0], POLLIN, 0}};
    for (int fd : ranks.exit_fds()) fds.push_back({fd, POLLIN, 0});
    const int rc = ::poll(fds.data(), fds.size(), 200);
    if (rc < 0 && errno != EINTR) throw_error("poll: {}", std::strerror(errno));
    if (rc > 0 && (fds[0].revents & POLLIN) != 0) {
      unsigned char b = 0;
      if (::read(g_signal_pipe[0], &b, 1) == 1) return {static_cast<int>(b), std::nullopt};
    }
    if (auto exit = ranks.poll_exit()) {
      // A signal to the whole process group (Ctrl-C, a service manager) may kill a rank before
      // our own handler's byte is read: give it a moment, so that shutdown stays graceful.
      pollfd sig{g_signal_pipe[0], POLLIN, 0};
      if (::poll(&sig, 1, 100) > 0) {
        unsigned char b = 0;
        if (::read(g_signal_pipe[0], &b, 1) == 1) return {static_cast<int>(b), std::nullopt};
      }
      return {0, std::move(exit)};
    }
  }
}

// A node other than node 0: runs its scheduler ranks and a /health endpoint (200 while every
// local rank runs) until a rank exits (node 0 stopping them, or a failure) or a signal arrives.
int run_worker_node(const ServerArgs& args, const std::vector<std::string>& serve_args) {
  RuntimeDir runtime_dir("dpserve");
  RankLauncher ranks(args, serve_args, runtime_dir.path());
  remember_pids(ranks.pids());
  ranks.wait_ready(std::chrono::hours(2));
  HttpServerOptions http_options;
  http_options.host = args.host;
  http_options.port = args.port;
  HttpServer http(http_options);
  std::atomic<bool> healthy{true};
  http.get("/health",
           [&healthy](const httplib::Request&, httplib::Response& res, const nlohmann::json&) {
             if (!healthy.load()) {
               throw ApiError(503, "a scheduler rank of this node exited", "service_unavailable");
             }
             res.status = 200;
           });
  http.bind();
  http.start();
  g_serving.store(true);
  spdlog::info("node {} of {}: {} scheduler ranks ready; /health on http://{}:{}", args.node_rank,
               args.nnodes, ranks.pids().size(), args.host, args.port);
  const StopCause cause = wait_for_stop(ranks);
  healthy.store(false);
  int code = 0;
  if (cause.rank) {
    // Node 0 stops the other nodes through the coordinator: their ranks exit 0.
    code = cause.rank->status == ExitStatus{0, 0} ? 0 : 1;
    if (code == 0) {
      spdlog::info("{} exited: node 0 shut down; stopping this node", cause.rank->name);
    } else {
      spdlog::critical("{} died: {}; this node stops", cause.rank->name,
                       cause.rank->status.describe());
    }
  } else {
    spdlog::info("received {}: stopping this node", strsignal(cause.signal));
  }
  ranks.terminate_all(std::chrono::seconds(5));
  http.stop();
  runtime_dir.remove();
  return code;
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
  if (args.node_rank > 0) return run_worker_node(args, serve_args);

  // Sockets first: the child connects to them as soon as it has loaded the model.
  RuntimeDir runtime_dir("dpserve");
  MessageSocket to_scheduler(zmq::socket_type::push);
  to_scheduler.bind(runtime_dir.endpoint(kSchedulerInputSocket));
  MessageSocket from_scheduler(zmq::socket_type::pull);
  from_scheduler.bind(runtime_dir.endpoint(kSchedulerOutputSocket));

  // Spawned from the main thread, which lives as long as the children (PDEATHSIG follows threads).
  RankLauncher ranks(args, serve_args, runtime_dir.path());
  remember_pids(ranks.pids());
  spdlog::info("runtime dir {}", runtime_dir.path());
  const nlohmann::json ready = ranks.wait_ready(std::chrono::hours(2));
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
  ServingContext ctx{args, tm, runtime_dir.path(), static_cast<int64_t>(ranks.pids().front())};
  register_native_routes(http, ctx);
  register_openai_routes(http, ctx);  // /v1/models, /v1/completions, /v1/chat/completions
  // /metrics: every request (native or OpenAI) feeds the series through the TokenizerManager.
  std::unique_ptr<MetricsRegistry> metrics_registry;
  std::unique_ptr<ServingMetrics> metrics;
  if (args.enable_metrics) {
    metrics_registry = std::make_unique<MetricsRegistry>();
    metrics =
        std::make_unique<ServingMetrics>(*metrics_registry, args.effective_served_model_name());
    ctx.metrics_registry = metrics_registry.get();
    ctx.metrics = metrics.get();
    tm.set_metrics(metrics.get());
    register_metrics_route(http, ctx);
  }

  http.bind();  // the port opens only now that the scheduler is ready
  http.start();
  g_serving.store(true);
  spdlog::info("The server is fired up and ready to roll! Listening on http://{}:{}", args.host,
               args.port);

  const StopCause cause = wait_for_stop(ranks);
  if (cause.rank) {
    const std::string what =
        fmt::format("{} died ({})", cause.rank->name, cause.rank->status.describe());
    spdlog::critical("{}; the server exits", what);
    tm.set_scheduler_dead(what);
    drain(tm, std::chrono::seconds(2));
    http.stop();
    tm.shutdown();
    ranks.terminate_all(std::chrono::seconds(2));
    runtime_dir.remove();
    return 1;
  }

  spdlog::info("received {}: shutting down gracefully ({} requests in flight)",
               strsignal(cause.signal), tm.num_live_requests());
  tm.stop_accepting();
  if (auto exit = ranks.poll_exit()) {
    // Killed together with us (e.g. SIGTERM to the whole process group).
    spdlog::warn("{} already exited ({})", exit->name, exit->status.describe());
    tm.set_scheduler_dead("the server is shutting down");
  } else {
    tm.abort_all();
  }
  drain(tm, std::chrono::seconds(5));
  http.stop();
  tm.shutdown();
  if (const auto st = ranks.terminate_all(std::chrono::seconds(5))) {
    spdlog::info("scheduler ranks stopped ({})", st->describe());
  }
  runtime_dir.remove();
  spdlog::info("server stopped");
  return 0;
}

}  // namespace dpserve
