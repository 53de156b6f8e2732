// Small hand-written tokenizer.json files: merge ranks, added-token stripping, post-processor
// templates, and concurrent use.

#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "dpserve/tokenizer/tokenizer.h"
#include "test_util.h"

namespace dpserve {
namespace {

namespace fs = std::filesystem;

// A fresh directory holding the given files; removed at the end of the test.
class TinyDir {
 public:
  explicit TinyDir(const std::vector<std::pair<std::string, std::string>>& files) {
    path_ = fs::temp_directory_path() /
            ("dpserve_tiny_tok_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
    for (const auto& [name, content] : files) std::ofstream(path_ / name) << content;
  }
  ~TinyDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

constexpr const char* kModel =
    R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5,
                                          " ": 7},
                 "merges": ["b c", "a b", "a bc"]})";

TEST(tokenizer_Tiny, MergeRanksAndAddedTokens) {
  TinyDir dir(
      {{"tokenizer.json", std::string(R"({"added_tokens": [{"id": 6, "content": "<eos>",
      "special": true}], "decoder": {"type": "Fuse"}, )") +
                              kModel + "}"},
       {"tokenizer_config.json", R"({"eos_token": {"content": "<eos>"}, "add_eos_token": true})"}});
  auto tok = load_tokenizer(dir.str());
  EXPECT_EQ(tok->encode("abc", false), std::vector<int32_t>{5});  // "b c" first, then "a bc"
  EXPECT_EQ(tok->encode("abab<eos>", true), (std::vector<int32_t>{3, 3, 6, 6}));
  EXPECT_EQ(tok->decode({5, 6}), "abc<eos>");
  EXPECT_EQ(tok->decode({5, 6}, true), "abc");
  EXPECT_EQ(tok->eos_token_ids(), std::vector<int32_t>{6});
  EXPECT_EQ(tok->vocab_size(), 8);
}

TEST(tokenizer_Tiny, LstripRstripAndTemplate) {
  TinyDir dir({{"tokenizer.json", std::string(R"({"added_tokens": [
        {"id": 8, "content": "<L>", "lstrip": true, "special": true},
        {"id": 9, "content": "<R>", "rstrip": true, "special": false},
        {"id": 10, "content": "<bos>", "special": true}],
      "post_processor": {"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A"}}],
        "special_tokens": {"<bos>": {"id": "<bos>", "ids": [10], "tokens": ["<bos>"]}}},
      "decoder": {"type": "Fuse"}, )") +
                                      kModel + "}"}});
  auto tok = load_tokenizer(dir.str());
  EXPECT_EQ(tok->encode("a  <L> b", false), (std::vector<int32_t>{0, 8, 7, 1}));
  EXPECT_EQ(tok->encode("a <R>  b", false), (std::vector<int32_t>{0, 7, 9, 1}));
  EXPECT_EQ(tok->encode("ab", true), (std::vector<int32_t>{10, 3}));  // BOS from the template
  EXPECT_EQ(tok->bos_token_id(), -1);  // no tokenizer_config.json names it
  EXPECT_TRUE(tok->is_special(8));
  EXPECT_FALSE(tok->is_special(9));
  EXPECT_EQ(tok->decode({10, 3, 9, 8}, true), "ab<R>");
}

TEST(tokenizer_Tiny, ConcurrentEncodeAgrees) {
  auto tok = load_tokenizer(test::shared_path("tokenizers/qwen3"));
  const std::string text = "The quick brown fox 日本語 😀 jumps over 12345 lazy dogs.\n";
  const auto expected = tok->encode(text);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const std::string s = text + std::to_string(t * 1000 + i);
        auto ids = tok->encode(s);
        ids.resize(expected.size());
        if (ids != expected) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace dpserve
