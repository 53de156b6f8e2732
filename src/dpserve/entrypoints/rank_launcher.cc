#include "dpserve/entrypoints/rank_launcher.h"

#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/distributed/coordinator_types.h"
#include "dpserve/managers/data_parallel_controller.h"
#include "dpserve/managers/scheduler_process.h"

namespace dpserve {

using Clock = std::chrono::steady_clock;

std::string local_address_towards(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    throw_error("--node-0-address {}: cannot resolve it: {}", host, gai_strerror(rc));
  }
  std::string out;
  std::string why = "no address";
  for (addrinfo* ai = res; ai != nullptr && out.empty(); ai = ai->ai_next) {
    // A connected UDP socket sends nothing; it only asks the kernel for the route's source.
    const int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char buf[NI_MAXHOST];
      if (getnameinfo(reinterpret_cast<sockaddr*>(&local), len, buf, sizeof(buf), nullptr, 0,
                      NI_NUMERICHOST) == 0) {
        out = buf;
      }
    } else {
      why = std::strerror(errno);
    }
    close(fd);
  }
  freeaddrinfo(res);
  if (out.empty()) throw_error("--node-0-address {}: no route to it: {}", host, why);
  return out;
}

std::vector<std::string> without_cluster_secret(const std::vector<std::string>& serve_args) {
  std::vector<std::string> out;
  for (size_t i = 0; i < serve_args.size(); ++i) {
    if (serve_args[i] == "--cluster-secret") {
      ++i;  // and its value
    } else if (!serve_args[i].starts_with("--cluster-secret=")) {
      out.push_back(serve_args[i]);
    }
  }
  return out;
}

RankLauncher::RankLauncher(const ServerArgs& args, const std::vector<std::string>& serve_args,
                           const std::string& runtime_dir, const std::string& scheduler_output_tcp)
    : args_(args), serve_args_(without_cluster_secret(serve_args)), runtime_dir_(runtime_dir) {
  dead_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (dead_fd_ < 0) throw_error("launcher: eventfd failed: {}", std::strerror(errno));
  // Plain DP: --dp-size replicas of --tp-size ranks, behind the DataParallelController.
  const bool plain_dp = args.dp_size > 1 && !args.enable_dp_attention;
  world_size_ = args.tp_size * (plain_dp ? args.dp_size : 1);
  const int per_node = world_size_ / args.nnodes;
  const int first = args.node_rank * per_node;
  per_node_ = per_node;
  first_rank_ = first;
  std::string coordinator_addr;
  // Every layout has the coordinator, one rank too: its heartbeats tell a hung rank (SIGSTOP).
  {
    if (args.nnodes == 1) {
      gloo_host_ = "127.0.0.1";
    } else {
      gloo_host_ = local_address_towards(args.node_0_address, args.coordinator_port);
    }
    // The cluster secret: given (flag or environment; validate() requires it with several nodes)
    // or, on one node, generated here. Local children read it from the environment, never argv.
    const ClusterSecret secret = args.cluster_secret.empty() ? ClusterSecret::generate()
                                                             : ClusterSecret(args.cluster_secret);
    ::setenv(kClusterSecretEnv, secret.value().c_str(), 1);
    if (args.node_rank == 0) {
      CoordinatorOptions copt;
      copt.secret = secret;
      // Ranks heartbeat 5 times per --heartbeat-timeout (at most once a second).
      const auto timeout = Millis(static_cast<int64_t>(args.heartbeat_timeout * 1000));
      copt.heartbeat_timeout = timeout;
      copt.heartbeat_interval = std::clamp(timeout / 5, Millis(50), Millis(1000));
      copt.on_rank_dead = [this](const RankState& st) { on_rank_dead(st); };
      // One node: loopback and an ephemeral port, so servers on one machine never collide.
      copt.host = args.nnodes == 1 ? "127.0.0.1" : "0.0.0.0";
      copt.port = args.nnodes == 1 ? 0 : args.coordinator_port;
      coordinator_ = std::make_unique<Coordinator>(copt);
      coordinator_addr = args.nnodes == 1
                             ? coordinator_->endpoint()
                             : coordinator_address(args.node_0_address, args.coordinator_port);
      spdlog::info("coordinator listening on {} for {} ranks on {} node(s)",
                   coordinator_->endpoint(), world_size_, args.nnodes);
    } else {
      coordinator_addr = coordinator_address(args.node_0_address, args.coordinator_port);
    }
  }
  // DP attention: one instance of --tp-size ranks, in --dp-size DP groups, also behind the
  // controller (each group's leader reads from it).
  if (args.dp_size > 1 && args.node_rank == 0) start_controller(args, runtime_dir);
  if (args.dp_size > 1 && args.nnodes > 1 && args.node_rank == 0) {
    // Leaders on other nodes cannot reach node 0's ipc:// sockets: publish the tcp ones.
    DPSERVE_CHECK(!scheduler_output_tcp.empty(),
                  "DP groups over several nodes need the main process's tcp output socket");
    coordinator_->set(kDpOutputEndpointKey,
                      endpoint_for_peers(scheduler_output_tcp, args.node_0_address));
    coordinator_->set(kDpLoadEndpointKey,
                      endpoint_for_peers(controller_endpoints_.load, args.node_0_address));
    for (int k = 0; k < args.dp_size; ++k) {
      coordinator_->set(
          dp_leader_input_key(k),
          endpoint_for_peers(controller_endpoints_.leaders.at(k), args.node_0_address));
    }
  }
  coordinator_addr_ = coordinator_addr;
  ranks_.resize(static_cast<size_t>(per_node));
  for (int r = first; r < first + per_node; ++r) spawn_rank(r, 0);
}

