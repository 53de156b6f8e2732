#pragma once
// DataParallelController: the process between the TokenizerManager and the DP group leaders when
// --dp-size > 1 (SGLang's managers/data_parallel_controller.py).
//
//   TokenizerManager --PUSH scheduler_input--> controller --PUSH scheduler_input_dp<k>--> leader k
//   leaders --PUSH dp_controller_load--> controller     (LoadReport, FlushCacheResp,
//   GetServerInfoResp) leaders --PUSH scheduler_output--> TokenizerManager (BatchTokenIdOut; the
//   controller never sees
//                                                        them)
//   controller --PUSH scheduler_output--> TokenizerManager (combined control answers, rejections)
//
// Sockets: the controller connects to the main process's two sockets (bound there, as for one
// scheduler) and binds its own: one PUSH per DP group (the leader connects a PULL) and one PULL for
// the leaders' reports and control answers. Binding on the controller side also serves leaders on
// other nodes (tcp:// endpoints on node 0).
//
// Routing:
//   - TokenizedGenerateReq: to the group named by data_parallel_rank when it is >= 0 (external
//     routing, SGLang's data_parallel_rank; honoured even when that group is stale), else to the
//     group the load-balance method picks (DpDispatchPolicy). A rank outside [0, dp_size) is
//     answered here with a finished abort output per completion (finish_reason
//     {"type":"abort","message":"data_parallel_rank 5 is out of range ..."}) sent to the
//     TokenizerManager's output socket, so the HTTP client gets the error like any abort. A
//     TokenizerManager that knows dp_size may reject it earlier with a 400; this stays the
//     backstop.
//   - AbortReq (one rid or all) and FlushCacheReq: to every group (schedulers ignore unknown rids).
//   - FlushCacheReq / GetServerInfoReq: the controller collects one answer per group and sends the
//     TokenizerManager ONE answer: FlushCacheResp succeeds only if every group flushed (the message
//     names the groups that did not); GetServerInfoResp is group 0's info object with the summed
//     request counters plus "dp_size", "load_balance_method" and "dp_groups": one entry per group
//     with its load view ("load") and its leader's own info ("info"). Groups that are stale are not
//     asked; a group that does not answer within the control timeout is reported as such.
//   - LoadReport: updates the load view. A group silent for longer than the stale timeout is marked
//     stale (logged) and not chosen while another group is fresh; its next report makes it fresh.
//   - DpGroupState (from the main process, whose launcher restarts failed ranks): a group that is
//     down is never chosen, requests naming it are rejected, control requests skip it; when it is
//     up again it starts over with a fresh load view. A restarted controller (the main process
//     respawns a dead one on the same endpoints) starts with every group up and is sent a
//     DpGroupState for each group that is down before any request.
//   - Every dispatch is told to the TokenizerManager (DpDispatchNotice, batched per poll), so the
//     front end can fail exactly the requests of a group that dies.
//
// The dispatch policy is a plain class (no sockets, time passed in) so that it is unit-tested with
// known load patterns; the controller is its event loop over real sockets.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/ipc/io_struct.h"
#include "dpserve/ipc/process.h"
#include "dpserve/ipc/zmq_auth.h"
#include "dpserve/ipc/zmq_socket.h"

namespace dpserve {

// The role name passed to ChildProcess / ChildContext.
inline constexpr const char* kDpControllerRole = "dp_controller";
// The controller's PULL socket for load reports and control answers (inside the runtime dir).
inline constexpr const char* kDpControllerLoadSocket = "dp_controller_load";

// The socket name of DP group `dp_rank`'s leader input inside the runtime dir
// ("scheduler_input_dp<k>").
std::string dp_leader_input_socket(int dp_rank);

// When DP groups span nodes, node 0 binds these sockets on tcp and publishes the endpoints in the
// coordinator's store under these keys; every DP group leader reads them from there.
inline constexpr const char* kDpOutputEndpointKey = "endpoints/scheduler_output";
inline constexpr const char* kDpLoadEndpointKey = "endpoints/dp_controller_load";
// The key of DP group `dp_rank`'s leader input endpoint.
std::string dp_leader_input_key(int dp_rank);
// The endpoint a peer on another node uses for a socket bound at `bound` ("tcp://0.0.0.0:41234"):
// the same port on `host`, the address the peers know node 0 by.
std::string endpoint_for_peers(const std::string& bound, const std::string& host);

// How requests without an explicit DP rank are spread over the groups (--load-balance-method).
enum class LoadBalanceMethod {
  kRoundRobin,     // "round_robin": the next group in turn
  kShortestQueue,  // "shortest_queue": fewest running + waiting requests
  kMinimumTokens,  // "minimum_tokens": fewest KV tokens in use + queued prompt tokens
};

// Parses a method name; throws dpserve::Error naming the valid choices.
LoadBalanceMethod parse_load_balance_method(std::string_view name);
// The method's flag value ("round_robin", ...).
std::string_view load_balance_method_name(LoadBalanceMethod method);

// The controller's clock (monotonic; load report timestamps are only shown, never compared).
using SteadyTime = std::chrono::steady_clock::time_point;

// The load view of one DP group: its last report plus what was dispatched to it since.
struct DpGroupLoad {
  std::optional<LoadReport> last_report;  // null until the first report
  SteadyTime last_heard{};                // when the last report arrived (else the start time)
  int64_t dispatched_reqs = 0;            // requests dispatched since the last report
  int64_t dispatched_tokens = 0;          // their prompt tokens
  int64_t total_dispatched = 0;           // requests dispatched since the start
  int64_t num_reports = 0;                // reports received since the start
  bool stale = false;                     // marked by DpDispatchPolicy::update_staleness
  bool down = false;                      // its ranks failed and are restarting (set_down)
  std::string down_reason;                // why it went down

