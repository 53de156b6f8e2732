#pragma once
// ServerSupervisor: node 0's main loop once the server is up: it watches the scheduler ranks,
// recovers from their failures without a restart of the server, and drains on SIGTERM / SIGINT.
//
// Failure units: under plain DP (--dp-size N without DP attention) each DP replica (its --tp-size
// ranks) fails and restarts alone while the others serve, on whichever nodes its ranks run;
// otherwise (one rank, TP, DP attention) every rank computes in one collective group, so the unit
// is all of them.
//
// Detection, all within about --heartbeat-timeout:
//   - a rank process that exits (crash, kill -9, the scheduler's watchdog on a stuck step, a
//     broken collective): on node 0 its pidfd polls readable at once; on another node its
//     launcher sets lifecycle_exit_key(rank, generation) in the coordinator at once, which node 0
//     polls every 100 ms;
//   - a rank that hangs as a whole (SIGSTOP, a frozen machine): the coordinator misses its
//     heartbeats for --heartbeat-timeout and reports it dead; the supervisor SIGKILLs it (a rank
//     on another node: its launcher kills it when the restart comes).
// Propagation: one log line names the rank, its node, pid and the cause. The unit's other ranks
// are SIGKILLed (their collectives would fail anyway) and declared dead in the coordinator. The
// TokenizerManager fails the unit's in-flight requests with 503 (streams: an error event, then
// [DONE]): under plain DP only the requests of that DP group (the controller tells the front end
// where it dispatched each request), and the controller routes around the group at once;
// otherwise every request, and new ones get 503 + Retry-After ("recovering") until the restart.
// Recovery: after a back-off of 1, 2, 4 ... s (at most 30 s) the unit's ranks start again as a
// new generation (fresh rendezvous keys and barrier names; the coordinator takes the
// re-registration of ranks whose previous process is dead); once all report ready (node 0's over
// their pipes, the other nodes' through lifecycle_ready_key) the unit is back in service: under
// plain DP the controller routes to the group again (its restarted leader connects to the
// controller's sockets anew: over several nodes the tcp endpoints the coordinator still holds).
// --max-restarts failures in a row (the count resets after 60 s of service) end the server with
// exit status 1 and a message naming the rank and the cause. With several nodes node 0 publishes
// every restart generation in the coordinator with the global ranks that restart; each other
// node's launcher restarts those of its ranks (all of them under TP / DP attention, one replica's
// under plain DP). --max-restarts 0 is fail-stop (exit 1).
// The data parallel controller (--dp-size > 1, plain DP or DP attention) fails and restarts
// alone, with its own restart count under the same --max-restarts and back-off: its pidfd tells
// its exit at once (one log line with its pid and the cause); new requests get 503 + Retry-After
// ("the data parallel controller is restarting") and /health says "recovering"; after a grace of
// 300 ms for its last dispatch notices, the requests it never dispatched (lost in its queues)
// fail with 503, while those already in a DP group run on (their outputs come from the leaders
// directly). The new controller binds the same endpoints (ipc paths, or the tcp ports the first
// one got, published in the coordinator), so the leaders' sockets reconnect on their own; once
// it is ready the front end tells it the DP groups that are down, sends the aborts held back
// meanwhile and serves again; load reports give it a fresh load view.
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

