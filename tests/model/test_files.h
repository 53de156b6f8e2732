#pragma once
// Helpers that write safetensors files byte by byte, independently of the loader under test.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

namespace dpserve::testing {

// A fresh empty directory under the system temp dir, removed by the destructor.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    path_ = std::filesystem::temp_directory_path() /
            ("dpserve_test_" + tag + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Writes raw bytes to a file.
inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Builds a safetensors byte string from a header object and a data section.
inline std::string safetensors_bytes(const nlohmann::json& header, const std::string& data) {
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + h + data;
}

// A well-formed file: tensor "a" F32 [2,3] = 0..5, tensor "b" BF16 [4] = 1,2,3,4.
inline std::string good_safetensors() {
  std::string data;
  for (int i = 0; i < 6; ++i) {
    float f = static_cast<float>(i);
    data.append(reinterpret_cast<const char*>(&f), 4);
  }
  for (uint16_t v : {0x3f80, 0x4000, 0x4040, 0x4080}) {  // bf16 1, 2, 3, 4
    data.push_back(static_cast<char>(v & 0xff));
    data.push_back(static_cast<char>(v >> 8));
  }
  nlohmann::json h = {{"a", {{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 24}}}},
                      {"b", {{"dtype", "BF16"}, {"shape", {4}}, {"data_offsets", {24, 32}}}},
                      {"__metadata__", {{"format", "pt"}}}};
  return safetensors_bytes(h, data);
}

}  // namespace dpserve::testing
