// Loading errors name the file and what is wrong.

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "dpserve/common/errors.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("dpserve_tok_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  void write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ / name, std::ios::binary) << content;
  }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

// Runs load_tokenizer(dir) and returns the Error message ("" if it loaded).
std::string load_error(const std::string& dir) {
  try {
    load_tokenizer(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(tokenizer_Errors, MissingDirectory) {
  const std::string msg = load_error("/nonexistent/dpserve/tokenizer");
  EXPECT_NE(msg.find("/nonexistent/dpserve/tokenizer"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
}

TEST(tokenizer_Errors, EmptyDirectory) {
  TempDir dir;
  const std::string msg = load_error(dir.str());
  EXPECT_NE(msg.find(dir.str()), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
}

TEST(tokenizer_Errors, MalformedJson) {
  TempDir dir;
  dir.write("tokenizer.json", "{ \"model\": [1, 2,");
  const std::string msg = load_error(dir.str());
  EXPECT_NE(msg.find(dir.str() + "/tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed JSON"), std::string::npos) << msg;
}

TEST(tokenizer_Errors, MissingModel) {
  TempDir dir;
  dir.write("tokenizer.json", R"({"version": "1.0"})");
  const std::string msg = load_error(dir.str());
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"model\""), std::string::npos) << msg;
}

TEST(tokenizer_Errors, UnsupportedPieces) {
  TempDir dir;
  dir.write("tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {}}})");
  std::string msg = load_error(dir.str());
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("WordPiece"), std::string::npos) << msg;

  dir.write("tokenizer.json",
            R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                "normalizer": {"type": "NFKD"}})");
  msg = load_error(dir.str());
  EXPECT_NE(msg.find("NFKD"), std::string::npos) << msg;

  dir.write("tokenizer.json",
            R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"},
                                  "behavior": "Isolated"}})");
  msg = load_error(dir.str());
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("regex"), std::string::npos) << msg;
}

TEST(tokenizer_Errors, BadConfigAndModelFiles) {
  TempDir dir;
  dir.write("tokenizer.model", "not a sentencepiece model");
  std::string msg = load_error(dir.str());
  EXPECT_NE(msg.find(dir.str() + "/tokenizer.model"), std::string::npos) << msg;

  dir.write("tokenizer_config.json", R"({"add_bos_token": "yes"})");
  msg = load_error(dir.str());
  EXPECT_NE(msg.find("tokenizer_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("add_bos_token"), std::string::npos) << msg;
}

}  // namespace
}  // namespace dpserve
