#pragma once
// The scheduler child process of `dpserve serve` (SGLang's run_scheduler_process): loads the
// model, builds the Scheduler from ServerArgs, connects to the main process's ZeroMQ sockets in
// the runtime directory, reports readiness with its KV capacity and runs SGLang's normal event
// loop on one thread: receive requests -> step -> send BatchTokenIdOut.
//
// Sockets (names inside the runtime directory; the main process binds both):
//   kSchedulerInputSocket: TokenizedGenerateReq / AbortReq / FlushCacheReq / GetServerInfoReq in
//   kSchedulerOutputSocket: BatchTokenIdOut / FlushCacheResp / GetServerInfoResp out
// The outputs carry final text deltas: the Scheduler's StopChecker detokenizes incrementally (it
// must, to match stop strings), so the main process does not detokenize again.

#include <string>
#include <vector>

#include "dpserve/ipc/process.h"
#include "dpserve/managers/scheduler.h"
#include "dpserve/server/server_args.h"

namespace dpserve {

// The role name passed to ChildProcess / ChildContext.
inline constexpr const char* kSchedulerRole = "scheduler";
// Socket file names inside the runtime directory.
inline constexpr const char* kSchedulerInputSocket = "scheduler_input";
inline constexpr const char* kSchedulerOutputSocket = "scheduler_output";
// The child's flag that carries the runtime directory.
inline constexpr const char* kRuntimeDirFlag = "--runtime-dir";
// Internal flags of a rank in a multi-rank (tensor-parallel) launch.
inline constexpr const char* kRankFlag = "--dpserve-rank";                // global rank
inline constexpr const char* kCoordinatorFlag = "--dpserve-coordinator";  // tcp://host:port
inline constexpr const char* kLocalRanksFlag = "--dpserve-local-ranks";   // ranks on this node
inline constexpr const char* kGlooHostFlag = "--dpserve-gloo-host";  // address peers reach us at
// Which incarnation of the ranks this is: 0 at launch, higher after a restart (recovery). It
// names the rendezvous keys and barriers, so a restarted group never meets a previous one's.
inline constexpr const char* kGenerationFlag = "--dpserve-generation";

// A rank's identity in a multi-rank launch (the internal flags above).
struct RankFlags {
  int rank = 0;                         // global rank == tp rank
  std::string coordinator;              // the coordinator's address; empty with one rank
  int local_ranks = 1;                  // scheduler ranks on this node (they share its cores)
  std::string gloo_host = "127.0.0.1";  // this node's address for Gloo connections
  int generation = 0;                   // incarnation (kGenerationFlag); 0 at launch
};

// Compute threads per rank when --num-threads is 0: this machine's cores divided among its ranks.
int default_rank_threads(int local_ranks);

// The Scheduler's settings for `args` (ServerArgs -> SchedulerConfig).
SchedulerConfig scheduler_config_from_server_args(const ServerArgs& args);

// Arguments of the scheduler child: the runtime directory, then the serve flags as given.
std::vector<std::string> scheduler_child_args(const std::string& runtime_dir,
                                              const std::vector<std::string>& serve_args);

// The child's main: parses its arguments, starts up (reporting an error to the parent on
// failure) and serves until killed. Returns the process exit code.
int run_scheduler_process(ChildContext& ctx);

}  // namespace dpserve
