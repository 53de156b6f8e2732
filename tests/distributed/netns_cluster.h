#pragma once
// Two test "hosts" on one machine: network namespaces joined by a veth pair (netns.sh), one
// `dpserve serve --nnodes 2` in each with --node-0-address <ns0 address>. Needs root
// (CAP_NET_ADMIN); namespaces_available() says whether this machine allows it.

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "../http/server_process.h"

namespace dpserve_test {

// True when network namespaces can be created here.
inline bool namespaces_available() {
  return run_command("bash " DPSERVE_SOURCE_DIR "/tests/distributed/netns.sh check").exit_code == 0;
}

// Serves with `flags` (the parallel layout) across the two namespaces, checks that an OpenAI
// completion asked from inside ns0 is the reference text, then stops node 0 with SIGTERM and
// checks that both nodes exit 0. `node1_log_has` must appear in node 1's log.
inline void serve_across_two_namespaces(const std::vector<std::string>& flags,
                                        const std::string& node1_log_has) {
  using std::chrono::milliseconds;
  const std::string script = DPSERVE_SOURCE_DIR "/tests/distributed/netns.sh";
  const std::string name = "dpt" + std::to_string(::getpid() % 100000);
  const int net = 100 + ::getpid() % 100;
  const auto up = run_command("bash " + script + " up " + name + " " + std::to_string(net), true);
  ASSERT_EQ(up.exit_code, 0) << up.out;
  struct Down {
    std::string cmd;
    ~Down() { run_command(cmd); }
  } down{"bash " + script + " down " + name};
  const std::string addr0 = "10." + std::to_string(net) + ".0.1";

  // Each node runs under `ip netns exec`; its log goes to a file.
  auto spawn = [&](int node, const std::string& log) {
    std::vector<std::string> argv = {"/usr/sbin/ip",
                                     "netns",
                                     "exec",
                                     name + std::to_string(node),
                                     DPSERVE_BINARY,
                                     "serve",
                                     "--model-path",
                                     kStories,
                                     "--host",
                                     node == 0 ? addr0 : "10." + std::to_string(net) + ".0.2",
                                     "--port",
                                     "30000",
                                     "--nnodes",
                                     "2",
                                     "--node-rank",
                                     std::to_string(node),
                                     "--node-0-address",
                                     addr0,
                                     "--cluster-secret",
                                     "netns-test-" + name,
                                     "--max-total-tokens",
                                     "4096"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> cargv;
      for (auto& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    return pid;
  };
  const std::string log0 = ::testing::TempDir() + "/" + name + "_node0.log";
  const std::string log1 = ::testing::TempDir() + "/" + name + "_node1.log";
  const pid_t n0 = spawn(0, log0);
  const pid_t n1 = spawn(1, log1);
  struct Reap {
    pid_t a, b;
    ~Reap() {
      for (pid_t p : {a, b}) {
        ::kill(-p, SIGKILL);
        ::waitpid(p, nullptr, 0);
      }
    }
  } reap{n0, n1};

  const std::string curl =
      "ip netns exec " + name + "0 curl -s --max-time 30 http://" + addr0 + ":30000";
  bool healthy = false;
  for (int i = 0; i < 600 && !healthy; ++i) {
    healthy = run_command(curl + "/health -o /dev/null -w '%{http_code}'").out == "200";
    if (!healthy) std::this_thread::sleep_for(milliseconds(100));
  }
  ASSERT_TRUE(healthy) << read_file(log0) << read_file(log1);
  const nlohmann::json ref = reference_outputs();
  const nlohmann::json req = {
      {"model", kStories}, {"prompt", ref["prompt_text"]}, {"max_tokens", 32}, {"temperature", 0}};
  const std::string full = ref["greedy"]["text"];
  const std::string prompt = ref["prompt_text"];
  // Two requests: under DP the controller sends them to different groups, one per node.
  for (int i = 0; i < 2; ++i) {
    const auto r = run_command(curl + "/v1/completions -H 'Content-Type: application/json' -d '" +
                               req.dump() + "'");
    const nlohmann::json resp = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_TRUE(resp.is_object() && resp.contains("choices")) << r.out << read_file(log0);
    EXPECT_EQ(resp["choices"][0]["text"].get<std::string>(), full.substr(prompt.size()));
  }
  EXPECT_NE(read_file(log1).find(node1_log_has), std::string::npos) << read_file(log1);

  ::kill(n0, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(n0, &status, 0), n0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_file(log0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  pid_t got = 0;
  while ((got = ::waitpid(n1, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_EQ(got, n1) << "node 1 did not stop with node 0\n" << read_file(log1);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_file(log1);
}

}  // namespace dpserve_test
