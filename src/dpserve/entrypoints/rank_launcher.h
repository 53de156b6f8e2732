#pragma once
// RankLauncher: starts and watches this node's scheduler ranks (SGLang's _launch_subprocesses for
// the scheduler side). With one rank in the world it spawns one scheduler child, as before. With
// more (--tp-size > 1, possibly over --nnodes machines) node 0 first starts the coordinator on a
// thread of its own, then every node spawns its ranks [node_rank * per_node, ... + per_node) with
// the coordinator's address; the ranks register there, rendezvous their Gloo groups through it and
// report ready over their pipes once the model is loaded and every rank has joined. With plain
// data parallelism (--dp-size > 1 without DP attention) it first starts the
// DataParallelController child and then dp_size replicas of tp_size ranks, whose leaders take
// their requests from the controller. Every layout has the coordinator (its heartbeats tell a
// hung rank). For recovery (entrypoints/server_supervisor.h) it reports every child's exit and
// the coordinator's heartbeat deaths, kills ranks and starts them again as a new generation, and
// starts a dead controller again on the endpoints the first one bound.

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/distributed/coordinator.h"
#include "dpserve/ipc/process.h"
#include "dpserve/server/server_args.h"

namespace dpserve {

// A child that ended, and how.
struct RankExit {
  std::string name;   // "scheduler rank 1"
  ExitStatus status;  // how it ended
  int rank = -1;      // its global rank; -1 for the data parallel controller
  int64_t pid = 0;    // its pid
};

class RankLauncher {
 public:
  // Starts the coordinator (node 0 of a multi-rank launch) and spawns this node's ranks; throws
  // dpserve::Error when the coordinator cannot bind or a child cannot be spawned. When DP groups
  // span nodes, node 0 publishes `scheduler_output_tcp` (the main process's output socket, also
  // bound on tcp) and the controller's tcp sockets through the coordinator.
  RankLauncher(const ServerArgs& args, const std::vector<std::string>& serve_args,
               const std::string& runtime_dir, const std::string& scheduler_output_tcp = "");
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

  // ---- Recovery (node 0's ServerSupervisor) ----

  // Every child that exited since the last call, reaped (ranks and the controller).
  std::vector<RankExit> poll_exits();
  // The global ranks this node runs, in order.
  std::vector<int> local_ranks() const;
  // The process of local global rank `rank` (the current incarnation).
  ChildProcess& child(int rank);
  // SIGKILLs and reaps the ranks of `ranks` (global, local to this node) that still run, and
  // tells the coordinator they are dead (so their barriers fail and they may register again).
  void kill_ranks(const std::vector<int>& ranks, const std::string& why);
  // Starts a new process for each of `ranks` (global, local, not running) as incarnation
  // `generation` (> 0): fresh rendezvous keys and barrier names. Throws dpserve::Error when a
  // child cannot be spawned.
  void respawn(const std::vector<int>& ranks, int generation);
  // The coordinator (node 0), else null.
  Coordinator* coordinator() { return coordinator_.get(); }
  // Ranks the coordinator declared dead (missed heartbeats) since the last call; thread-safe.
  std::vector<RankState> take_dead_ranks();
  // The DataParallelController child (node 0 with --dp-size > 1), else null.
  ChildProcess* controller() { return controller_.get(); }
  // Starts a new controller process (the previous one has exited) bound to the SAME endpoints as
  // the first one (tcp: the port numbers the system chose then), so the leaders' connected
  // sockets reconnect on their own. Does not wait: its ready_fd() polls readable once it reports;
  // then call controller_ready(). Throws dpserve::Error when it cannot be spawned.
  void respawn_controller();
  // Reads the restarted controller's readiness (up to `timeout`) and checks that it bound the
  // endpoints it had; throws dpserve::Error with its message otherwise (it is killed then).
  void controller_ready(std::chrono::milliseconds timeout);
  // Polls readable while take_dead_ranks() has something (for the supervisor's poll()).
  int dead_ranks_fd() const { return dead_fd_; }

 private:
  // Starts the DataParallelController child (node 0, --dp-size > 1) and keeps its endpoints.
  void start_controller(const ServerArgs& args, const std::string& runtime_dir);
  // The controller child's arguments: the first start lets the system pick tcp ports; a restart
  // (`same_endpoints`) passes the endpoints the first one bound.
  std::vector<std::string> controller_args(bool same_endpoints) const;
  // Spawns global rank `rank` as incarnation `generation` and stores it in ranks_.
  void spawn_rank(int rank, int generation);
  // Called on the coordinator's thread: queues a heartbeat death for take_dead_ranks().
  void on_rank_dead(const RankState& state);

  // The controller's bound sockets (tcp when DP groups span nodes).
  struct ControllerEndpoints {
    std::string load;                  // leaders' load reports and control answers
    std::vector<std::string> leaders;  // each group's input, by dp rank
  };

  int world_size_ = 1;
  int first_rank_ = 0;  // this node's first global rank
  int per_node_ = 1;    // ranks per node
  ServerArgs args_;
  std::vector<std::string> serve_args_;
  std::string runtime_dir_;
  std::string coordinator_addr_;
  int dead_fd_ = -1;  // eventfd: the coordinator declared a rank dead
  std::mutex dead_mu_;
  std::vector<RankState> dead_;  // guarded by dead_mu_
  std::string gloo_host_ = "127.0.0.1";
  std::unique_ptr<Coordinator> coordinator_;
  std::vector<std::unique_ptr<ChildProcess>> ranks_;
  std::unique_ptr<ChildProcess> controller_;  // node 0 with --dp-size > 1: the controller
  ControllerEndpoints controller_endpoints_;
};

// `serve_args` without --cluster-secret and its value: children get the secret through their
// environment (kClusterSecretEnv), so that it never shows in `ps`.
std::vector<std::string> without_cluster_secret(const std::vector<std::string>& serve_args);

// The local address this machine uses to reach `host` (the source address of a route to it):
// what a node publishes to its peers. Throws dpserve::Error naming the host when it cannot be
// resolved or reached.
std::string local_address_towards(const std::string& host, int port);

}  // namespace dpserve