  // Running + waiting requests of the last report plus those dispatched since.
  int64_t requests() const;
  // KV tokens in use + queued prompt tokens of the last report plus tokens dispatched since.
  int64_t tokens() const;
};

// Where one request goes.
struct DispatchDecision {
  int32_t dp_rank = -1;        // the chosen group, or -1 when the request is rejected
  bool explicit_rank = false;  // the request named its group
  std::string error;           // why it was rejected (set iff dp_rank == -1)
};

// The pure dispatch policy over the load view. Not thread-safe (the controller's loop owns it).
class DpDispatchPolicy {
 public:
  // `dp_size` groups, all fresh at `start`; a group is stale once nothing was heard from it for
  // longer than `stale_timeout`.
  DpDispatchPolicy(int dp_size, LoadBalanceMethod method, std::chrono::milliseconds stale_timeout,
                   SteadyTime start);

  // Picks the group of `req` (its explicit data_parallel_rank, else the method over the fresh
  // groups that are not down, ties to the lowest rank) and counts the request in that group's
  // load view. Rejects a request naming a down group, or any when every group is down.
  DispatchDecision dispatch(const TokenizedGenerateReq& req, SteadyTime now);
  // Replaces a group's report and clears what was dispatched to it since the previous one; false
  // (and no change) when report.dp_rank is out of range.
  bool on_report(const LoadReport& report, SteadyTime now);
  // Re-marks staleness at `now`; returns the groups whose state changed (for logs).
  std::vector<int32_t> update_staleness(SteadyTime now);
  // Takes a group out of service (its ranks failed): never chosen, and requests naming it are
  // rejected with `reason`, until set_up.
  void set_down(int32_t dp_rank, const std::string& reason);
  // Puts a restarted group back in service with a fresh load view (as if just started at `now`).
  void set_up(int32_t dp_rank, SteadyTime now);
  // True while the group is down.
  bool is_down(int32_t dp_rank) const { return group(dp_rank).down; }
  // True when nothing was heard from `dp_rank` for longer than the stale timeout at `now`.
  bool is_stale(int32_t dp_rank, SteadyTime now) const;

  // Number of DP groups.
  int dp_size() const { return static_cast<int>(groups_.size()); }
  // The load-balance method.
  LoadBalanceMethod method() const { return method_; }
  // The stale timeout.
  std::chrono::milliseconds stale_timeout() const { return stale_timeout_; }
  // One group's load view.
  const DpGroupLoad& group(int32_t dp_rank) const;
  // One group's load view as JSON (report fields, dispatched since, report age, stale).
  nlohmann::json group_json(int32_t dp_rank, SteadyTime now) const;

 private:
  int32_t choose(SteadyTime now);

  LoadBalanceMethod method_;
  std::chrono::milliseconds stale_timeout_;
  std::vector<DpGroupLoad> groups_;
  int32_t round_robin_next_ = 0;  // the next group in turn (round_robin)
};

// Where the controller's sockets are, and its timers.
struct DataParallelControllerOptions {
  int dp_size = 2;                                            // number of DP groups
  LoadBalanceMethod method = LoadBalanceMethod::kRoundRobin;  // for requests without a rank
  std::string input_endpoint;   // connect (PULL): the TokenizerManager's requests
  std::string output_endpoint;  // connect (PUSH): the TokenizerManager's output socket
  std::string load_endpoint;    // bind (PULL): leaders' load reports and control answers
  std::vector<std::string> leader_endpoints;        // bind (PUSH), one per group: its input
  std::chrono::milliseconds stale_timeout{10000};   // silence that makes a group stale
  std::chrono::milliseconds control_timeout{5000};  // wait for the groups' control answers
  std::chrono::milliseconds send_timeout{1000};     // a leader that takes no message
  std::chrono::milliseconds poll_interval{50};      // longest sleep between timer checks
  // Secures the leader and report sockets (tcp, when DP groups span nodes) with the cluster's
  // CURVE keys; empty = plaintext (ipc:// inside node 0's runtime dir).
  ClusterSecret secret;

