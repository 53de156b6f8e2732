#include "dpserve/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"

namespace dpserve {

namespace fs = std::filesystem;

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// Largest header we accept; real headers are well under a few MiB.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

// Largest dimension, element count and byte count of a tensor (they are held as int64_t).
constexpr uint64_t kMaxCount = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") {
    *out = DType::F32;
  } else if (s == "F16") {
    *out = DType::F16;
  } else if (s == "BF16") {
    *out = DType::BF16;
  } else {
    return false;
  }
  return true;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_error("{}: cannot open: {}", path, std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw_error("{}: cannot stat: {}", path, std::strerror(err));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw_error(
        "{}: truncated file: {} bytes, a safetensors file starts with an 8-byte header "
        "length",
        path, size);
  }
  map_ = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw_error("{}: cannot mmap: {}", path, std::strerror(map_err));
  }
  map_size_ = size;
  try {
    const auto* bytes = static_cast<const uint8_t*>(map_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
    if (header_len > size - 8) {
      throw_error(
          "{}: header length {} runs past the end of the file ({} bytes): truncated or not "
          "a safetensors file",
          path, header_len, size);
    }
    if (header_len > kMaxHeaderBytes) {
      throw_error("{}: header length {} is implausibly large", path, header_len);
    }
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len);
    } catch (const nlohmann::json::exception& e) {
      throw_error("{}: header is not valid JSON: {}", path, e.what());
    }
    if (!header.is_object()) throw_error("{}: header is not a JSON object", path);
    const uint8_t* data = bytes + 8 + header_len;
    const uint64_t data_size = size - 8 - header_len;
    // Writers pad the header to a multiple of 8 so tensors stay aligned in the mapping; without
    // that padding, reading them as float / uint16_t in place would be misaligned (UB), so the
    // data section is copied to 8-byte-aligned memory.
    if (header_len % 8 != 0 && data_size > 0) {
      aligned_data_.reset(new uint64_t[(data_size + 7) / 8]);
      std::memcpy(aligned_data_.get(), data, data_size);
      data = reinterpret_cast<const uint8_t*>(aligned_data_.get());
    }

    std::vector<std::pair<std::pair<uint64_t, uint64_t>, std::string>> ranges;
    for (const auto& [name, info] : header.items()) {
      if (name == "__metadata__") continue;
      if (!info.is_object() || !info.contains("dtype") || !info["dtype"].is_string() ||
          !info.contains("shape") || !info["shape"].is_array() || !info.contains("data_offsets") ||
          !info["data_offsets"].is_array() || info["data_offsets"].size() != 2) {
        throw_error("{}: tensor '{}': header entry needs dtype, shape and two data_offsets", path,
                    name);
      }
      TensorView t;
      t.name = name;
      t.file = path;
      const std::string dtype = info["dtype"].get<std::string>();
      if (!parse_dtype(dtype, &t.dtype)) {
        throw_error("{}: tensor '{}': unsupported dtype '{}' (supported: F32, F16, BF16)", path,
                    name, dtype);
      }
      // The element and byte counts must fit in 64 bits: a wrapped product would let a huge
      // shape pass with a few bytes of data.
      uint64_t numel = 1;
      bool overflow = false;
      std::vector<uint64_t> dims;
      for (const auto& d : info["shape"]) {
        if (!d.is_number_unsigned()) {
          throw_error("{}: tensor '{}': shape entries must be non-negative integers", path, name);
        }
        const uint64_t dim = d.get<uint64_t>();
        overflow = overflow || dim > kMaxCount || __builtin_mul_overflow(numel, dim, &numel);
        dims.push_back(dim);
        t.shape.push_back(static_cast<int64_t>(dim));
      }
      uint64_t need = 0;
      overflow =
          overflow || __builtin_mul_overflow(numel, dtype_size(t.dtype), &need) || need > kMaxCount;
      if (overflow) {
        throw_error("{}: tensor '{}': shape [{}] has more elements than 64 bits can count", path,
                    name, fmt::join(dims, ", "));
      }
      const auto& off = info["data_offsets"];
      if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
        throw_error("{}: tensor '{}': data_offsets must be non-negative integers", path, name);
      }
      const uint64_t begin = off[0].get<uint64_t>();
      const uint64_t end = off[1].get<uint64_t>();
      if (begin > end || end > data_size) {
        throw_error(
            "{}: tensor '{}': data_offsets [{}, {}] out of range: the data section has {} "
            "bytes (truncated file?)",
            path, name, begin, end, data_size);
      }
      if (end - begin != need) {
        throw_error("{}: tensor '{}': shape [{}] in {} needs {} bytes but data_offsets span {}",
                    path, name, fmt::join(t.shape, ", "), dtype, need, end - begin);
      }
      t.data = data + begin;
      t.nbytes = need;
      ranges.push_back({{begin, end}, name});
      tensors_.emplace(name, std::move(t));
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i].first.first < ranges[i - 1].first.second) {
        throw_error("{}: tensors '{}' and '{}' overlap (bytes {}..{} and {}..{})", path,
                    ranges[i - 1].second, ranges[i].second, ranges[i - 1].first.first,
                    ranges[i - 1].first.second, ranges[i].first.first, ranges[i].first.second);
      }
    }
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

