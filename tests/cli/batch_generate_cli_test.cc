// Runs `dpserve generate --prompts-file` (the offline batch command) and checks its JSON lines,
// their order, the runtime flags and the errors for bad lines.

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_test_util.h"

namespace {

using ::testing::HasSubstr;

using dpserve::testing::kStories;

struct CliRun {
  int exit_code;
  std::string out;  // stdout (and stderr when asked)
};

CliRun dpserve(const std::string& args, bool with_stderr = false) {
  auto r = dpserve::testing::run_dpserve(args, with_stderr);
  return {r.exit_code, r.output};
}

std::string write_file(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

TEST(BatchGenerateCli, JsonLinesInInputOrder) {
  std::ifstream ref_in(kStories + "/reference_outputs.json");
  const nlohmann::json ref = nlohmann::json::parse(ref_in);
  const std::string prompt = ref["prompt_text"].get<std::string>();
  const std::string file = write_file(
      "prompts.txt",
      "Tom and his dog went to the park.\n"
      "\n"
      "{\"text\": \"" +
          prompt +
          "\"}\n"
          "{\"text\": \"One day\", \"sampling_params\": {\"max_new_tokens\": 4}}\n"
          "{\"text\": \"Lily\", \"sampling_params\": {\"stop\": \".\", \"max_new_tokens\": 60}}\n" +
          prompt + "\n");
  for (const char* flags :
       {"", " --chunked-prefill-size 3 --page-size 16 --max-total-tokens 160",
        " --disable-radix-cache --schedule-policy lpm --max-running-requests 2"}) {
    SCOPED_TRACE(flags);
    CliRun r = dpserve("generate --model-path " + kStories + " --prompts-file " + file +
                       " --max-new-tokens 32" + flags);
    ASSERT_EQ(r.exit_code, 0);
    const std::vector<nlohmann::json> lines = json_lines(r.out);
    ASSERT_EQ(lines.size(), 5u);
    EXPECT_EQ(lines[0]["prompt"], "Tom and his dog went to the park.");
    for (const nlohmann::json& j : lines) {
      for (const char* key : {"prompt", "text", "prompt_tokens", "completion_tokens",
                              "cached_tokens", "finish_reason"}) {
        EXPECT_TRUE(j.contains(key)) << key << " in " << j.dump();
      }
    }
    // The reference prompt, as a JSON line and as a plain line: the reference greedy text.
    EXPECT_EQ(prompt + lines[1]["text"].get<std::string>(), ref["greedy"]["text"]);
    EXPECT_EQ(lines[1]["prompt_tokens"], 5);
    EXPECT_EQ(lines[1]["completion_tokens"], 32);
    EXPECT_EQ(lines[1]["finish_reason"]["type"], "length");
    EXPECT_EQ(lines[4]["text"], lines[1]["text"]);
    EXPECT_EQ(lines[2]["prompt"], "One day");
    EXPECT_EQ(lines[2]["completion_tokens"], 4);  // per-prompt sampling_params apply
    EXPECT_EQ(lines[3]["finish_reason"]["type"], "stop");
    EXPECT_EQ(lines[3]["finish_reason"]["matched"], ".");
  }
}

TEST(BatchGenerateCli, BadLineIsNamed) {
  const std::string file =
      write_file("bad.txt",
                 "Once upon a time\n{\"text\": \"hi\"}\n{\"text\": \"x\", \"sampling_params\": "
                 "{\"top_p\": 1.5}}\n");
  CliRun r = dpserve("generate --model-path " + kStories + " --prompts-file " + file, true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("line 3"));
  EXPECT_THAT(r.out, HasSubstr("top_p"));
  const std::string broken = write_file("broken.txt", "ok\n{\"text\": \"x\",\n");
  r = dpserve("generate --model-path " + kStories + " --prompts-file " + broken, true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("line 2: not a valid JSON object"));
  r = dpserve("generate --model-path " + kStories + " --prompts-file /nonexistent.txt", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("/nonexistent.txt: cannot open"));
  r = dpserve("generate --model-path " + kStories + " --prompt hi --prompts-file " + file, true);
  EXPECT_NE(r.exit_code, 0);
}

}  // namespace
