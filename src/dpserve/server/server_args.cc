#include "dpserve/server/server_args.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <iterator>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "dpserve/common/errors.h"

namespace dpserve {

namespace {

template <size_t N>
std::vector<std::string> to_vector(const char* const (&values)[N]) {
  return std::vector<std::string>(std::begin(values), std::end(values));
}

template <size_t N>
void check_choice(std::string_view flag, const std::string& value, const char* const (&values)[N]) {
  for (const char* v : values) {
    if (value == v) return;
  }
  std::string all;
  for (const char* v : values) {
    if (!all.empty()) all += ", ";
    all += v;
  }
  throw_error("{}: unknown value '{}' (expected one of: {})", flag, value, all);
}

void check_port(std::string_view flag, int port) {
  if (port < 1 || port > 65535) throw_error("{} must be in [1, 65535], got {}", flag, port);
}

}  // namespace

void ServerArgs::add_to(CLI::App& app) {
  // Model and tokenizer.
  app.add_option("--model-path", model_path, "Hugging Face model directory (required)");
  app.add_option("--tokenizer-path", tokenizer_path,
                 "Tokenizer directory (default: the model directory)");
  app.add_option("--context-length", context_length,
                 "Most tokens per sequence, prompt included (0 = the model's config.json)")
      ->capture_default_str();
  app.add_option("--dtype", dtype, "Weight type: auto (as stored), float32, bfloat16")
      ->capture_default_str()
      ->check(CLI::IsMember(to_vector(kDTypes)));
  app.add_option("--served-model-name", served_model_name,
                 "Model name reported by the API (default: the model path)");

  // HTTP server.
  app.add_option("--host", host, "Address the HTTP server listens on")->capture_default_str();
  app.add_option("--port", port, "HTTP port")->capture_default_str();
  app.add_option("--api-key", api_key,
                 "Require 'Authorization: Bearer <key>' on every request when set");
  app.add_option("--log-level", log_level, "debug, info, warning, error or critical")
      ->capture_default_str()
      ->check(CLI::IsMember(to_vector(kLogLevels)));
  app.add_flag("--log-requests", log_requests, "Log the inputs and outputs of every request");
  app.add_flag("--enable-metrics", enable_metrics, "Serve Prometheus metrics at /metrics");
  app.add_option("--http-timeout", http_timeout,
                 "Seconds a client has to send a whole request (headers and body), and the "
                 "longest one response write may wait for a client that does not read; the "
                 "connection is closed after that (a stalled stream's request is aborted). "
                 "Like llama.cpp's --timeout (600 there); idle kept-alive connections close "
                 "after 5 s as with SGLang's uvicorn")
      ->capture_default_str();

  // Parallelism and nodes.
  app.add_option("--tp-size", tp_size,
                 "Tensor-parallel ranks (with --enable-dp-attention: all ranks of all DP groups)")
      ->capture_default_str();
  app.add_option("--dp-size", dp_size, "Data-parallel groups")->capture_default_str();
  app.add_option("--ep-size,--expert-parallel-size", ep_size,
                 "Expert-parallel groups for MoE models (must divide --tp-size); 0 = --tp-size")
      ->capture_default_str();
  app.add_flag("--enable-dp-attention", enable_dp_attention,
               "Data-parallel attention: each DP group attends over its own requests, the MLP "
               "runs over all --tp-size ranks");
  app.add_option("--nnodes", nnodes, "Number of machines")->capture_default_str();
  app.add_option("--node-rank", node_rank, "This machine's index in [0, --nnodes)")
      ->capture_default_str();
  app.add_option("--node-0-address", node_0_address,
                 "Host name or IP of node 0 (required when --nnodes > 1)");
  app.add_option("--coordinator-port", coordinator_port, "TCP port of the coordinator on node 0")
      ->capture_default_str();
  app.add_option("--dist-timeout", dist_timeout,
                 "Seconds to keep trying to reach the coordinator and peers, and the longest a "
                 "collective may wait for a peer")
      ->capture_default_str();
  app.add_option("--cluster-secret", cluster_secret,
                 "Secret shared by every node: the coordinator and inter-node sockets accept only "
                 "peers that present it (required with --nnodes > 1; generated for one node). "
                 "Prefer the environment variable, which `ps` does not show")
      ->envname(kClusterSecretEnv);
  app.add_option("--load-balance-method", load_balance_method,
                 "How requests are routed to DP groups: round_robin, shortest_queue, "
                 "minimum_tokens")
      ->capture_default_str()
      ->check(CLI::IsMember(to_vector(kLoadBalanceMethods)));

  // Memory and scheduling.
  app.add_option("--max-running-requests", max_running_requests,
                 "Most requests decoding at once (0 = derived from the KV cache size)")
      ->capture_default_str();
  app.add_option("--max-total-tokens", max_total_tokens,
                 "KV cache size in tokens (0 = from --kv-cache-memory or free memory)")
      ->capture_default_str();
  app.add_option("--kv-cache-memory", kv_cache_memory,
                 "KV cache size in bytes (0 = from --max-total-tokens or free memory)")
      ->capture_default_str();
  app.add_option("--page-size", page_size, "Tokens per KV cache page")->capture_default_str();
  app.add_option("--chunked-prefill-size", chunked_prefill_size,
                 "Most prompt tokens per prefill step (-1 disables chunking)")
      ->capture_default_str();
  app.add_option("--max-prefill-tokens", max_prefill_tokens,
                 "Prompt-token budget of one prefill step")
      ->capture_default_str();
  app.add_option("--schedule-policy", schedule_policy,
                 "Order of waiting requests: fcfs, or lpm (longest prefix match first)")
      ->capture_default_str()
      ->check(CLI::IsMember(to_vector(kSchedulePolicies)));
  app.add_flag("--disable-radix-cache", disable_radix_cache, "Do not reuse cached prefixes");
  app.add_option("--attention-backend", attention_backend, "flash or native")
      ->capture_default_str()
      ->check(CLI::IsMember(to_vector(kAttentionBackends)));
  app.add_option("--num-threads", num_threads, "Compute threads (0 = all CPUs)")
      ->capture_default_str();
  app.add_option("--watchdog-timeout", watchdog_timeout,
                 "Seconds a scheduler step may run before the server is declared hung (0 = off)")
      ->capture_default_str();
  app.add_option_function<uint64_t>(
      "--random-seed", [this](const uint64_t& seed) { random_seed = seed; },
      "Seed for requests without their own seed (default: random)");

  // Failures and lifecycle.
  app.add_option("--heartbeat-timeout", heartbeat_timeout,
                 "Seconds without a heartbeat after which a scheduler rank is declared dead "
                 "(hung or stopped), killed and replaced; ranks heartbeat 5 times per timeout")
      ->capture_default_str();
  app.add_option("--max-restarts", max_restarts,
                 "How many times in a row the ranks of a failed group (a DP replica, or all "
                 "ranks under TP / DP attention) are restarted, after 1, 2, 4 ... s, before the "
                 "server gives up and exits 1; the count resets after 60 s of service. 0 = a "
                 "failed rank stops the server")
      ->capture_default_str();
  app.add_option("--shutdown-timeout", shutdown_timeout,
                 "On SIGTERM / SIGINT, seconds in-flight requests may take to finish (new ones get "
                 "503) before the rest are aborted; a second signal stops at once")
      ->capture_default_str();
}

void ServerArgs::validate() const {
  if (model_path.empty()) throw_error("--model-path is required");
  if (context_length < 0) throw_error("--context-length must be >= 0, got {}", context_length);
  check_choice("--dtype", dtype, kDTypes);
  if (!served_model_name.empty() &&
      served_model_name.find_first_not_of(" \t") == std::string::npos) {
    throw_error("--served-model-name must not be blank");
  }

  if (host.empty()) throw_error("--host must not be empty");
  check_port("--port", port);
  check_choice("--log-level", log_level, kLogLevels);

  if (tp_size < 1) throw_error("--tp-size must be >= 1, got {}", tp_size);
  if (dp_size < 1) throw_error("--dp-size must be >= 1, got {}", dp_size);
  if (ep_size < 0) throw_error("--ep-size must be >= 0 (0 = --tp-size), got {}", ep_size);
  if (ep_size > 0 && tp_size % ep_size != 0) {
    throw_error("--ep-size ({}) must divide --tp-size ({})", ep_size, tp_size);
  }
  if (nnodes < 1) throw_error("--nnodes must be >= 1, got {}", nnodes);
  if (node_rank < 0 || node_rank >= nnodes) {
    throw_error("--node-rank must be in [0, --nnodes) = [0, {}), got {}", nnodes, node_rank);
  }
  if (enable_dp_attention && tp_size % dp_size != 0) {
    throw_error(
        "--enable-dp-attention needs --tp-size divisible by --dp-size (each DP group gets "
        "tp_size / dp_size attention ranks), got --tp-size {} --dp-size {}",
        tp_size, dp_size);
  }
  if (dp_size > 1 && !enable_dp_attention) {
    // Plain DP: dp_size replicas of tp_size ranks, spread evenly over the nodes.
    if ((tp_size * dp_size) % nnodes != 0) {
      throw_error(
          "--tp-size {} x --dp-size {} replica ranks must be divisible by --nnodes ({}): every "
          "node runs the same number of ranks",
          tp_size, dp_size, nnodes);
    }
  } else if (tp_size % nnodes != 0) {
    throw_error(
        "--tp-size ({}) must be divisible by --nnodes ({}): every node runs the same "
        "number of ranks",
        tp_size, nnodes);
  }
  if (nnodes > 1) {
    if (node_0_address.empty()) {
      throw_error("--node-0-address is required when --nnodes > 1 (got --nnodes {})", nnodes);
    }
    const size_t colon = node_0_address.rfind(':');
    if (colon != std::string::npos && node_0_address.find(':') == colon &&
        colon + 1 < node_0_address.size() &&
        node_0_address.find_first_not_of("0123456789", colon + 1) == std::string::npos) {
      throw_error(
          "--node-0-address takes a host without a port, got '{}'; give the port with "
          "--coordinator-port",
          node_0_address);
    }
  }
  check_port("--coordinator-port", coordinator_port);
  if (nnodes > 1 && coordinator_port == port) {
    throw_error("--coordinator-port and --port must differ on node 0, both are {}", port);
  }
  check_choice("--load-balance-method", load_balance_method, kLoadBalanceMethods);

  if (max_running_requests < 0) {
    throw_error("--max-running-requests must be >= 0, got {}", max_running_requests);
  }
  if (max_total_tokens < 0) {
    throw_error("--max-total-tokens must be >= 0, got {}", max_total_tokens);
  }
  if (kv_cache_memory < 0) throw_error("--kv-cache-memory must be >= 0, got {}", kv_cache_memory);
  if (max_total_tokens > 0 && kv_cache_memory > 0) {
    throw_error("--max-total-tokens and --kv-cache-memory both size the KV cache; give one");
  }
  if (page_size < 1) throw_error("--page-size must be >= 1, got {}", page_size);
  if (chunked_prefill_size == 0 || chunked_prefill_size < -1) {
    throw_error("--chunked-prefill-size must be positive, or -1 to disable chunking, got {}",
                chunked_prefill_size);
  }
  if (chunked_prefill_size > 0 && chunked_prefill_size % page_size != 0) {
    throw_error("--chunked-prefill-size ({}) must be a multiple of --page-size ({})",
                chunked_prefill_size, page_size);
  }
  if (max_prefill_tokens < 1) {
    throw_error("--max-prefill-tokens must be >= 1, got {}", max_prefill_tokens);
  }
  check_choice("--schedule-policy", schedule_policy, kSchedulePolicies);
  check_choice("--attention-backend", attention_backend, kAttentionBackends);
  if (num_threads < 0) throw_error("--num-threads must be >= 0, got {}", num_threads);
  if (!(http_timeout > 0)) throw_error("--http-timeout must be > 0 seconds, got {}", http_timeout);
  if (!(watchdog_timeout >= 0)) {
    throw_error("--watchdog-timeout must be >= 0 seconds, got {}", watchdog_timeout);
  }
  if (!(dist_timeout > 0)) throw_error("--dist-timeout must be > 0 seconds, got {}", dist_timeout);
  if (!(heartbeat_timeout >= 0.5)) {
    throw_error("--heartbeat-timeout must be >= 0.5 seconds, got {}", heartbeat_timeout);
  }
  if (max_restarts < 0) throw_error("--max-restarts must be >= 0, got {}", max_restarts);
  if (!(shutdown_timeout >= 0)) {
    throw_error("--shutdown-timeout must be >= 0 seconds, got {}", shutdown_timeout);
  }
  if (nnodes > 1 && cluster_secret.empty()) {
    throw_error(
        "--cluster-secret is required when --nnodes > 1 (got --nnodes {}): give every node the "
        "same secret, e.g. from `od -An -tx1 -N32 /dev/urandom | tr -d ' \\n'`, through the flag "
        "or ${}",
        nnodes, kClusterSecretEnv);
  }
}

void ServerArgs::check_implemented() const {
  constexpr std::string_view kLater = "is not implemented yet";
  if (dtype != "auto") {
    throw_error("--dtype {}: converting weights {}; --dtype auto keeps the checkpoint's type",
                dtype, kLater);
  }
}

const std::string& ServerArgs::effective_tokenizer_path() const {
  return tokenizer_path.empty() ? model_path : tokenizer_path;
}

const std::string& ServerArgs::effective_served_model_name() const {
  return served_model_name.empty() ? model_path : served_model_name;
}

nlohmann::json ServerArgs::to_json() const {
  nlohmann::json j;
  j["model_path"] = model_path;
  j["tokenizer_path"] = effective_tokenizer_path();
  j["context_length"] = context_length;
  j["dtype"] = dtype;
  j["served_model_name"] = effective_served_model_name();
  j["host"] = host;
  j["port"] = port;
  j["api_key"] = api_key.empty() ? nlohmann::json(nullptr) : nlohmann::json("***");
  j["log_level"] = log_level;
  j["log_requests"] = log_requests;
  j["enable_metrics"] = enable_metrics;
  j["http_timeout"] = http_timeout;
  j["tp_size"] = tp_size;
  j["dp_size"] = dp_size;
  j["ep_size"] = ep_size;
  j["enable_dp_attention"] = enable_dp_attention;
  j["nnodes"] = nnodes;
  j["dist_timeout"] = dist_timeout;
  j["node_rank"] = node_rank;
  j["node_0_address"] =
      node_0_address.empty() ? nlohmann::json(nullptr) : nlohmann::json(node_0_address);
  j["coordinator_port"] = coordinator_port;
  j["load_balance_method"] = load_balance_method;
  j["max_running_requests"] = max_running_requests;
  j["max_total_tokens"] = max_total_tokens;
  j["kv_cache_memory"] = kv_cache_memory;
  j["page_size"] = page_size;
  j["chunked_prefill_size"] = chunked_prefill_size;
  j["max_prefill_tokens"] = max_prefill_tokens;
  j["schedule_policy"] = schedule_policy;
  j["disable_radix_cache"] = disable_radix_cache;
  j["attention_backend"] = attention_backend;
  j["num_threads"] = num_threads;
  j["watchdog_timeout"] = watchdog_timeout;
  j["random_seed"] = random_seed ? nlohmann::json(*random_seed) : nlohmann::json(nullptr);
  j["heartbeat_timeout"] = heartbeat_timeout;
  j["max_restarts"] = max_restarts;
  j["shutdown_timeout"] = shutdown_timeout;
  return j;
}

bool is_loopback_host(const std::string& host) {
  std::string h = host;
  std::transform(h.begin(), h.end(), h.begin(), [](unsigned char c) { return std::tolower(c); });
  if (h == "localhost" || h == "localhost.") return true;
  in_addr v4{};
  // inet_aton also takes the short forms getaddrinfo binds ("127.1").
  if (::inet_aton(h.c_str(), &v4) != 0) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, h.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

}  // namespace dpserve