  // The default layout inside a runtime directory: the main process's scheduler_input /
  // scheduler_output (bound there), dp_controller_load and scheduler_input_dp<k>.
  static DataParallelControllerOptions in_runtime_dir(const std::string& runtime_dir, int dp_size,
                                                      LoadBalanceMethod method);
};

// Counters, for tests and logs.
struct DataParallelControllerStats {
  int64_t dispatched = 0;       // generate requests sent to a group
  int64_t rejected = 0;         // generate requests answered with an abort here
  int64_t aborts = 0;           // AbortReqs fanned out
  int64_t load_reports = 0;     // LoadReports received
  int64_t control_answers = 0;  // combined control answers sent
  int64_t malformed = 0;        // undecodable or unexpected messages dropped
};

class DataParallelController {
 public:
  // Binds and connects the sockets; throws dpserve::Error naming an endpoint that fails.
  explicit DataParallelController(DataParallelControllerOptions options);

  // One loop iteration: waits up to `timeout` for messages, handles all that arrived, then the
  // timers (stale groups, the control deadline).
  void run_once(std::chrono::milliseconds timeout);
  // Loops until stop() is called or `keep_running` (checked every poll interval) returns false.
  void run(const std::function<bool()>& keep_running = {});
  // Makes run() return after its current iteration (thread-safe).
  void stop() { stop_.store(true); }

  // The dispatch policy and load view.
  const DpDispatchPolicy& policy() const { return policy_; }
  // Counters so far.
  const DataParallelControllerStats& stats() const { return stats_; }
  // The options in use; the bound endpoints are the real ones (tcp ports chosen by the system).
  const DataParallelControllerOptions& options() const { return options_; }

 private:
  // A FlushCacheReq or GetServerInfoReq waiting for the groups' answers.
  struct PendingControl {
    bool flush = false;                           // FlushCacheReq, else GetServerInfoReq
    SteadyTime deadline{};                        // answer with what arrived by then
    std::vector<std::optional<Message>> answers;  // per group
    std::vector<std::string> errors;              // per group: why it was not asked / no answer
    int outstanding = 0;                          // groups still to answer
  };

  void handle_request(Message&& msg);
  void handle_leader_message(Message&& msg);
  void dispatch(TokenizedGenerateReq&& req);
  void reject(const TokenizedGenerateReq& req, const std::string& error);
  void fan_out(const Message& msg, std::vector<std::string>* errors);
  void start_control(bool flush, SteadyTime now);
  void finish_control();
  void check_timers(SteadyTime now);
  void set_group_state(const DpGroupState& st);
  void send_notices();

  DataParallelControllerOptions options_;
  DpDispatchPolicy policy_;
  MessageSocket in_;                    // from the TokenizerManager
  MessageSocket out_;                   // to the TokenizerManager
  MessageSocket load_;                  // from the leaders
  std::vector<MessageSocket> leaders_;  // to the leaders, by dp rank
  std::optional<PendingControl> pending_;
  DpDispatchNotice notices_;  // dispatches not yet told to the TokenizerManager
  DataParallelControllerStats stats_;
  std::atomic<bool> stop_{false};
};

// Arguments of the controller child (for ChildSpec::args): the runtime dir, dp_size, method and
// the timers; endpoints default to DataParallelControllerOptions::in_runtime_dir.
std::vector<std::string> data_parallel_controller_args(
    const std::string& runtime_dir, int dp_size, std::string_view load_balance_method,
    std::chrono::milliseconds stale_timeout = std::chrono::milliseconds(10000),
    const std::string& log_level = "info");

// The child's main (role kDpControllerRole): parses its arguments (--runtime-dir, --dp-size,
// --load-balance-method, optional --input / --output / --load / --leader-input xN endpoints,
// --stale-timeout-ms, --control-timeout-ms, --log-level), binds, reports ready with
// {"dp_size", "load_balance_method", "load_endpoint", "leader_endpoints"} and routes until its
// parent dies (or SIGTERM). Returns the process exit code.
int run_data_parallel_controller_process(ChildContext& ctx);

}  // namespace dpserve
