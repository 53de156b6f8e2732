#include "dpserve/entrypoints/launch_server.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/common/logging.h"
#include "dpserve/distributed/coordinator_client.h"
#include "dpserve/distributed/coordinator_types.h"
#include "dpserve/entrypoints/rank_launcher.h"
#include "dpserve/entrypoints/server_supervisor.h"
#include "dpserve/http/http_server.h"
#include "dpserve/http/native_api.h"
#include "dpserve/http/openai_api.h"
#include "dpserve/http/serving_context.h"
#include "dpserve/ipc/process.h"
#include "dpserve/ipc/zmq_auth.h"
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

// A node other than node 0: runs its scheduler ranks and a /health endpoint until node 0 stops
// the cluster (its ranks exit 0 on the coordinator's shutdown broadcast, and so does this
// launcher's own coordinator client) or a signal arrives. A local rank that fails is left to
// node 0: this launcher reports the exit at once (lifecycle_exit_key), node 0 decides and
// publishes a restart generation listing the ranks that restart (server_supervisor.h): this
// node then kills those of its ranks (all under TP / DP attention, one DP replica's under plain
// DP) and starts them again as that generation, and reports each one ready
// (lifecycle_ready_key). Exit status 1 when the cluster stopped after a local failure or node 0's
// coordinator was lost.
int run_worker_node(const ServerArgs& args, const std::vector<std::string>& serve_args) {
  RuntimeDir runtime_dir("dpserve");
  RankLauncher ranks(args, serve_args, runtime_dir.path());
  remember_pids(ranks.pids());
  ranks.wait_ready(std::chrono::hours(2));
  const std::vector<int> local = ranks.local_ranks();

  // Node 0's restarts and shutdown reach this launcher through a coordinator client of its own.
  std::atomic<bool> node0_shutdown{false};
  std::atomic<bool> lost{false};
  CoordinatorClientOptions copt;
  copt.address = coordinator_address(args.node_0_address, args.coordinator_port);
  copt.dist_timeout = Millis(static_cast<int64_t>(args.dist_timeout * 1000));
  copt.secret = ClusterSecret(args.cluster_secret);
  copt.on_shutdown = [&node0_shutdown](const std::string&) { node0_shutdown.store(true); };
  copt.on_lost = [&lost](const std::string&) { lost.store(true); };
  CoordinatorClient client(std::move(copt));

  std::mutex health_mu;
  std::string unhealthy;  // why /health answers 503; empty = 200
  auto set_health = [&](std::string why) {
    std::lock_guard<std::mutex> lock(health_mu);
    unhealthy = std::move(why);
  };
  HttpServerOptions http_options;
  http_options.host = args.host;
  http_options.port = args.port;
  HttpServer http(http_options);
  http.get("/health", [&](const httplib::Request&, httplib::Response& res, const nlohmann::json&) {
    std::lock_guard<std::mutex> lock(health_mu);
    if (!unhealthy.empty()) throw ApiError(503, unhealthy, "service_unavailable");
    res.status = 200;
  });
  http.bind();
  http.start();
  g_serving.store(true);
  spdlog::info("node {} of {}: {} scheduler ranks ready; /health on http://{}:{}", args.node_rank,
               args.nnodes, local.size(), args.host, args.port);

  int generation = 0;  // the last restart generation seen (node 0's counter)
  bool local_failure = false;
  std::vector<bool> starting(local.size(), false);    // per local rank while a restart runs
  std::vector<int> rank_generation(local.size(), 0);  // per local rank: its incarnation
  const int world =
      args.tp_size * (args.dp_size > 1 && !args.enable_dp_attention ? args.dp_size : 1);
  auto index_of = [&](int r) {
    return static_cast<size_t>(std::find(local.begin(), local.end(), r) - local.begin());
  };
  // Tells node 0 through the coordinator (best effort: a lost coordinator ends this node anyway).
  auto publish = [&](const std::string& key, const std::string& value) {
    try {
      client.set(key, value);
    } catch (const Error& e) {
      spdlog::warn("cannot tell node 0 ({}): {}", key, e.what());
    }
  };
  int code = -1;
  auto last_check = std::chrono::steady_clock::now();
  while (code < 0) {
    std::vector<pollfd> fds = {{g_signal_pipe[0], POLLIN, 0}};
    for (int fd : ranks.exit_fds()) fds.push_back({fd, POLLIN, 0});
    const int rc = ::poll(fds.data(), fds.size(), 100);
    if (rc < 0 && errno != EINTR) throw_error("poll: {}", std::strerror(errno));
    unsigned char sig = 0;
    if (rc > 0 && (fds[0].revents & POLLIN) != 0 && ::read(g_signal_pipe[0], &sig, 1) == 1) {
      spdlog::info("received {}: stopping this node", strsignal(sig));
      code = 0;
      break;
    }
    for (const RankExit& e : ranks.poll_exits()) {
      if (e.status == ExitStatus{0, 0}) {
        spdlog::info("{} exited: node 0 shut down; stopping this node", e.name);
        code = local_failure ? 1 : 0;
        break;
      }
      local_failure = true;
      spdlog::error("{} (node {}, pid {}) died ({}); node 0 decides: a restart or a stop", e.name,
                    args.node_rank, e.pid, e.status.describe());
      const size_t i = index_of(e.rank);
      if (i < local.size()) {
        starting[i] = false;
        publish(lifecycle_exit_key(e.rank, rank_generation[i]),
                nlohmann::json{
                    {"node", args.node_rank}, {"pid", e.pid}, {"cause", rank_exit_cause(e.status)}}
                    .dump());
      }
      set_health(fmt::format("{} died ({}); waiting for node 0 to restart the ranks", e.name,
                             e.status.describe()));
    }
    if (code >= 0) break;
    if (node0_shutdown.load()) {
      spdlog::info("node 0 shut down; stopping this node");
      code = local_failure ? 1 : 0;
      break;
    }
    if (lost.load()) {
      spdlog::critical("lost node 0's coordinator at {}; this node stops", client.address());
      code = 1;
      break;
    }
    // Node 0 publishes every restart generation in turn, with the global ranks that restart.
    if (std::chrono::steady_clock::now() - last_check >= std::chrono::milliseconds(200)) {
      last_check = std::chrono::steady_clock::now();
      for (;;) {
        std::optional<std::vector<int>> listed;
        try {
          const std::string key = lifecycle_restart_key(generation + 1);
          if (client.check({key})) listed = parse_rank_list(client.get(key, Millis(5000)));
        } catch (const Error& e) {
          spdlog::warn("cannot ask the coordinator for restarts: {}", e.what());
        }
        if (!listed) break;
        ++generation;
        std::vector<int> mine;
        for (int r : *listed) {
          if (index_of(r) < local.size()) mine.push_back(r);
        }
        if (mine.empty()) continue;  // another node's ranks restart
        spdlog::warn("node 0 restarts {} (generation {}): restarting this node's ranks {}",
                     static_cast<int>(listed->size()) == world
                         ? std::string("every rank")
                         : fmt::format("ranks {}", format_rank_list(*listed)),
                     generation, format_rank_list(mine));
        ranks.kill_ranks(mine, "node 0 restarts the ranks");
        ranks.respawn(mine, generation);
        remember_pids(ranks.pids());
        for (int r : mine) {
          starting[index_of(r)] = true;
          rank_generation[index_of(r)] = generation;
        }
        set_health(fmt::format("restarting scheduler ranks {} (generation {})",
                               format_rank_list(mine), generation));
      }
    }
    // Readiness of a restart (the ranks are ready once every rank of every node joined).
    for (size_t i = 0; i < starting.size(); ++i) {
      ChildProcess& c = ranks.child(local[i]);
      if (!starting[i] || c.ready_fd() < 0) continue;
      pollfd p{c.ready_fd(), POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) continue;
      try {
        c.wait_ready(std::chrono::seconds(5));
        starting[i] = false;
        publish(lifecycle_ready_key(local[i], rank_generation[i]), std::to_string(c.pid()));
      } catch (const Error& e) {
        starting[i] = false;
        local_failure = true;
        spdlog::error("{}; waiting for node 0 to restart the ranks", e.what());
        set_health(e.what());
        publish(lifecycle_exit_key(local[i], rank_generation[i]),
                nlohmann::json{{"node", args.node_rank},
                               {"pid", c.pid()},
                               {"cause", fmt::format("failed to start: {}", e.what())}}
                    .dump());
      }
      if (std::none_of(starting.begin(), starting.end(), [](bool b) { return b; }) &&
          std::all_of(local.begin(), local.end(),
                      [&](int r) { return !ranks.child(r).exit_status().has_value(); })) {
        spdlog::info("this node's ranks are back (generation {})", generation);
        local_failure = false;
        set_health("");
      }
    }
  }
  set_health("this node is stopping");
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

// The HTTP options of node 0's server, from the flags.
HttpServerOptions http_options_of(const ServerArgs& args) {
  HttpServerOptions o;
  o.host = args.host;
  o.port = args.port;
  o.api_key = args.api_key;
  o.log_requests = args.log_requests;
  o.timeout_s = args.http_timeout;
  return o;
}

// The port opens as soon as the server starts: while the model loads, /health and every other
// route answer 503 "starting" (with Retry-After), so probes see a live process that is not ready
// yet, and a busy port fails at once instead of after loading.
std::unique_ptr<HttpServer> start_placeholder_http(const ServerArgs& args) {
  HttpServerOptions o = http_options_of(args);
  o.max_threads = 8;
  auto http = std::make_unique<HttpServer>(o);
  const httplib::Server::Handler starting = [](const httplib::Request&, httplib::Response& res) {
    set_error_response(res, ApiError(503,
                                     "the server is starting: the model is loading and the "
                                     "scheduler ranks are joining; retry later",
                                     "service_unavailable")
                                .with_retry_after(5));
  };
  httplib::Server& raw = http->raw();
  raw.Get(".*", starting);
  raw.Post(".*", starting);
  raw.Put(".*", starting);
  raw.Delete(".*", starting);
  http->bind();
  http->start();
  return http;
}

}  // namespace

