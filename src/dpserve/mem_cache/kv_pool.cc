#include "dpserve/mem_cache/kv_pool.h"

#include <algorithm>
#include <cstring>

#include "dpserve/common/errors.h"

namespace dpserve {

TokenSlotAllocator::TokenSlotAllocator(int64_t size) : size_(size) {
  DPSERVE_CHECK(size >= 0 && size <= INT32_MAX, "slot count {} out of range", size);
  clear();
}

void TokenSlotAllocator::clear() {
  next_fresh_ = 0;
  free_.clear();
  in_use_.clear();
}

std::optional<std::vector<int32_t>> TokenSlotAllocator::alloc(int64_t n) {
  DPSERVE_CHECK(n >= 0, "alloc of {} slots", n);
  if (n > available()) return std::nullopt;
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n));
  while (static_cast<int64_t>(out.size()) < n && !free_.empty()) {
    out.push_back(free_.back());
    free_.pop_back();
  }
  const int64_t fresh = n - static_cast<int64_t>(out.size());
  in_use_.resize(static_cast<size_t>(next_fresh_ + fresh), 0);
  for (int64_t i = 0; i < fresh; ++i) out.push_back(static_cast<int32_t>(next_fresh_ + i));
  next_fresh_ += fresh;
  for (int32_t s : out) in_use_[s] = 1;
  return out;
}

void TokenSlotAllocator::free(std::span<const int32_t> slots) {
  for (int32_t s : slots) {
    DPSERVE_CHECK(s >= 0 && s < size_, "freeing slot {} outside [0, {})", s, size_);
    DPSERVE_CHECK(s < next_fresh_ && in_use_[s], "double free of KV slot {}", s);
    in_use_[s] = 0;
    free_.push_back(s);
  }
}

KVPool::KVPool(int64_t size, int64_t num_layers, int64_t num_kv_heads, int64_t head_dim)
    : size_(size),
      num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      allocator_(size) {
  DPSERVE_CHECK(size > 0 && num_layers > 0 && num_kv_heads > 0 && head_dim > 0,
                "bad KV pool shape size={} layers={} kv_heads={} head_dim={}", size, num_layers,
                num_kv_heads, head_dim);
  const int64_t n = num_layers * layer_elems();
  k_.reset(new float[n]);
  v_.reset(new float[n]);
}

void KVPool::store(int64_t layer, const int32_t* locs, int64_t n, const float* k, const float* v,
                   int64_t row_stride) {
  DPSERVE_CHECK(layer >= 0 && layer < num_layers_, "layer {} out of range", layer);
  const size_t row_bytes = static_cast<size_t>(head_dim_) * sizeof(float);
  for (int64_t h = 0; h < num_kv_heads_; ++h) {
    float* kh = k_head(layer, h);
    float* vh = v_head(layer, h);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t s = locs[t];
      DPSERVE_CHECK(s >= 0 && s < size_, "KV slot {} outside [0, {})", s, size_);
      std::memcpy(kh + s * head_dim_, k + t * row_stride + h * head_dim_, row_bytes);
      std::memcpy(vh + s * head_dim_, v + t * row_stride + h * head_dim_, row_bytes);
    }
  }
}

}  // namespace dpserve
