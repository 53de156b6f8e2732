#pragma once
// Safetensors files read through mmap, and a WeightStore over one file or a sharded set
// (model.safetensors.index.json). Every structural problem is a dpserve::Error naming the file and,
// where there is one, the tensor.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dpserve/common/dtype.h"

namespace dpserve {

// One tensor inside a mapped file: a view, valid while its SafetensorsFile lives.
struct TensorView {
  std::string name;            // tensor name as in the header
  DType dtype = DType::F32;    // element type
  std::vector<int64_t> shape;  // row-major dimensions
  const void* data = nullptr;  // first byte inside the mapping
  size_t nbytes = 0;           // product(shape) * dtype_size(dtype)
  std::string file;            // path of the file holding it, for error messages

  int64_t numel() const;
};

// A single .safetensors file mapped read-only.
class SafetensorsFile {
 public:
  // Maps and validates `path`: header length and JSON, dtypes, shapes vs byte ranges, ranges
  // inside the data section and not overlapping. Every tensor's data is aligned to its dtype
  // (a data section that the header leaves misaligned is copied).
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // All tensors by name.
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  // The data section copied to aligned memory when the header length leaves it misaligned for
  // its dtypes (tensors are read as float / uint16_t in place); empty otherwise.
  std::unique_ptr<uint64_t[]> aligned_data_;
  std::map<std::string, TensorView> tensors_;
};

// All weights of a model directory, from model.safetensors or the shards an index names.
class WeightStore {
 public:
  // Opens `model_dir`; throws dpserve::Error if neither model.safetensors nor
  // model.safetensors.index.json is usable.
  explicit WeightStore(const std::string& model_dir);

  // True if a tensor of that name exists.
  bool has(const std::string& name) const;
  // The named tensor; throws dpserve::Error naming the tensor (and the directory) if missing, or
  // naming the tensor and its file if its shape differs from `expected_shape` (when non-empty).
  const TensorView& get(const std::string& name,
                        const std::vector<int64_t>& expected_shape = {}) const;
  // Every tensor name, sorted.
  std::vector<std::string> names() const;
  // Total bytes of all tensors (for progress reporting).
  size_t total_bytes() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// Copies a tensor into a new f32 vector, converting F16/BF16.
std::vector<float> to_f32(const TensorView& t);

}  // namespace dpserve
