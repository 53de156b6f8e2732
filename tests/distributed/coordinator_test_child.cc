// A child process for the coordinator tests, spawned through ChildProcess. Its role says what it
// does (every role connects to the coordinator at <address> first):
//   rank <address> <global> <node> [key=value ...]
//       register as a rank with that fingerprint; report {"ok": true} or {"error": message};
//       then heartbeat until a shutdown broadcast (exit 7) or a lost coordinator (exit 8)
//   echo <address> <in_key> <out_key> <timeout_ms>
//       report ready, get <in_key> (blocking), set <out_key> = value + "!"; exit 0, or set
//       <out_key> = "error: ..." and exit 3
//   barrier <address> <name> <n> <timeout_ms> <delay_ms>
//       report ready, sleep <delay_ms>, enter the barrier; exit 0, or 3 on error
//   gloo <address> <prefix> <rank> <size>
//       a Gloo context through CoordinatorStore(<prefix>), one allreduce of rank + 1; sets
//       "<prefix>/result/<rank>" to the sums; exit 0 when they are right, 4 when not
//   coordinator <heartbeat_interval_ms> <heartbeat_timeout_ms>
//       run a Coordinator on 127.0.0.1 (ephemeral port), report {"endpoint": ...}, wait

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gloo/allreduce.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/transport/tcp/device.h>
#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/distributed/coordinator.h"
#include "dpserve/distributed/coordinator_client.h"
#include "dpserve/distributed/coordinator_store.h"
#include "dpserve/ipc/process.h"

namespace {

using namespace dpserve;

std::atomic<int> g_exit_code{0};  // set by the client callbacks: 7 shutdown, 8 lost

// The cluster secret the test process hands down through the environment (none when unset).
ClusterSecret test_secret() {
  const char* s = std::getenv("DPSERVE_CLUSTER_SECRET");
  return s != nullptr && *s != '\0' ? ClusterSecret(s) : ClusterSecret();
}

CoordinatorClientOptions client_options(const std::string& address) {
  CoordinatorClientOptions o;
  o.address = address;
  o.dist_timeout = Millis(5000);
  o.secret = test_secret();
  o.on_shutdown = [](const std::string&) { g_exit_code = 7; };
  o.on_lost = [](const std::string&) { g_exit_code = 8; };
  return o;
}

void need(const std::vector<std::string>& args, size_t n, const char* usage) {
  if (args.size() < n) throw Error(std::string("usage: ") + usage);
}

int run_rank(ChildContext& child) {
  const auto& a = child.args();
  need(a, 3, "rank <address> <global> <node> [key=value ...]");
  CoordinatorClient client(client_options(a[0]));
  RankInfo info;
  info.global_rank = std::stoi(a[1]);
  info.node_rank = std::stoi(a[2]);
  info.host = "127.0.0.1";
  info.pid = getpid();
  info.endpoints["scheduler_input"] = fmt::format("tcp://127.0.0.1:{}", 7000 + info.global_rank);
  for (size_t i = 3; i < a.size(); ++i) {
    const size_t eq = a[i].find('=');
    info.fingerprint.emplace_back(a[i].substr(0, eq), a[i].substr(eq + 1));
  }
  try {
    client.register_rank(info);
  } catch (const Error& e) {
    child.signal_ready({{"error", e.what()}});
    return 0;
  }
  child.signal_ready({{"ok", true}, {"pid", getpid()}});
  while (g_exit_code == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return g_exit_code;
}

int run_echo(ChildContext& child) {
  const auto& a = child.args();
  need(a, 4, "echo <address> <in_key> <out_key> <timeout_ms>");
  CoordinatorClient client(client_options(a[0]));
  child.signal_ready();
  try {
    const std::string value = client.get(a[1], Millis(std::stol(a[3])));
    client.set(a[2], value + "!");
    return 0;
  } catch (const Error& e) {
    client.set(a[2], std::string("error: ") + e.what());
    return 3;
  }
}

int run_barrier(ChildContext& child) {
  const auto& a = child.args();
  need(a, 5, "barrier <address> <name> <n> <timeout_ms> <delay_ms>");
  CoordinatorClient client(client_options(a[0]));
  child.signal_ready();
  std::this_thread::sleep_for(Millis(std::stol(a[4])));
  try {
    client.barrier(a[1], std::stoi(a[2]), Millis(std::stol(a[3])));
    return 0;
  } catch (const Error& e) {
    spdlog::info("barrier child: {}", e.what());
    return 3;
  }
}

int run_gloo(ChildContext& child) {
  const auto& a = child.args();
  need(a, 4, "gloo <address> <prefix> <rank> <size>");
  CoordinatorClient client(client_options(a[0]));
  const int rank = std::stoi(a[2]), size = std::stoi(a[3]);
  child.signal_ready();
  CoordinatorStore store(client, a[1], Millis(10000));
  gloo::transport::tcp::attr attr;
  attr.hostname = "127.0.0.1";
  auto device = gloo::transport::tcp::CreateDevice(attr);
  auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
  context->setTimeout(std::chrono::seconds(10));
  context->connectFullMesh(store, device);
  std::vector<float> data(8, static_cast<float>(rank + 1));
  gloo::AllreduceOptions opts(context);
  opts.setOutput(data.data(), data.size());
  opts.setReduceFunction(
      static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
  gloo::allreduce(opts);
  client.set(fmt::format("{}/result/{}", a[1], rank), fmt::format("{}", fmt::join(data, ",")));
  const float want = size * (size + 1) / 2.0f;
  for (float v : data) {
    if (v != want) return 4;
  }
  return 0;
}

int run_coordinator(ChildContext& child) {
  const auto& a = child.args();
  need(a, 2, "coordinator <heartbeat_interval_ms> <heartbeat_timeout_ms>");
  CoordinatorOptions o;
  o.host = "127.0.0.1";
  o.heartbeat_interval = Millis(std::stol(a[0]));
  o.heartbeat_timeout = Millis(std::stol(a[1]));
  o.secret = test_secret();
  Coordinator coordinator(o);
  child.signal_ready({{"endpoint", coordinator.endpoint()}});
  for (;;) pause();
}

int run(ChildContext& child) {
  const std::string& role = child.role();
  if (role == "rank") return run_rank(child);
  if (role == "echo") return run_echo(child);
  if (role == "barrier") return run_barrier(child);
  if (role == "gloo") return run_gloo(child);
  if (role == "coordinator") return run_coordinator(child);
  throw Error("unknown role " + role);
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  std::optional<ChildContext> child;
  try {
    child = ChildContext::from_argv(argc, argv);
  } catch (const std::exception& e) {
    fprintf(stderr, "coordinator_test_child: %s\n", e.what());
    return 1;
  }
  if (!child) {
    fprintf(stderr, "coordinator_test_child: run by the coordinator tests only\n");
    return 1;
  }
  try {
    return run(*child);
  } catch (const std::exception& e) {
    spdlog::error("coordinator_test_child ({}): {}", child->role(), e.what());
    try {
      child->signal_error(e.what());
    } catch (...) {
    }
    return 1;
  }
}
