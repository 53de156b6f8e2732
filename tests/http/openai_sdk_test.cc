// The official `openai` npm package against a real `dpserve serve`: each test runs one node
// script from tests/http/js/ with the package from <build>/npm/node_modules (installed by
// .ci/run: `npm install --prefix build/npm openai@5`). The expected outputs come from the offline
// engine (`dpserve generate --prompts-file`), handed to the scripts as a JSON file.
//
// Without node or the package the tests fail under CI (the CI environment variable) and skip
// with instructions otherwise.

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server_process.h"

namespace {

using dpserve_test::kStories;
using dpserve_test::offline_outputs;
using dpserve_test::ServerProcess;
using nlohmann::json;

const char* const kApiKey = "sdk-test-key";

std::string npm_dir() {
  const char* env = std::getenv("DPSERVE_NPM_DIR");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(DPSERVE_NPM_DIR);
}

// Why the SDK cannot run here ("" when it can).
std::string missing_sdk() {
  if (dpserve_test::run_command("node --version").exit_code != 0) {
    return "node is not installed (apt-get install nodejs npm)";
  }
  const std::string pkg = npm_dir() + "/node_modules/openai/package.json";
  if (!std::filesystem::exists(pkg)) {
    return "the openai npm package is missing at " + pkg +
           " (install it with: npm install --prefix " + npm_dir() + " openai@5)";
  }
  return "";
}

class OpenAISdkTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_reason_ = missing_sdk();
    if (!skip_reason_.empty()) return;
    server_ = std::make_unique<ServerProcess>(
        std::vector<std::string>{"--max-total-tokens", "8192", "--api-key", kApiKey});
    ASSERT_TRUE(server_->wait_healthy()) << server_->log();

    // The scripts' expectations: named groups of offline results (the sampling parameters match
    // the scripts' requests).
    struct Group {
      std::string name;
      json line;
    };
    const std::vector<Group> completion = {
        {"completion_greedy",
         {{"text", "Once upon a time"},
          {"sampling_params", {{"temperature", 0}, {"max_new_tokens", 24}}}}},
        {"completion_n2",
         {{"text", "The cat"},
          {"sampling_params",
           {{"temperature", 0.8}, {"seed", 42}, {"n", 2}, {"max_new_tokens", 20}}}}},
        {"completion_stop",
         {{"text", "Lily"},
          {"sampling_params", {{"temperature", 0}, {"stop", {"."}}, {"max_new_tokens", 60}}}}},
    };
    const std::vector<Group> chat = {
        {"chat_greedy",
         {{"text", "Once upon a time"},
          {"sampling_params", {{"temperature", 0}, {"max_new_tokens", 24}}}}},
        {"chat_n2",
         {{"text", "Tom"},
          {"sampling_params",
           {{"temperature", 0.9}, {"seed", 9}, {"n", 2}, {"max_new_tokens", 16}}}}},
        {"chat_stop",
         {{"text", "Once upon a time"},
          {"sampling_params",
           {{"temperature", 0}, {"stop", {"park", "ball"}}, {"max_new_tokens", 80}}}}},
    };
    json expected = json::object();
    for (const auto* groups : {&completion, &chat}) {
      std::vector<json> lines;
      for (const Group& g : *groups) lines.push_back(g.line);
      const std::vector<json> out = offline_outputs(lines, groups == &chat);
      size_t k = 0;
      for (const Group& g : *groups) {
        const int64_t n = g.line["sampling_params"].value("n", 1);
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_LT(k, out.size());
          expected[g.name].push_back(out[k++]);
        }
      }
      ASSERT_EQ(k, out.size());
    }
    expected_path_ = ::testing::TempDir() + "/sdk_expected_" + std::to_string(::getpid()) + ".json";
    std::ofstream(expected_path_) << expected.dump(1);
  }
  static void TearDownTestSuite() { server_.reset(); }

  void SetUp() override {
    if (!skip_reason_.empty()) {
      if (std::getenv("CI") != nullptr) FAIL() << "CI is set but " << skip_reason_;
      GTEST_SKIP() << skip_reason_;
    }
    ASSERT_TRUE(server_ != nullptr);
  }

  // Runs tests/http/js/<script> with node; its output is printed on failure.
  static void run_script(const std::string& script) {
    const std::string cmd =
        "cd " DPSERVE_SOURCE_DIR "/tests/http/js && NODE_PATH='" + npm_dir() +
        "/node_modules' DPSERVE_BASE_URL='http://127.0.0.1:" + std::to_string(server_->port()) +
        "' DPSERVE_MODEL='" + kStories + "' DPSERVE_API_KEY='" + kApiKey + "' DPSERVE_EXPECTED='" +
        expected_path_ + "' node " + script;
    const auto r = dpserve_test::run_command(cmd, /*with_stderr=*/true);
    EXPECT_EQ(r.exit_code, 0) << "node " << script << ":\n" << r.out;
    EXPECT_THAT(r.out, ::testing::Not(::testing::HasSubstr("FAIL"))) << r.out;
    std::cout << r.out;
  }

  static std::unique_ptr<ServerProcess> server_;
  static std::string skip_reason_;
  static std::string expected_path_;
};

std::unique_ptr<ServerProcess> OpenAISdkTest::server_;
std::string OpenAISdkTest::skip_reason_;
std::string OpenAISdkTest::expected_path_;

TEST_F(OpenAISdkTest, Completions) { run_script("completions.cjs"); }

TEST_F(OpenAISdkTest, ChatCompletionsAndModels) { run_script("chat.cjs"); }

TEST_F(OpenAISdkTest, ServerStillHealthyWithAllPagesFree) {
  httplib::Client c = server_->client();
  const httplib::Headers auth = {{"Authorization", std::string("Bearer ") + kApiKey}};
  auto f = c.Post("/flush_cache", auth, "", "application/json");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->status, 200) << f->body;
  auto info = c.Get("/get_server_info", auth);
  ASSERT_TRUE(info && info->status == 200);
  const json j = json::parse(info->body);
  EXPECT_EQ(j["num_live_requests"], 0);
  EXPECT_EQ(j["internal_states"][0]["all_pages_free"], true);
}

}  // namespace