// The lifecycle protocol between node 0's supervisor and the other nodes' launchers, through the
// coordinator's store. Generations count node 0's restarts (1, 2, ...) over the whole server.
//   - lifecycle_restart_key(g): node 0 sets it for every generation g (with --nnodes > 1); its
//     value lists the global ranks that restart as g (format_rank_list). A launcher polls for
//     g = its last seen + 1, restarts those of its ranks that are listed (none: it only moves on).
//   - lifecycle_exit_key(rank, g): a launcher sets it when its rank of generation g exited
//     unexpectedly; the value is {"node", "pid", "cause"} as JSON.
//   - lifecycle_ready_key(rank, g): a launcher sets it when its rank restarted as g is ready; the
//     value is the pid.
std::string lifecycle_restart_key(int generation);
std::string lifecycle_exit_key(int rank, int generation);
std::string lifecycle_ready_key(int rank, int generation);
// "2 3" for {2, 3}; parse_rank_list reads it back (ignoring anything that is not a number).
std::string format_rank_list(const std::vector<int>& ranks);
std::vector<int> parse_rank_list(const std::string& text);
// How a rank process ended, as a predicate: "died (killed by signal 9 (Killed))", with what the
// exit codes dpserve itself uses mean.
std::string rank_exit_cause(const ExitStatus& status);

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
    std::vector<int> remote_ranks;   // global ranks on other nodes
    std::vector<int32_t> dp_groups;  // DP groups it serves (plain DP: one; DP attention: all)
    bool whole_server = false;       // no other unit serves while it is down
    UnitState state = UnitState::kServing;
    int restarts = 0;                // restarts in a row
    Clock::time_point up_since;      // serving since
    Clock::time_point failed_at;     // the current failure's detection
    Clock::time_point restart_at;    // kBackoff: when its ranks start again
    int generation = 0;              // the generation its ranks run (or start) as
    std::vector<bool> ready;         // kStarting: per rank of `ranks`
    std::vector<bool> remote_ready;  // kStarting: per rank of `remote_ranks`
    std::string description;         // "DP group 1" or "the scheduler ranks"
  };

  int unit_of(int rank) const;
  int32_t dp_group_of(int rank) const;
  std::string rank_name(int rank, int node, int64_t pid) const;
  void on_signal();
  void on_failure(int unit, int rank, int node, int64_t pid, const std::string& cause);
  void fatal(const std::string& message);
  // The back-off before the next restart of something that failed `restarts` times in a row (1,
  // 2, 4 ... s, at most 30 s); nullopt when it is not restarted: while draining, or past
  // --max-restarts (then fatal() with `what`, the failure's description).
  std::optional<std::chrono::milliseconds> restart_delay(int restarts, const std::string& what);
  void start_unit(int unit);
  void poll_ready(int unit, const std::vector<int>& readable_ranks);
  // Remote ranks: their exits and readiness, from the keys their launchers set.
  void poll_remote(int unit);
  void check_ready(int unit);
  void on_unit_ready(int unit);
  void set_unit_state(int unit, UnitState state);
  bool all_units_down() const;
  void handle_dead_ranks();
  void handle_exits();
  // True once the drain finished (or was forced).
  bool drain_step();
  // The data parallel controller (node 0 with --dp-size > 1): it failed (its pid, the cause).
  void on_controller_failure(int64_t pid, const std::string& cause);
  // Its back-off ended: a new controller process on the same endpoints.
  void start_controller();
  // The restarting controller's readiness pipe polled readable.
  void poll_controller_ready();
  // The notice grace (fail the requests it never dispatched) and the restart timer.
  void controller_timers(Clock::time_point now);
  void set_controller_state(UnitState state, int64_t pid);

  const ServerArgs& args_;
  RankLauncher& launcher_;
  TokenizerManager& tm_;
  int signal_fd_;
  std::chrono::milliseconds startup_;
  bool plain_dp_ = false;
  int world_size_ = 1;
  int generation_ = 0;
  std::vector<Unit> units_;  // written by run()'s thread only; states mirrored under mu_
  // The data parallel controller restarts alone (its own restart count, the same back-off and
  // --max-restarts); written by run()'s thread only, state and pid mirrored under mu_.
  struct Controller {
    UnitState state = UnitState::kServing;
    int restarts = 0;                                       // restarts in a row
    Clock::time_point up_since;                             // serving since
    Clock::time_point failed_at;                            // the current failure's detection
    Clock::time_point restart_at;                           // kBackoff: when it starts again
    std::optional<Clock::time_point> fail_undispatched_at;  // the grace for in-flight notices
    std::string reason;                                     // what clients are told meanwhile
    int retry_after = 0;                                    // their Retry-After
  };
  Controller controller_;
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
  UnitState controller_state_ = UnitState::kServing;
  int controller_restarts_ = 0;
  int64_t controller_pid_ = 0;  // 0: no controller
};

}  // namespace dpserve
