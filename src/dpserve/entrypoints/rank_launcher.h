#pragma once
// RankLauncher: starts and watches this node's scheduler ranks (SGLang's _launch_subprocesses for
// the scheduler side). With one rank in the world it spawns one scheduler child, as before. With
// more (--tp-size > 1, possibly over --nnodes machines) node 0 first starts the coordinator on a
// thread of its own, then every node spawns its ranks [node_rank * per_node, ... + per_node) with
// the coordinator's address; the ranks register there, rendezvous their Gloo groups through it and
// report ready over their pipes once the model is loaded and every rank has joined. With plain
// data parallelism (--dp-size > 1 without DP attention) it first starts the
// DataParallelController child and then dp_size replicas of tp_size ranks, whose leaders take
// their requests from the controller.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/distributed/coordinator.h"
#include "dpserve/ipc/process.h"
#include "dpserve/server/server_args.h"

namespace dpserve {

// The child that ended first, and how.
struct RankExit {
  std::string name;   // "scheduler rank 1"
  ExitStatus status;  // how it ended
};

class RankLauncher {
 public:
  // Starts the coordinator (node 0 of a multi-rank launch) and spawns this node's ranks; throws
  // dpserve::Error when the coordinator cannot bind or a child cannot be spawned.
  RankLauncher(const ServerArgs& args, const std::vector<std::string>& serve_args,
               const std::string& runtime_dir);
  // Terminates the ranks that still run.
  ~RankLauncher();
  RankLauncher(const RankLauncher&) = delete;
  RankLauncher& operator=(const RankLauncher&) = delete;

  // Waits until every local rank reported ready; returns the first local rank's payload (rank 0's
  // on node 0). Throws dpserve::Error with the failing rank's message (and terminates the others).
  nlohmann::json wait_ready(std::chrono::milliseconds timeout);

  // A rank that has exited, if any.
  std::optional<RankExit> poll_exit();
  // File descriptors that poll readable when a rank exits (for the main loop's poll()).
  std::vector<int> exit_fds() const;
  // Tells the other nodes to stop (node 0 of a multi-node launch), SIGTERM then SIGKILL after
  // `grace` to every local rank; returns the worst exit status seen (first non-zero), if any.
  std::optional<ExitStatus> terminate_all(std::chrono::milliseconds grace);

  // The local ranks' pids, then the controller's (for the signal handler).
  std::vector<pid_t> pids() const;

 private:
  int world_size_ = 1;
  std::string gloo_host_ = "127.0.0.1";
  std::unique_ptr<Coordinator> coordinator_;
  std::vector<std::unique_ptr<ChildProcess>> ranks_;
  std::unique_ptr<ChildProcess> controller_;  // node 0 under plain DP: the controller
};

// The local address this machine uses to reach `host` (the source address of a route to it):
// what a node publishes to its peers. Throws dpserve::Error naming the host when it cannot be
// resolved or reached.
std::string local_address_towards(const std::string& host, int port);

}  // namespace dpserve
