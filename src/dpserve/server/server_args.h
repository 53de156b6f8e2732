#pragma once
// ServerArgs: every flag of `dpserve serve` in one struct, with SGLang's names and defaults
// (python/sglang/srt/server_args.py), CLI registration, validation and a JSON view for
// /get_server_info.
//
// Three steps at startup: add_to() registers the flags on a CLI11 app and parse fills the struct;
// validate() rejects inconsistent values with a message naming the flag; check_implemented()
// rejects values that are valid but not served yet (tensor / data parallelism, several nodes,
// DP attention, dtype conversion), so that nothing is silently ignored. Later issues lift entries
// of check_implemented() as they land.

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace CLI {
class App;
}

namespace dpserve {

struct ServerArgs {
  // Model and tokenizer.
  std::string model_path;         // --model-path: Hugging Face model directory (required)
  std::string tokenizer_path;     // --tokenizer-path: tokenizer directory; empty = model_path
  int64_t context_length = 0;     // --context-length: max tokens per sequence; 0 = from config.json
  std::string dtype = "auto";     // --dtype: auto (weights as stored) | float32 | bfloat16
  std::string served_model_name;  // --served-model-name: name in the API; empty = model_path

  // HTTP server.
  std::string host = "127.0.0.1";  // --host: address the HTTP server binds
  int port = 30000;                // --port: HTTP port
  std::string api_key;             // --api-key: when set, requests need "Authorization: Bearer"
  std::string log_level = "info";  // --log-level: debug | info | warning | error | critical
  bool log_requests = false;       // --log-requests: log every request's inputs and outputs
  bool enable_metrics = false;     // --enable-metrics: serve Prometheus /metrics
  double http_timeout = 60.0;  // --http-timeout: seconds to receive a request / per blocked write

  // Parallelism and nodes.
  int tp_size = 1;                   // --tp-size: tensor-parallel ranks (total ranks under DP attn)
  int dp_size = 1;                   // --dp-size: data-parallel groups
  int ep_size = 0;                   // --ep-size: expert-parallel groups (MoE); 0 = --tp-size
  bool enable_dp_attention = false;  // --enable-dp-attention: attention DP, MLP over all tp ranks
  int nnodes = 1;                    // --nnodes: number of machines
  int node_rank = 0;                 // --node-rank: this machine's index in [0, nnodes)
  std::string node_0_address;        // --node-0-address: host of node 0 (needed when nnodes > 1)
  int coordinator_port = 29500;      // --coordinator-port: node 0's coordinator TCP port
  double dist_timeout = 60.0;        // --dist-timeout: seconds to reach peers / per collective
  // --cluster-secret (or $DPSERVE_CLUSTER_SECRET): only peers presenting it reach the coordinator
  // and inter-node sockets; required with --nnodes > 1, generated on one node when empty.
  std::string cluster_secret;
  std::string load_balance_method = "round_robin";  // --load-balance-method: DP request routing

  // Memory and scheduling.
  int64_t max_running_requests = 0;      // --max-running-requests: 0 = derived from the KV cache
  int64_t max_total_tokens = 0;          // --max-total-tokens: KV pool size in tokens; 0 = derived
  int64_t kv_cache_memory = 0;           // --kv-cache-memory: KV pool size in bytes; 0 = derived
  int64_t page_size = 1;                 // --page-size: tokens per KV page
  int64_t chunked_prefill_size = 4096;   // --chunked-prefill-size: -1 disables chunking
  int64_t max_prefill_tokens = 16384;    // --max-prefill-tokens: prompt-token budget of a step
  std::string schedule_policy = "fcfs";  // --schedule-policy: fcfs | lpm
  bool disable_radix_cache = false;      // --disable-radix-cache: no prefix reuse
  std::string attention_backend = "flash";  // --attention-backend: flash | native
  int num_threads = 0;                      // --num-threads: compute threads; 0 = all CPUs
  double watchdog_timeout = 300.0;          // --watchdog-timeout: seconds a step may hang; 0 = off
  std::optional<uint64_t> random_seed;  // --random-seed: seeds seedless requests; random if absent

  // Failures and lifecycle.
  double heartbeat_timeout = 5.0;  // --heartbeat-timeout: silent seconds before a rank is dead
  int max_restarts = 3;            // --max-restarts: restarts in a row of failed ranks; 0 = exit
  double shutdown_timeout = 30.0;  // --shutdown-timeout: seconds SIGTERM lets requests finish

  // Registers every flag on `app` with help text and defaults; parsing writes into this object,
  // which must outlive the parse.
  void add_to(CLI::App& app);

  // Throws dpserve::Error naming the first flag whose value is invalid or inconsistent.
  void validate() const;

  // Throws dpserve::Error when a valid flag asks for something not implemented yet.
  void check_implemented() const;

  // tokenizer_path, or model_path when it is empty.
  const std::string& effective_tokenizer_path() const;
  // served_model_name, or model_path when it is empty.
  const std::string& effective_served_model_name() const;

  // All settings as a JSON object with SGLang's key names (api_key masked; cluster_secret left
  // out).
  nlohmann::json to_json() const;
};

// The environment variable read when --cluster-secret is absent; node 0 also hands a generated
// secret to its local children through it (never through argv, which `ps` shows).
inline constexpr const char* kClusterSecretEnv = "DPSERVE_CLUSTER_SECRET";

// The accepted values of the choice flags.
inline constexpr const char* kSchedulePolicies[] = {"fcfs", "lpm"};
inline constexpr const char* kAttentionBackends[] = {"flash", "native"};
inline constexpr const char* kDTypes[] = {"auto", "float32", "bfloat16"};
inline constexpr const char* kLogLevels[] = {"debug", "info", "warning", "error", "critical"};
inline constexpr const char* kLoadBalanceMethods[] = {"round_robin", "shortest_queue",
                                                      "minimum_tokens"};

// True when --host names this machine only: "localhost", an address in 127.0.0.0/8, "::1" or
// an IPv4-mapped loopback address. "0.0.0.0", "::", other addresses and host names are not (a
// host name is not resolved; it may reach other machines).
bool is_loopback_host(const std::string& host);

}  // namespace dpserve