void RankLauncher::spawn_rank(int r, int generation) {
  const ServerArgs& args = args_;
  const bool plain_dp = args.dp_size > 1 && !args.enable_dp_attention;
  std::vector<std::string> child_args = scheduler_child_args(runtime_dir_, serve_args_);
  child_args.insert(child_args.end(),
                    {kRankFlag, std::to_string(r), kCoordinatorFlag, coordinator_addr_,
                     kLocalRanksFlag, std::to_string(per_node_), kGlooHostFlag, gloo_host_,
                     kGenerationFlag, std::to_string(generation)});
  std::string name =
      world_size_ > 1 ? fmt::format("scheduler rank {}", r) : std::string("scheduler process");
  if (plain_dp) name += fmt::format(" (DP group {})", r / args.tp_size);
  if (!plain_dp && args.enable_dp_attention && args.dp_size > 1) {
    name += fmt::format(" (DP group {})", r / (args.tp_size / args.dp_size));
  }
  auto& slot = ranks_.at(static_cast<size_t>(r - first_rank_));
  slot = std::make_unique<ChildProcess>(
      ChildSpec{.role = kSchedulerRole, .args = std::move(child_args), .name = name});
  spdlog::info("{} started (pid {}{})", name, slot->pid(),
               generation > 0 ? fmt::format(", restart generation {}", generation) : "");
}

void RankLauncher::on_rank_dead(const RankState& state) {
  {
    std::lock_guard<std::mutex> lock(dead_mu_);
    dead_.push_back(state);
  }
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(dead_fd_, &one, sizeof(one));
}

std::vector<RankState> RankLauncher::take_dead_ranks() {
  uint64_t count = 0;
  [[maybe_unused]] const ssize_t n = ::read(dead_fd_, &count, sizeof(count));
  std::lock_guard<std::mutex> lock(dead_mu_);
  return std::exchange(dead_, {});
}

std::vector<RankExit> RankLauncher::poll_exits() {
  std::vector<RankExit> out;
  for (size_t i = 0; i < ranks_.size(); ++i) {
    ChildProcess& c = *ranks_[i];
    const bool running = !c.exit_status().has_value();
    if (auto st = c.poll_exit(); st && running) {
      out.push_back({c.name(), *st, first_rank_ + static_cast<int>(i), c.pid()});
    }
  }
  if (controller_ && !controller_->exit_status()) {
    if (auto st = controller_->poll_exit()) {
      out.push_back({controller_->name(), *st, -1, controller_->pid()});
    }
  }
  return out;
}

std::vector<int> RankLauncher::local_ranks() const {
  std::vector<int> out;
  for (int i = 0; i < per_node_; ++i) out.push_back(first_rank_ + i);
  return out;
}