WeightStore::WeightStore(const std::string& model_dir) : dir_(model_dir) {
  if (!fs::is_directory(model_dir)) throw_error("{}: not a directory", model_dir);
  const fs::path index_path = fs::path(model_dir) / "model.safetensors.index.json";
  std::vector<std::string> files;
  nlohmann::json weight_map;
  if (fs::exists(index_path)) {
    std::ifstream in(index_path);
    nlohmann::json idx;
    try {
      idx = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw_error("{}: invalid JSON: {}", index_path.string(), e.what());
    }
    if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object()) {
      throw_error("{}: missing 'weight_map' object", index_path.string());
    }
    weight_map = idx["weight_map"];
    std::set<std::string> unique;
    for (const auto& [name, file] : weight_map.items()) {
      if (!file.is_string()) {
        throw_error("{}: weight_map entry '{}' must name a file", index_path.string(), name);
      }
      const std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f == "..") {
        throw_error("{}: weight_map entry '{}' names '{}' outside the model directory",
                    index_path.string(), name, f);
      }
      unique.insert(f);
    }
    files.assign(unique.begin(), unique.end());
  } else if (fs::exists(fs::path(model_dir) / "model.safetensors")) {
    files.push_back("model.safetensors");
  } else {
    for (const auto& e : fs::directory_iterator(model_dir)) {
      if (e.path().extension() == ".safetensors") files.push_back(e.path().filename().string());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      throw_error("{}: no model.safetensors, model.safetensors.index.json or *.safetensors file",
                  model_dir);
    }
  }
  for (const auto& f : files) {
    const std::string path = (fs::path(model_dir) / f).string();
    if (!fs::exists(path)) {
      throw_error("{}: shard '{}' named by model.safetensors.index.json does not exist", model_dir,
                  f);
    }
    files_.push_back(std::make_unique<SafetensorsFile>(path));
    for (const auto& [name, t] : files_.back()->tensors()) {
      auto [it, inserted] = index_.emplace(name, &t);
      if (!inserted) {
        throw_error("{}: tensor '{}' appears in both {} and {}", model_dir, name, it->second->file,
                    path);
      }
    }
  }
  for (const auto& [name, file] : weight_map.items()) {
    auto it = index_.find(name);
    const std::string expected = (fs::path(model_dir) / file.get<std::string>()).string();
    if (it == index_.end() || it->second->file != expected) {
      throw_error(
          "{}: model.safetensors.index.json puts tensor '{}' in {}, but that file does not "
          "hold it",
          model_dir, name, expected);
    }
  }
}

bool WeightStore::has(const std::string& name) const { return index_.count(name) != 0; }

const TensorView& WeightStore::get(const std::string& name,
                                   const std::vector<int64_t>& expected_shape) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw_error("{}: tensor '{}' is missing from the checkpoint", dir_, name);
  const TensorView& t = *it->second;
  if (!expected_shape.empty() && t.shape != expected_shape) {
    throw_error("{}: tensor '{}' has shape [{}], expected [{}] from config.json", t.file, name,
                fmt::join(t.shape, ", "), fmt::join(expected_shape, ", "));
  }
  return t;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, t] : index_) out.push_back(name);
  return out;
}

size_t WeightStore::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, t] : index_) n += t->nbytes;
  return n;
}

std::vector<float> to_f32(const TensorView& t) {
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<float> out(n);
  if (n == 0) return out;  // memcpy from / to null pointers is undefined even for 0 bytes
  const auto* p16 = static_cast<const uint16_t*>(t.data);
  switch (t.dtype) {
    case DType::F32:
      std::memcpy(out.data(), t.data, n * 4);
      break;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(p16[i]);
      break;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) out[i] = f16_to_f32(p16[i]);
      break;
  }
  return out;
}

}  // namespace dpserve