int launch_server(const ServerArgs& args, const std::vector<std::string>& serve_args) {
  install_signal_handlers();
  if (args.node_rank > 0) return run_worker_node(args, serve_args);

  std::unique_ptr<HttpServer> placeholder = start_placeholder_http(args);
  spdlog::info("starting: http://{}:{}/health answers 503 until the model is loaded", args.host,
               args.port);

  // Sockets first: the child connects to them as soon as it has loaded the model.
  RuntimeDir runtime_dir("dpserve");
  MessageSocket to_scheduler(zmq::socket_type::push);
  to_scheduler.bind(runtime_dir.endpoint(kSchedulerInputSocket));
  MessageSocket from_scheduler(zmq::socket_type::pull);
  from_scheduler.bind(runtime_dir.endpoint(kSchedulerOutputSocket));
  std::string output_tcp;
  if (args.dp_size > 1 && args.nnodes > 1) {
    // DP group leaders on other nodes send their outputs here over tcp, secured with the cluster
    // secret (validate() requires one with several nodes); the ipc endpoint bound above stays
    // plaintext for the local controller.
    secure_server_socket(from_scheduler.raw(), ClusterSecret(args.cluster_secret),
                         "scheduler output");
    from_scheduler.bind("tcp://0.0.0.0:*");
    output_tcp = from_scheduler.bound_endpoint();
  }

  // Spawned from the main thread, which lives as long as the children (PDEATHSIG follows threads).
  const auto started = std::chrono::steady_clock::now();
  RankLauncher ranks(args, serve_args, runtime_dir.path(), output_tcp);
  remember_pids(ranks.pids());
  spdlog::info("runtime dir {}", runtime_dir.path());
  const nlohmann::json ready = ranks.wait_ready(std::chrono::hours(2));
  const SchedulerInfo info = SchedulerInfo::from_json(ready);
  const auto startup = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started);

  std::shared_ptr<const Tokenizer> tokenizer(load_tokenizer(args.effective_tokenizer_path()));
  TokenizerManager tm(tokenizer, info, std::move(to_scheduler), std::move(from_scheduler),
                      args.context_length, args.log_requests);
  ServerSupervisor supervisor(args, ranks, tm, g_signal_pipe[0], startup);

  HttpServer http(http_options_of(args));
  ServingContext ctx{args, tm, runtime_dir.path(), static_cast<int64_t>(ranks.pids().front())};
  ctx.add_lifecycle_info = [&supervisor](nlohmann::json& j) { supervisor.add_server_info(j); };
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

  placeholder->stop();  // hand the port over to the real routes
  placeholder.reset();
  http.bind();
  http.start();
  g_serving.store(true);
  spdlog::info("The server is fired up and ready to roll! Listening on http://{}:{}", args.host,
               args.port);

  // Failures, restarts and the graceful drain: see server_supervisor.h.
  const int code = supervisor.run();
  drain(tm, std::chrono::seconds(2));  // failed or aborted requests: their error answers
  http.stop();
  tm.shutdown();
  if (const auto st = ranks.terminate_all(std::chrono::seconds(5))) {
    spdlog::info("scheduler ranks stopped ({})", st->describe());
  }
  runtime_dir.remove();
  if (code == 0) {
    spdlog::info("server stopped");
  } else {
    spdlog::critical("server stopped after a failure it could not recover from");
  }
  return code;
}

}  // namespace dpserve