ChildProcess& RankLauncher::child(int rank) {
  DPSERVE_CHECK(rank >= first_rank_ && rank < first_rank_ + per_node_,
                "rank {} is not on this node", rank);
  return *ranks_[static_cast<size_t>(rank - first_rank_)];
}

void RankLauncher::kill_ranks(const std::vector<int>& ranks, const std::string& why) {
  for (int r : ranks) {
    ChildProcess& c = child(r);
    if (!c.exit_status()) {
      c.kill(SIGKILL);
      c.wait_exit(Millis(-1));
    }
    if (coordinator_) coordinator_->declare_dead(r, why);
  }
}

void RankLauncher::respawn(const std::vector<int>& ranks, int generation) {
  for (int r : ranks) {
    DPSERVE_CHECK(child(r).exit_status().has_value(), "rank {} still runs", r);
    spawn_rank(r, generation);
  }
}

std::vector<std::string> RankLauncher::controller_args(bool same_endpoints) const {
  std::vector<std::string> cargs =
      data_parallel_controller_args(runtime_dir_, args_.dp_size, args_.load_balance_method,
                                    std::chrono::milliseconds(10000), args_.log_level);
  if (args_.nnodes > 1) cargs.push_back("--secure");  // leaders on every node connect over tcp
  if (same_endpoints) {
    // The same ipc paths, or the same tcp ports (published under endpoints/... already).
    cargs.insert(cargs.end(), {"--load", controller_endpoints_.load});
    for (const std::string& e : controller_endpoints_.leaders) {
      cargs.insert(cargs.end(), {"--leader-input", e});
    }
  } else if (args_.nnodes > 1) {
    // The system picks the ports.
    cargs.insert(cargs.end(), {"--load", "tcp://0.0.0.0:*"});
    for (int k = 0; k < args_.dp_size; ++k) {
      cargs.insert(cargs.end(), {"--leader-input", "tcp://0.0.0.0:*"});
    }
  }
  return cargs;
}

void RankLauncher::start_controller(const ServerArgs& args, const std::string& runtime_dir) {
  DPSERVE_CHECK(runtime_dir == runtime_dir_, "the controller runs in the launcher's runtime dir");
  controller_ = std::make_unique<ChildProcess>(ChildSpec{.role = kDpControllerRole,
                                                         .args = controller_args(false),
                                                         .name = "data parallel controller"});
  const nlohmann::json ready = controller_->wait_ready(std::chrono::seconds(30));
  controller_endpoints_.load = ready.at("load_endpoint").get<std::string>();
  controller_endpoints_.leaders = ready.at("leader_endpoints").get<std::vector<std::string>>();
  spdlog::info("data parallel controller ready (pid {}): {} groups, {}", controller_->pid(),
               args.dp_size, args.load_balance_method);
}

void RankLauncher::respawn_controller() {
  DPSERVE_CHECK(controller_ != nullptr, "no data parallel controller to restart");
  DPSERVE_CHECK(controller_->exit_status().has_value(), "the data parallel controller still runs");
  controller_ = std::make_unique<ChildProcess>(ChildSpec{.role = kDpControllerRole,
                                                         .args = controller_args(true),
                                                         .name = "data parallel controller"});
  spdlog::info("data parallel controller started again (pid {}) on {} and {}", controller_->pid(),
               controller_endpoints_.load, fmt::join(controller_endpoints_.leaders, ", "));
}

void RankLauncher::controller_ready(std::chrono::milliseconds timeout) {
  DPSERVE_CHECK(controller_ != nullptr, "no data parallel controller");
  try {
    const nlohmann::json ready = controller_->wait_ready(timeout);
    const auto load = ready.at("load_endpoint").get<std::string>();
    const auto leaders = ready.at("leader_endpoints").get<std::vector<std::string>>();
    if (load != controller_endpoints_.load || leaders != controller_endpoints_.leaders) {
      throw_error("the restarted data parallel controller bound {} and {} instead of {} and {}",
                  load, fmt::join(leaders, ", "), controller_endpoints_.load,
                  fmt::join(controller_endpoints_.leaders, ", "));
    }
  } catch (const Error&) {
    if (!controller_->exit_status()) {
      controller_->kill(SIGKILL);
      controller_->wait_exit(Millis(-1));
    }
    throw;
  } catch (const nlohmann::json::exception& e) {
    controller_->kill(SIGKILL);
    controller_->wait_exit(Millis(-1));
    throw_error("the restarted data parallel controller's readiness: {}", e.what());
  }
}

