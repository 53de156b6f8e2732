#pragma once
// What every API family's routes need: the server's settings, the TokenizerManager and facts
// about the running processes. launch_server builds one and hands it to each register_*_routes.

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "dpserve/managers/tokenizer_manager.h"
#include "dpserve/openai/metrics.h"
#include "dpserve/server/server_args.h"

namespace dpserve {

struct ServingContext {
  const ServerArgs& args;                       // the validated flags
  TokenizerManager& tokenizer_manager;          // generation and control requests
  std::string runtime_dir;                      // the private directory of the ipc sockets
  int64_t scheduler_pid = 0;                    // the scheduler child's pid
  MetricsRegistry* metrics_registry = nullptr;  // --enable-metrics: what /metrics renders
  ServingMetrics* metrics = nullptr;            // --enable-metrics: the series requests feed
  // Adds the serving state and every rank's node, pid, state, heartbeat age (and its DP group's
  // load) to a /get_server_info answer, and the current scheduler_pid; null = nothing to add.
  std::function<void(nlohmann::json& info)> add_lifecycle_info{};
};

}  // namespace dpserve
