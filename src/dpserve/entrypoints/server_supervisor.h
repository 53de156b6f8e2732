#pragma once
// ServerSupervisor: node 0's main loop once the server is up: it watches the scheduler ranks,
// recovers from their failures without a restart of the server, and drains on SIGTERM / SIGINT.
//
// Failure units: under plain DP (--dp-size N without DP attention) each DP replica (its --tp-size
// ranks) fails and restarts alone while the others serve; otherwise (one rank, TP, DP attention)
// every rank computes in one collective group, so the unit is all of them.
//
// Detection, all within about --heartbeat-timeout:
//   - a rank process that exits (crash, kill -9, the scheduler's watchdog on a stuck step, a
//     broken collective): its pidfd polls readable at once;
//   - a rank that hangs as a whole (SIGSTOP, a frozen machine): the coordinator misses its
//     heartbeats for --heartbeat-timeout and reports it dead; the supervisor SIGKILLs it.
// Propagation: one log line names the rank, its node, pid and the cause. The unit's other ranks
// are SIGKILLed (their collectives would fail anyway) and declared dead in the coordinator. The
// TokenizerManager fails the unit's in-flight requests with 503 (streams: an error event, then
// [DONE]): under plain DP only the requests of that DP group (the controller tells the front end
// where it dispatched each request), and the controller routes around the group at once;
// otherwise every request, and new ones get 503 + Retry-After ("recovering") until the restart.
// Recovery: after a back-off of 1, 2, 4 ... s (at most 30 s) the unit's ranks start again as a
// new generation (fresh rendezvous keys and barrier names; the coordinator takes the
// re-registration of ranks whose previous process is dead); once all report ready the unit is
// back in service. --max-restarts failures in a row (the count resets after 60 s of service)
// end the server with exit status 1 and a message naming the rank and the cause. With ranks on
// several nodes (TP / DP attention) node 0 publishes each restart's generation in the
// coordinator; the other nodes' launchers then restart their ranks. Plain DP replicas over
// several nodes, --max-restarts 0 and a dead controller are fail-stop (exit 1).
// Shutdown: the first SIGTERM / SIGINT drains: new requests get 503, /health says "draining",
// in-flight requests finish normally for up to --shutdown-timeout, then the rest are aborted. A
// second signal stops at once.

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/entrypoints/rank_launcher.h"
#include "dpserve/managers/tokenizer_manager.h"
#include "dpserve/server/server_args.h"

namespace dpserve {

// The coordinator key node 0 sets when the ranks of every node must restart as `generation`;
// the other nodes' launchers poll for the next one.
std::string lifecycle_restart_key(int generation);

class ServerSupervisor {
 public:
  // `signal_fd` polls readable with one byte per SIGINT / SIGTERM; `startup` is how long the
  // ranks took to start (the Retry-After estimate of a restart).
  ServerSupervisor(const ServerArgs& args, RankLauncher& launcher, TokenizerManager& tm,
                   int signal_fd, std::chrono::milliseconds startup);
  ServerSupervisor(const ServerSupervisor&) = delete;
  ServerSupervisor& operator=(const ServerSupervisor&) = delete;

  // Serves until a signal (returns 0 once drained or forced) or a failure it cannot recover from
  // (returns 1; every request has failed by then). The caller then stops HTTP and the ranks.
  int run();
  // Adds "server_state", "ranks" (each rank's node, pid, state, heartbeat age, DP group and that
  // group's load) and the current "scheduler_pid" to a /get_server_info answer. Thread-safe.
  void add_server_info(nlohmann::json& info) const;

 private:
  using Clock = std::chrono::steady_clock;
  enum class UnitState { kServing, kBackoff, kStarting, kDown };

  // The ranks that fail and restart together.
  struct Unit {
    std::vector<int> ranks;          // global ranks on this node
    std::vector<int> remote_ranks;   // global ranks on other nodes (TP / DP attention)
    std::vector<int32_t> dp_groups;  // DP groups it serves (plain DP: one; DP attention: all)
    bool whole_server = false;       // no other unit serves while it is down
    UnitState state = UnitState::kServing;
    int restarts = 0;              // restarts in a row
    Clock::time_point up_since;    // serving since
    Clock::time_point failed_at;   // the current failure's detection
    Clock::time_point restart_at;  // kBackoff: when its ranks start again
    std::vector<bool> ready;       // kStarting: per rank of `ranks`
    std::string description;       // "DP group 1" or "the scheduler ranks"
  };

  int unit_of(int rank) const;
  int32_t dp_group_of(int rank) const;
  std::string rank_name(int rank, int node, int64_t pid) const;
  void on_signal();
  void on_failure(int unit, int rank, int node, int64_t pid, const std::string& cause);
  void fatal(const std::string& message);
  void start_unit(int unit);
  void poll_ready(int unit, const std::vector<int>& readable_ranks);
  void on_unit_ready(int unit);
  void set_unit_state(int unit, UnitState state);
  bool all_units_down() const;
  void handle_dead_ranks();
  void handle_exits();
  // True once the drain finished (or was forced).
  bool drain_step();

  const ServerArgs& args_;
  RankLauncher& launcher_;
  TokenizerManager& tm_;
  int signal_fd_;
  std::chrono::milliseconds startup_;
  bool plain_dp_ = false;
  int world_size_ = 1;
  int generation_ = 0;
  std::vector<Unit> units_;  // written by run()'s thread only; states mirrored under mu_
  std::optional<std::string> fatal_;
  // Draining (after the first signal).
  bool draining_ = false;
  bool aborted_ = false;  // the --shutdown-timeout passed and the rest were aborted
  bool forced_ = false;   // a second signal
  Clock::time_point drain_deadline_;

  // What add_server_info reads from HTTP threads.
  mutable std::mutex mu_;
  std::vector<int64_t> pids_;           // per local rank: the current process
  std::vector<UnitState> unit_states_;  // per unit
  std::vector<int> unit_restarts_;      // per unit
};

}  // namespace dpserve
