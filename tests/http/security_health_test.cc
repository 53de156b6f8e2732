// --api-key on every route but /health, the startup warning for an unauthenticated non-loopback
// --host, and /health_generate probing every DP group: real `dpserve serve` processes on
// stories260K over real HTTP.

#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server_process.h"

namespace {

using dpserve_test::ServerProcess;
using nlohmann::json;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// A raw request with an optional Authorization header and a JSON body (empty = none).
std::string request(const std::string& method, const std::string& path, const std::string& key,
                    const std::string& body = "") {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
  if (!key.empty()) r += "Authorization: Bearer " + key + "\r\n";
  if (!body.empty()) {
    r +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  return r + "\r\n" + body;
}

int status_of(const std::string& answer) {
  return answer.size() > 12 ? std::atoi(answer.substr(9, 3).c_str()) : -1;
}

TEST(HttpSecurity, ApiKeyGuardsEveryRouteButHealth) {
  ServerProcess server({"--max-total-tokens", "4096", "--enable-metrics", "--api-key", "k3y"});
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  const std::string gen =
      R"({"text": "Once upon a time", "sampling_params": {"max_new_tokens": 2}})";
  const std::string cmpl = R"({"prompt": "Once", "max_tokens": 2})";
  const std::string chat = R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})";
  struct Route {
    std::string method, path, body;
  };
  const std::vector<Route> routes = {{"GET", "/health_generate", ""},
                                     {"GET", "/metrics", ""},
                                     {"GET", "/get_server_info", ""},
                                     {"GET", "/get_model_info", ""},
                                     {"GET", "/v1/models", ""},
                                     {"GET", "/flush_cache", ""},
                                     {"POST", "/flush_cache", ""},
                                     {"POST", "/generate", gen},
                                     {"PUT", "/generate", gen},
                                     {"POST", "/v1/completions", cmpl},
                                     {"POST", "/v1/chat/completions", chat},
                                     {"GET", "/no_such_route", ""}};
  for (const Route& r : routes) {
    SCOPED_TRACE(r.method + " " + r.path);
    for (const std::string& key : {std::string(), std::string("wrong")}) {
      dpserve_test::expect_api_error(
          dpserve_test::raw_http(server.port(), request(r.method, r.path, key, r.body)), 401,
          "Invalid or missing API key");
    }
    const std::string ok =
        dpserve_test::raw_http(server.port(), request(r.method, r.path, "k3y", r.body));
    EXPECT_EQ(status_of(ok), r.path == "/no_such_route" ? 404 : 200) << ok;
  }
  // /health stays open for load balancers and orchestrators.
  EXPECT_EQ(status_of(dpserve_test::raw_http(server.port(), request("GET", "/health", ""))), 200);
  EXPECT_THAT(server.log(), ::testing::Not(HasSubstr("accepts connections from other machines")));
}

TEST(HttpSecurity, NonLoopbackHostWithoutApiKeyWarnsAtStartup) {
  const std::string warning = "accepts connections from other machines and no --api-key is set";
  {
    ServerProcess open({"--max-total-tokens", "4096", "--host", "0.0.0.0"});
    ASSERT_TRUE(open.wait_healthy()) << open.log();
    EXPECT_THAT(open.log(), HasSubstr("[warning] --host 0.0.0.0 " + warning));
  }
  {
    ServerProcess keyed({"--max-total-tokens", "4096", "--host", "0.0.0.0", "--api-key", "k"});
    ASSERT_TRUE(keyed.wait_healthy()) << keyed.log();
    EXPECT_THAT(keyed.log(), ::testing::Not(HasSubstr(warning)));
  }
  {
    ServerProcess local({"--max-total-tokens", "4096", "--host", "127.0.0.1"});
    ASSERT_TRUE(local.wait_healthy()) << local.log();
    EXPECT_THAT(local.log(), ::testing::Not(HasSubstr(warning)));
  }
}

// num_finished of every DP group, from /get_server_info.
std::vector<int64_t> finished_per_group(const ServerProcess& server) {
  const json info = dpserve_test::server_info(server)["internal_states"][0];
  std::vector<int64_t> out;
  for (const json& g : info["dp_groups"]) {
    out.push_back(g["info"].is_object() ? g["info"]["stats"]["num_finished"].get<int64_t>() : -1);
  }
  return out;
}

TEST(HttpHealth, HealthGenerateProbesEveryDpGroup) {
  ::setenv("DPSERVE_HEALTH_CHECK_TIMEOUT", "2", 1);  // read by the server at startup
  ServerProcess server({"--max-total-tokens", "4096", "--dp-size", "2"});
  ::unsetenv("DPSERVE_HEALTH_CHECK_TIMEOUT");
  ASSERT_TRUE(server.wait_healthy(std::chrono::seconds(60))) << server.log();
  httplib::Client c = server.client();

  // One probe through each group: both groups finish exactly one request.
  const std::vector<int64_t> before = finished_per_group(server);
  ASSERT_EQ(before.size(), 2u);
  auto ok = c.Get("/health_generate");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  std::vector<int64_t> after = finished_per_group(server);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[0], before[0] + 1);
  EXPECT_EQ(after[1], before[1] + 1);

  // A group that cannot run fails the check, which names it.
  const json groups = dpserve_test::server_info(server)["internal_states"][0]["dp_groups"];
  const auto pid1 = static_cast<pid_t>(groups[1]["info"]["pid"].get<int64_t>());
  ASSERT_EQ(::kill(pid1, SIGSTOP), 0);
  const auto t = Clock::now();
  auto bad = c.Get("/health_generate");
  const double took = std::chrono::duration<double>(Clock::now() - t).count();
  ::kill(pid1, SIGCONT);
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 503);
  const json err = json::parse(bad->body, nullptr, false);
  ASSERT_TRUE(err.is_object()) << bad->body;
  EXPECT_EQ(err["error"]["code"], 503);
  EXPECT_EQ(err["error"]["type"], "service_unavailable");
  EXPECT_THAT(err["error"]["message"].get<std::string>(),
              HasSubstr("DP group 1 of 2 produced no token within 2 s"));
  EXPECT_GE(took, 2.0 - 0.1);
  EXPECT_LT(took, 6.0);

  // Running again, both groups answer.
  int status = 0;
  for (int i = 0; i < 10 && status != 200; ++i) {
    auto again = c.Get("/health_generate");
    status = again ? again->status : -1;
  }
  EXPECT_EQ(status, 200);
  dpserve_test::expect_all_pages_free(server);
}

}  // namespace
