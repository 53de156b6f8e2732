#pragma once
// Helpers shared by the tokenizer tests.

#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

namespace dpserve::test {

// Path of a file under ../shared.
inline std::string shared_path(const std::string& rel) {
  return std::string(DPSERVE_SHARED_DIR) + "/" + rel;
}

// Path of a tokenizer fixture under tests/fixtures/tokenizer.
inline std::string fixture_path(const std::string& name) {
  return std::string(DPSERVE_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + name;
}

// The whole content of a file.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A parsed JSON file.
inline nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(read_file(path));
}

}  // namespace dpserve::test
