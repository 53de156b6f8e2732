// ServerArgs: parsing real argv through CLI11, SGLang's defaults, every validation message, the
// not-implemented errors and the JSON view.

#include <cstdlib>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <CLI/CLI.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/server/server_args.h"

namespace dpserve {
namespace {

using ::testing::HasSubstr;

// Parses argv (without the program name) into a fresh ServerArgs.
ServerArgs parse(std::vector<std::string> args) {
  ServerArgs sa;
  CLI::App app{"test"};
  sa.add_to(app);
  std::vector<const char*> argv = {"dpserve"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  app.parse(static_cast<int>(argv.size()), argv.data());
  return sa;
}

// The message of the dpserve::Error that validate() throws ("" when it passes).
std::string validate_error(const ServerArgs& sa) {
  try {
    sa.validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string implemented_error(const ServerArgs& sa) {
  try {
    sa.check_implemented();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

ServerArgs valid() {
  ServerArgs sa;
  sa.model_path = "/models/m";
  return sa;
}

TEST(ServerArgs, DefaultsFollowSGLang) {
  ServerArgs sa = parse({"--model-path", "/m"});
  EXPECT_EQ(sa.model_path, "/m");
  EXPECT_EQ(sa.host, "127.0.0.1");
  EXPECT_EQ(sa.port, 30000);
  EXPECT_EQ(sa.tp_size, 1);
  EXPECT_EQ(sa.dp_size, 1);
  EXPECT_FALSE(sa.enable_dp_attention);
  EXPECT_EQ(sa.nnodes, 1);
  EXPECT_EQ(sa.node_rank, 0);
  EXPECT_EQ(sa.load_balance_method, "round_robin");
  EXPECT_EQ(sa.page_size, 1);
  EXPECT_EQ(sa.chunked_prefill_size, 4096);
  EXPECT_EQ(sa.max_prefill_tokens, 16384);
  EXPECT_EQ(sa.schedule_policy, "fcfs");
  EXPECT_FALSE(sa.disable_radix_cache);
  EXPECT_EQ(sa.attention_backend, "flash");
  EXPECT_EQ(sa.dtype, "auto");
  EXPECT_EQ(sa.log_level, "info");
  EXPECT_DOUBLE_EQ(sa.watchdog_timeout, 300.0);
  EXPECT_DOUBLE_EQ(sa.heartbeat_timeout, 5.0);
  EXPECT_EQ(sa.max_restarts, 3);
  EXPECT_DOUBLE_EQ(sa.shutdown_timeout, 30.0);
  EXPECT_FALSE(sa.random_seed.has_value());
  EXPECT_EQ(sa.effective_tokenizer_path(), "/m");
  EXPECT_EQ(sa.effective_served_model_name(), "/m");
  EXPECT_NO_THROW(sa.validate());
  EXPECT_NO_THROW(sa.check_implemented());
}

TEST(ServerArgs, ParsesEveryFlag) {
  ServerArgs sa = parse({"--model-path=/m",
                         "--cluster-secret",
                         "s",
                         "--tokenizer-path",
                         "/t",
                         "--host",
                         "0.0.0.0",
                         "--port",
                         "8080",
                         "--tp-size",
                         "4",
                         "--dp-size",
                         "2",
                         "--enable-dp-attention",
                         "--nnodes",
                         "2",
                         "--node-rank",
                         "1",
                         "--node-0-address",
                         "10.0.0.1",
                         "--coordinator-port",
                         "5000",
                         "--load-balance-method",
                         "shortest_queue",
                         "--max-running-requests",
                         "64",
                         "--max-total-tokens",
                         "100000",
                         "--page-size",
                         "16",
                         "--chunked-prefill-size",
                         "-1",
                         "--max-prefill-tokens",
                         "8192",
                         "--schedule-policy",
                         "lpm",
                         "--disable-radix-cache",
                         "--attention-backend",
                         "native",
                         "--dtype",
                         "bfloat16",
                         "--num-threads",
                         "2",
                         "--context-length",
                         "512",
                         "--served-model-name",
                         "tiny",
                         "--api-key",
                         "sk-1",
                         "--log-level",
                         "debug",
                         "--log-requests",
                         "--watchdog-timeout",
                         "12.5",
                         "--enable-metrics",
                         "--random-seed",
                         "42"});
  EXPECT_EQ(sa.tokenizer_path, "/t");
  EXPECT_EQ(sa.host, "0.0.0.0");
  EXPECT_EQ(sa.port, 8080);
  EXPECT_EQ(sa.tp_size, 4);
  EXPECT_EQ(sa.dp_size, 2);
  EXPECT_TRUE(sa.enable_dp_attention);
  EXPECT_EQ(sa.nnodes, 2);
  EXPECT_EQ(sa.node_rank, 1);
  EXPECT_EQ(sa.node_0_address, "10.0.0.1");
  EXPECT_EQ(sa.coordinator_port, 5000);
  EXPECT_EQ(sa.cluster_secret, "s");
  EXPECT_EQ(sa.load_balance_method, "shortest_queue");
  EXPECT_EQ(sa.max_running_requests, 64);
  EXPECT_EQ(sa.max_total_tokens, 100000);
  EXPECT_EQ(sa.page_size, 16);
  EXPECT_EQ(sa.chunked_prefill_size, -1);
  EXPECT_EQ(sa.max_prefill_tokens, 8192);
  EXPECT_EQ(sa.schedule_policy, "lpm");
  EXPECT_TRUE(sa.disable_radix_cache);
  EXPECT_EQ(sa.attention_backend, "native");
  EXPECT_EQ(sa.dtype, "bfloat16");
  EXPECT_EQ(sa.num_threads, 2);
  EXPECT_EQ(sa.context_length, 512);
  EXPECT_EQ(sa.effective_served_model_name(), "tiny");
  EXPECT_EQ(sa.api_key, "sk-1");
  EXPECT_EQ(sa.log_level, "debug");
  EXPECT_TRUE(sa.log_requests);
  EXPECT_DOUBLE_EQ(sa.watchdog_timeout, 12.5);
  EXPECT_TRUE(sa.enable_metrics);
  ASSERT_TRUE(sa.random_seed.has_value());
  EXPECT_EQ(*sa.random_seed, 42u);
  EXPECT_NO_THROW(sa.validate());  // valid, even though not implemented yet
}

TEST(ServerArgs, CliRejectsUnknownChoicesAndTypes) {
  EXPECT_THROW(parse({"--schedule-policy", "lifo"}), CLI::ValidationError);
  EXPECT_THROW(parse({"--attention-backend", "cuda"}), CLI::ValidationError);
  EXPECT_THROW(parse({"--dtype", "float8"}), CLI::ValidationError);
  EXPECT_THROW(parse({"--load-balance-method", "random"}), CLI::ValidationError);
  EXPECT_THROW(parse({"--port", "abc"}), CLI::ParseError);
  EXPECT_THROW(parse({"--no-such-flag"}), CLI::ParseError);
}

TEST(ServerArgs, HelpListsFlagsWithDefaults) {
  ServerArgs sa;
  CLI::App app{"test"};
  sa.add_to(app);
  const std::string help = app.help();
  for (const char* flag : {"--model-path",
                           "--tokenizer-path",
                           "--host",
                           "--port",
                           "--tp-size",
                           "--dp-size",
                           "--enable-dp-attention",
                           "--nnodes",
                           "--node-rank",
                           "--node-0-address",
                           "--coordinator-port",
                           "--load-balance-method",
                           "--max-running-requests",
                           "--max-total-tokens",
                           "--kv-cache-memory",
                           "--page-size",
                           "--chunked-prefill-size",
                           "--max-prefill-tokens",
                           "--schedule-policy",
                           "--disable-radix-cache",
                           "--attention-backend",
                           "--dtype",
                           "--num-threads",
                           "--context-length",
                           "--served-model-name",
                           "--api-key",
                           "--log-level",
                           "--log-requests",
                           "--watchdog-timeout",
                           "--enable-metrics",
                           "--random-seed"}) {
    EXPECT_THAT(help, HasSubstr(flag));
  }
  EXPECT_THAT(help, HasSubstr("30000"));
  EXPECT_THAT(help, HasSubstr("127.0.0.1"));
}

struct BadCase {
  const char* name;             // what is wrong
  void (*mutate)(ServerArgs&);  // makes a valid ServerArgs invalid
  const char* message;          // a part of the expected message
};

TEST(ServerArgs, ValidationMessagesNameTheFlag) {
  const BadCase cases[] = {
      {"no model", [](ServerArgs& a) { a.model_path.clear(); }, "--model-path is required"},
      {"port 0", [](ServerArgs& a) { a.port = 0; }, "--port must be in [1, 65535], got 0"},
      {"port 70000", [](ServerArgs& a) { a.port = 70000; }, "--port must be in [1, 65535]"},
      {"empty host", [](ServerArgs& a) { a.host.clear(); }, "--host must not be empty"},
      {"tp 0", [](ServerArgs& a) { a.tp_size = 0; }, "--tp-size must be >= 1, got 0"},
      {"dp 0", [](ServerArgs& a) { a.dp_size = 0; }, "--dp-size must be >= 1, got 0"},
      {"nnodes 0", [](ServerArgs& a) { a.nnodes = 0; }, "--nnodes must be >= 1"},
      {"ep -1", [](ServerArgs& a) { a.ep_size = -1; }, "--ep-size must be >= 0"},
      {"ep 3 of tp 4",
       [](ServerArgs& a) {
         a.tp_size = 4;
         a.ep_size = 3;
       },
       "--ep-size (3) must divide --tp-size (4)"},
      {"node rank",
       [](ServerArgs& a) {
         a.nnodes = 2;
         a.tp_size = 2;
         a.node_0_address = "h";
         a.node_rank = 2;
       },
       "--node-rank must be in [0, --nnodes) = [0, 2), got 2"},
      {"negative node rank", [](ServerArgs& a) { a.node_rank = -1; }, "--node-rank must be in"},
      {"dp attention divisibility",
       [](ServerArgs& a) {
         a.enable_dp_attention = true;
         a.tp_size = 4;
         a.dp_size = 3;
       },
       "--enable-dp-attention needs --tp-size divisible by --dp-size"},
      {"tp over nodes",
       [](ServerArgs& a) {
         a.tp_size = 3;
         a.nnodes = 2;
         a.node_0_address = "h";
       },
       "--tp-size (3) must be divisible by --nnodes (2)"},
      {"plain dp replicas over nodes",
       [](ServerArgs& a) {
         a.tp_size = 1;
         a.dp_size = 3;
         a.nnodes = 2;
         a.node_0_address = "h";
       },
       "--tp-size 1 x --dp-size 3 replica ranks must be divisible by --nnodes (2)"},
      {"missing node 0 address",
       [](ServerArgs& a) {
         a.nnodes = 2;
         a.tp_size = 2;
       },
       "--node-0-address is required when --nnodes > 1"},
      {"address with port",
       [](ServerArgs& a) {
         a.nnodes = 2;
         a.tp_size = 2;
         a.node_0_address = "10.0.0.1:5000";
       },
       "--node-0-address takes a host without a port"},
      {"coordinator port", [](ServerArgs& a) { a.coordinator_port = 0; },
       "--coordinator-port must be in [1, 65535]"},
      {"coordinator port clash",
       [](ServerArgs& a) {
         a.nnodes = 2;
         a.tp_size = 2;
         a.node_0_address = "h";
         a.coordinator_port = a.port;
       },
       "--coordinator-port and --port must differ"},
      {"load balance", [](ServerArgs& a) { a.load_balance_method = "random"; },
       "--load-balance-method: unknown value 'random'"},
      {"running requests", [](ServerArgs& a) { a.max_running_requests = -1; },
       "--max-running-requests must be >= 0"},
      {"total tokens", [](ServerArgs& a) { a.max_total_tokens = -5; },
       "--max-total-tokens must be >= 0"},
      {"kv memory", [](ServerArgs& a) { a.kv_cache_memory = -5; },
       "--kv-cache-memory must be >= 0"},
      {"both kv sizes",
       [](ServerArgs& a) {
         a.max_total_tokens = 100;
         a.kv_cache_memory = 1 << 20;
       },
       "--max-total-tokens and --kv-cache-memory both size the KV cache"},
      {"page size", [](ServerArgs& a) { a.page_size = 0; }, "--page-size must be >= 1, got 0"},
      {"chunk 0", [](ServerArgs& a) { a.chunked_prefill_size = 0; },
       "--chunked-prefill-size must be positive, or -1 to disable chunking, got 0"},
      {"chunk -2", [](ServerArgs& a) { a.chunked_prefill_size = -2; },
       "--chunked-prefill-size must be positive"},
      {"chunk vs page",
       [](ServerArgs& a) {
         a.page_size = 16;
         a.chunked_prefill_size = 1000;
       },
       "--chunked-prefill-size (1000) must be a multiple of --page-size (16)"},
      {"prefill tokens", [](ServerArgs& a) { a.max_prefill_tokens = 0; },
       "--max-prefill-tokens must be >= 1"},
      {"policy", [](ServerArgs& a) { a.schedule_policy = "lifo"; },
       "--schedule-policy: unknown value 'lifo' (expected one of: fcfs, lpm)"},
      {"backend", [](ServerArgs& a) { a.attention_backend = "cuda"; },
       "--attention-backend: unknown value 'cuda'"},
      {"dtype", [](ServerArgs& a) { a.dtype = "float8"; }, "--dtype: unknown value 'float8'"},
      {"log level", [](ServerArgs& a) { a.log_level = "loud"; }, "--log-level: unknown value"},
      {"threads", [](ServerArgs& a) { a.num_threads = -1; }, "--num-threads must be >= 0"},
      {"context", [](ServerArgs& a) { a.context_length = -1; }, "--context-length must be >= 0"},
      {"watchdog", [](ServerArgs& a) { a.watchdog_timeout = -1; },
       "--watchdog-timeout must be >= 0 seconds"},
      {"blank name", [](ServerArgs& a) { a.served_model_name = "  "; },
       "--served-model-name must not be blank"},
      {"heartbeat", [](ServerArgs& a) { a.heartbeat_timeout = 0.1; },
       "--heartbeat-timeout must be >= 0.5 seconds, got 0.1"},
      {"restarts", [](ServerArgs& a) { a.max_restarts = -1; }, "--max-restarts must be >= 0"},
      {"shutdown", [](ServerArgs& a) { a.shutdown_timeout = -2; },
       "--shutdown-timeout must be >= 0 seconds"},
  };
  for (const BadCase& c : cases) {
    ServerArgs sa = valid();
    c.mutate(sa);
    EXPECT_THAT(validate_error(sa), HasSubstr(c.message)) << c.name;
  }
}

TEST(ServerArgs, ValidMultiNodeDpAttentionLayout) {
  ServerArgs sa = parse({"--model-path", "/m", "--tp-size", "8", "--dp-size", "4",
                         "--enable-dp-attention", "--nnodes", "2", "--node-rank", "1",
                         "--node-0-address", "node0.example", "--cluster-secret", "s"});
  EXPECT_EQ(validate_error(sa), "");
  // IPv6 literals have colons and are hosts, not host:port.
  sa.node_0_address = "fe80::1";
  EXPECT_EQ(validate_error(sa), "");
}

TEST(ServerArgs, LaterFeaturesAreStartupErrors) {
  struct Case {
    void (*mutate)(ServerArgs&);
    const char* message;
  };
  const Case cases[] = {
      {[](ServerArgs& a) { a.dtype = "float32"; },
       "--dtype float32: converting weights is not implemented yet"},
      {[](ServerArgs& a) { a.dtype = "bfloat16"; }, "--dtype bfloat16"},
  };
  for (const Case& c : cases) {
    ServerArgs sa = valid();
    c.mutate(sa);
    EXPECT_THAT(implemented_error(sa), HasSubstr(c.message));
  }
  EXPECT_EQ(implemented_error(valid()), "");
}

TEST(ServerArgs, DpAttentionIsImplemented) {
  ServerArgs sa =
      parse({"--model-path", "/m", "--tp-size", "4", "--dp-size", "2", "--enable-dp-attention"});
  EXPECT_EQ(validate_error(sa), "");
  EXPECT_EQ(implemented_error(sa), "");
  // Across nodes too (the leaders' sockets are tcp then).
  ServerArgs nodes =
      parse({"--model-path", "/m", "--tp-size", "4", "--dp-size", "2", "--enable-dp-attention",
             "--nnodes", "2", "--node-0-address", "h", "--cluster-secret", "s"});
  EXPECT_EQ(validate_error(nodes), "");
  EXPECT_EQ(implemented_error(nodes), "");
  // Plain DP replicas over nodes: the replica ranks divide evenly, not each replica's ranks.
  ServerArgs replicas = parse({"--model-path", "/m", "--dp-size", "2", "--nnodes", "2",
                               "--node-0-address", "h", "--cluster-secret", "s"});
  EXPECT_EQ(validate_error(replicas), "");
  EXPECT_EQ(implemented_error(replicas), "");
}

TEST(ServerArgs, TensorParallelAndMultiNodeAreImplemented) {
  ServerArgs sa =
      parse({"--model-path", "/m", "--tp-size", "4", "--nnodes", "2", "--node-rank", "1",
             "--node-0-address", "10.0.0.1", "--dist-timeout", "7.5", "--cluster-secret", "s"});
  EXPECT_EQ(validate_error(sa), "");
  EXPECT_EQ(implemented_error(sa), "");
  EXPECT_EQ(sa.dist_timeout, 7.5);
  EXPECT_EQ(sa.to_json()["dist_timeout"].get<double>(), 7.5);
  sa.dist_timeout = 0;
  EXPECT_THAT(validate_error(sa), HasSubstr("--dist-timeout must be > 0 seconds, got 0"));
}

TEST(ServerArgs, EnableMetricsParsesAndStartsUp) {
  // /metrics is served now (tests/http checks its content): the flag is no startup error.
  ServerArgs sa = parse({"--model-path", "/m", "--enable-metrics"});
  EXPECT_TRUE(sa.enable_metrics);
  EXPECT_TRUE(sa.to_json()["enable_metrics"].get<bool>());
  EXPECT_NO_THROW(sa.validate());
  EXPECT_EQ(implemented_error(sa), "");
  EXPECT_FALSE(parse({"--model-path", "/m"}).enable_metrics);
}

TEST(ServerArgs, ToJsonHasEveryFieldAndMasksTheKey) {
  ServerArgs sa = parse({"--model-path", "/m", "--api-key", "secret", "--random-seed", "7"});
  const nlohmann::json j = sa.to_json();
  EXPECT_EQ(j["model_path"], "/m");
  EXPECT_EQ(j["tokenizer_path"], "/m");
  EXPECT_EQ(j["served_model_name"], "/m");
  EXPECT_EQ(j["port"], 30000);
  EXPECT_EQ(j["api_key"], "***");
  EXPECT_EQ(j["random_seed"], 7);
  EXPECT_TRUE(j["node_0_address"].is_null());
  EXPECT_EQ(j["chunked_prefill_size"], 4096);
  EXPECT_EQ(j.dump().find("secret"), std::string::npos);
  for (const char* key : {"host",
                          "tp_size",
                          "dp_size",
                          "enable_dp_attention",
                          "nnodes",
                          "node_rank",
                          "coordinator_port",
                          "load_balance_method",
                          "max_running_requests",
                          "max_total_tokens",
                          "kv_cache_memory",
                          "page_size",
                          "max_prefill_tokens",
                          "schedule_policy",
                          "disable_radix_cache",
                          "attention_backend",
                          "dtype",
                          "num_threads",
                          "context_length",
                          "log_level",
                          "log_requests",
                          "watchdog_timeout",
                          "heartbeat_timeout",
                          "max_restarts",
                          "shutdown_timeout",
                          "enable_metrics"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_TRUE(ServerArgs{}.to_json()["random_seed"].is_null());
  EXPECT_TRUE(ServerArgs{}.to_json()["api_key"].is_null());
}

// --cluster-secret: required with several nodes (after the other checks), read from
// $DPSERVE_CLUSTER_SECRET when the flag is absent (the flag wins), never in to_json.
TEST(ServerArgs, ClusterSecretFlagEnvironmentAndMask) {
  ServerArgs nodes =
      parse({"--model-path", "/m", "--tp-size", "2", "--nnodes", "2", "--node-0-address", "h"});
  EXPECT_EQ(validate_error(nodes),
            "--cluster-secret is required when --nnodes > 1 (got --nnodes 2): give every node the "
            "same secret, e.g. from `od -An -tx1 -N32 /dev/urandom | tr -d ' \\n'`, through the "
            "flag or $DPSERVE_CLUSTER_SECRET");
  EXPECT_EQ(validate_error(parse({"--model-path", "/m"})), "");  // one node generates its own

  ::setenv(kClusterSecretEnv, "from-env", 1);
  const ServerArgs env =
      parse({"--model-path", "/m", "--tp-size", "2", "--nnodes", "2", "--node-0-address", "h"});
  const ServerArgs flag = parse({"--model-path", "/m", "--cluster-secret", "from-flag"});
  ::unsetenv(kClusterSecretEnv);
  EXPECT_EQ(env.cluster_secret, "from-env");
  EXPECT_EQ(validate_error(env), "");
  EXPECT_EQ(flag.cluster_secret, "from-flag");
  EXPECT_EQ(flag.to_json().dump().find("from-flag"), std::string::npos);
  EXPECT_FALSE(flag.to_json().contains("cluster_secret"));
}

TEST(ServerArgs, HttpTimeoutParsesAndValidates) {
  EXPECT_EQ(parse({"--model-path", "/m"}).http_timeout, 60.0);
  const ServerArgs sa = parse({"--model-path", "/m", "--http-timeout", "2.5"});
  EXPECT_EQ(sa.http_timeout, 2.5);
  EXPECT_EQ(sa.to_json()["http_timeout"], 2.5);
  EXPECT_EQ(validate_error(sa), "");
  for (const std::string bad : {"0", "-1"}) {
    EXPECT_EQ(validate_error(parse({"--model-path", "/m", "--http-timeout", bad})),
              "--http-timeout must be > 0 seconds, got " + bad);
  }
}

TEST(ServerArgs, LoopbackHostsAreTheOnesThatReachOnlyThisMachine) {
  for (const char* host :
       {"127.0.0.1", "127.0.0.53", "127.255.255.254", "127.1", "localhost", "LocalHost",
        "localhost.", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"}) {
    EXPECT_TRUE(is_loopback_host(host)) << host;
  }
  for (const char* host : {"0.0.0.0", "::", "", "0", "10.0.0.5", "192.168.1.2", "128.0.0.1",
                           "126.255.255.255", "::ffff:10.0.0.1", "fe80::1", "example.com", "myhost",
                           "localhost.example.com", "127.0.0.1.example.com"}) {
    EXPECT_FALSE(is_loopback_host(host)) << host;
  }
}

}  // namespace
}  // namespace dpserve
