#pragma once
// Helpers for the multi-process server tests: greedy /generate calls, a server's child processes,
// and waiting for processes to be gone.

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "../http/server_process.h"

namespace dpserve_test {

// Greedy ids of /generate for `text` (`extra` merged into the body); {} and a test failure when
// the request fails.
inline std::vector<int> greedy_ids(ServerProcess& s, const std::string& text, int n,
                                   const nlohmann::json& extra = nlohmann::json::object()) {
  httplib::Client c = s.client();
  c.set_read_timeout(std::chrono::seconds(120));
  nlohmann::json body = {{"text", text},
                         {"sampling_params", {{"max_new_tokens", n}, {"temperature", 0}}}};
  body.update(extra, /*merge_objects=*/true);
  auto r = c.Post("/generate", body.dump(), "application/json");
  if (!r || r->status != 200) {
    ADD_FAILURE() << "generate failed: " << (r ? r->body : "no answer") << "\n" << s.log();
    return {};
  }
  return nlohmann::json::parse(r->body)["output_ids"].get<std::vector<int>>();
}

// Two `dpserve serve` nodes on loopback (`--nnodes 2`, node 0's coordinator on 127.0.0.1 at a
// free port) with `flags` added to both: node 1 starts first (it waits for node 0's coordinator).
class LoopbackNodes {
 public:
  explicit LoopbackNodes(const std::vector<std::string>& flags)
      : common_(common_flags(flags)), node1(node_flags("1")), node0(node_flags("0")) {}

  // Both nodes answer /health with 200 (node 0 within `timeout`, then node 1 within 10 s).
  ::testing::AssertionResult wait_healthy(std::chrono::seconds timeout) {
    if (!node0.wait_healthy(timeout)) {
      return ::testing::AssertionFailure() << node0.log() << node1.log();
    }
    if (!node1.wait_healthy(std::chrono::seconds(10))) {
      return ::testing::AssertionFailure() << node1.log();
    }
    return ::testing::AssertionSuccess();
  }

 private:
  static std::vector<std::string> common_flags(const std::vector<std::string>& flags) {
    std::vector<std::string> a = {"--nnodes",           "2",
                                  "--node-0-address",   "127.0.0.1",
                                  "--coordinator-port", std::to_string(free_port())};
    a.insert(a.end(), flags.begin(), flags.end());
    return a;
  }
  std::vector<std::string> node_flags(const std::string& node) const {
    std::vector<std::string> a = common_;
    a.insert(a.end(), {"--node-rank", node});
    return a;
  }

  std::vector<std::string> common_;  // initialized first: both nodes' flags come from it

 public:
  ServerProcess node1;  // the worker node
  ServerProcess node0;  // the coordinator, the controller and the HTTP front end
};

// Direct children of `pid` (a server's scheduler ranks and controller).
inline std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  const auto r = run_command("pgrep -P " + std::to_string(pid));
  std::istringstream in(r.out);
  for (pid_t p; in >> p;) out.push_back(p);
  return out;
}

// Waits until every pid is gone (reaped by its parent or init); false after `timeout`.
inline bool all_gone(const std::vector<pid_t>& pids, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    bool any = false;
    for (pid_t p : pids) {
      // A zombie still answers kill(0); read its state instead.
      std::ifstream st("/proc/" + std::to_string(p) + "/stat");
      std::string line;
      if (st && std::getline(st, line)) {
        const size_t close = line.rfind(')');
        if (close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z') {
          any = true;
        }
      }
    }
    if (!any) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// SIGTERM to node 0 stops the whole cluster: node 0 and node 1 exit 0 within `timeout` and none
// of their child processes (ranks, controller) outlives them.
inline void expect_sigterm_stops_both(ServerProcess& node0, ServerProcess& node1,
                                      std::chrono::seconds timeout = std::chrono::seconds(20)) {
  std::vector<pid_t> all = children_of(node0.pid());
  const std::vector<pid_t> all1 = children_of(node1.pid());
  all.insert(all.end(), all1.begin(), all1.end());
  ASSERT_EQ(::kill(node0.pid(), SIGTERM), 0);
  EXPECT_EQ(node0.wait_exit(timeout), 0) << node0.log();
  EXPECT_EQ(node1.wait_exit(timeout), 0) << node1.log();
  EXPECT_TRUE(all_gone(all, std::chrono::seconds(5)));
}

}  // namespace dpserve_test