RankLauncher::~RankLauncher() {
  if (coordinator_) coordinator_->stop();  // no more on_rank_dead calls
  for (auto& r : ranks_) {
    if (r && !r->exit_status()) r->kill(SIGKILL);
  }
  if (controller_ && !controller_->exit_status()) controller_->kill(SIGKILL);
  if (dead_fd_ >= 0) ::close(dead_fd_);
}

nlohmann::json RankLauncher::wait_ready(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::vector<bool> ready(ranks_.size(), false);
  nlohmann::json first;
  size_t left = ranks_.size();
  try {
    while (left > 0) {
      // Whichever rank speaks (or dies) first is read first, so a failing rank is reported at
      // once instead of after the others time out waiting for it.
      std::vector<pollfd> fds;
      std::vector<size_t> idx;
      for (size_t i = 0; i < ranks_.size(); ++i) {
        if (ready[i]) continue;
        fds.push_back({ranks_[i]->ready_fd(), POLLIN, 0});
        idx.push_back(i);
      }
      const auto left_ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      const int rc = ::poll(fds.data(), fds.size(),
                            static_cast<int>(std::clamp<int64_t>(left_ms.count(), 0, 1000)));
      if (rc < 0 && errno != EINTR) throw_error("poll: {}", std::strerror(errno));
      if (rc == 0 && Clock::now() >= deadline) {
        // Let the first silent rank produce its own message (exit status or timeout).
        ranks_[idx.front()]->wait_ready(std::chrono::milliseconds(0));
      }
      for (size_t k = 0; k < fds.size(); ++k) {
        if ((fds[k].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        nlohmann::json payload = ranks_[idx[k]]->wait_ready(std::chrono::seconds(5));
        if (idx[k] == 0) first = std::move(payload);
        ready[idx[k]] = true;
        --left;
      }
    }
  } catch (const Error&) {
    terminate_all(std::chrono::seconds(2));
    throw;
  }
  if (coordinator_) {
    // Rank 0 is ready only after every rank joined its groups; this also checks they are alive.
    coordinator_->wait_for_ranks(world_size_, std::chrono::seconds(5));
  }
  return first;
}

std::optional<RankExit> RankLauncher::poll_exit() {
  for (auto& r : ranks_) {
    if (auto st = r->poll_exit()) return RankExit{r->name(), *st};
  }
  if (controller_) {
    if (auto st = controller_->poll_exit()) return RankExit{controller_->name(), *st};
  }
  return std::nullopt;
}

std::vector<int> RankLauncher::exit_fds() const {
  std::vector<int> fds;
  for (const auto& r : ranks_) {
    if (r->exit_fd() >= 0) fds.push_back(r->exit_fd());
  }
  if (controller_ && controller_->exit_fd() >= 0) fds.push_back(controller_->exit_fd());
  return fds;
}

std::optional<ExitStatus> RankLauncher::terminate_all(std::chrono::milliseconds grace) {
  if (coordinator_) coordinator_->broadcast_shutdown("node 0 is shutting down");
  for (auto& r : ranks_) {
    if (!r->exit_status()) r->kill(SIGTERM);
  }
  std::optional<ExitStatus> worst;
  for (auto& r : ranks_) {
    const ExitStatus st = r->terminate(grace);
    const ExitStatus clean{0, 0};
    if (!worst || (*worst == clean && !(st == clean))) worst = st;
  }
  if (controller_) controller_->terminate(grace);
  if (coordinator_) coordinator_->stop();
  return worst;
}

std::vector<pid_t> RankLauncher::pids() const {
  std::vector<pid_t> out;
  for (const auto& r : ranks_) out.push_back(r->pid());
  if (controller_) out.push_back(controller_->pid());
  return out;
}

}  // namespace dpserve
