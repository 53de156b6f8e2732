#include "dpserve/entrypoints/rank_launcher.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstring>

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

RankLauncher::RankLauncher(const ServerArgs& args, const std::vector<std::string>& serve_args,
                           const std::string& runtime_dir) {
  // Plain DP: --dp-size replicas of --tp-size ranks, behind the DataParallelController.
  const bool plain_dp = args.dp_size > 1 && !args.enable_dp_attention;
  world_size_ = args.tp_size * (plain_dp ? args.dp_size : 1);
  // DP attention: one instance of --tp-size ranks, in --dp-size DP groups, also behind the
  // controller (each group's leader reads from it).
  if (args.dp_size > 1 && args.node_rank == 0) {
    // The controller binds the leaders' sockets; it starts first so they find them.
    controller_ = std::make_unique<ChildProcess>(ChildSpec{
        .role = kDpControllerRole,
        .args = data_parallel_controller_args(runtime_dir, args.dp_size, args.load_balance_method,
                                              std::chrono::milliseconds(10000), args.log_level),
        .name = "data parallel controller"});
    controller_->wait_ready(std::chrono::seconds(30));
    spdlog::info("data parallel controller ready (pid {}): {} groups, {}", controller_->pid(),
                 args.dp_size, args.load_balance_method);
  }
  const int per_node = world_size_ / args.nnodes;
  const int first = args.node_rank * per_node;
  std::string coordinator_addr;
  if (world_size_ > 1) {
    if (args.nnodes == 1) {
      gloo_host_ = "127.0.0.1";
    } else {
      gloo_host_ = local_address_towards(args.node_0_address, args.coordinator_port);
    }
    if (args.node_rank == 0) {
      CoordinatorOptions copt;
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
  for (int r = first; r < first + per_node; ++r) {
    std::vector<std::string> child_args = scheduler_child_args(runtime_dir, serve_args);
    if (world_size_ > 1) {
      child_args.insert(child_args.end(),
                        {kRankFlag, std::to_string(r), kCoordinatorFlag, coordinator_addr,
                         kLocalRanksFlag, std::to_string(per_node), kGlooHostFlag, gloo_host_});
    }
    std::string name =
        world_size_ > 1 ? fmt::format("scheduler rank {}", r) : std::string("scheduler process");
    if (plain_dp) name += fmt::format(" (DP group {})", r / args.tp_size);
    if (!plain_dp && args.enable_dp_attention && args.dp_size > 1) {
      name += fmt::format(" (DP group {})", r / (args.tp_size / args.dp_size));
    }
    ranks_.push_back(std::make_unique<ChildProcess>(
        ChildSpec{.role = kSchedulerRole, .args = std::move(child_args), .name = name}));
    spdlog::info("{} started (pid {})", name, ranks_.back()->pid());
  }
}

RankLauncher::~RankLauncher() {
  for (auto& r : ranks_) {
    if (!r->exit_status()) r->kill(SIGKILL);
  }
  if (controller_ && !controller_->exit_status()) controller_->kill(SIGKILL);
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
