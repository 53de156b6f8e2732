#pragma once
// Token-to-KV storage (like SGLang's MHATokenToKVPool): one K and one V slot per token per layer,
// and a free-slot allocator kept separate from the storage so that a paged allocator and a radix
// cache can replace it without touching the attention code.

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace dpserve {

// Hands out token slot ids in [0, size) from a free list; double frees are invariant failures.
class TokenSlotAllocator {
 public:
  // size: number of slots managed.
  explicit TokenSlotAllocator(int64_t size);

  // n free slots (lowest ids first on a fresh allocator), or nullopt if fewer than n are free.
  std::optional<std::vector<int32_t>> alloc(int64_t n);
  // Returns slots to the free list; each must be currently allocated.
  void free(std::span<const int32_t> slots);
  // Number of free slots.
  int64_t available() const { return static_cast<int64_t>(free_.size()) + size_ - next_fresh_; }
  // Total number of slots.
  int64_t size() const { return size_; }
  // Frees every slot (e.g. when the scheduler flushes its cache).
  void clear();

 private:
  int64_t size_;
  int64_t next_fresh_ = 0;       // slots >= this were never handed out (so setup is O(1))
  std::vector<int32_t> free_;    // stack of returned slot ids; handed out before fresh ones
  std::vector<uint8_t> in_use_;  // per slot below next_fresh_: 1 while allocated (double frees)
};

// K and V storage for `size` token slots in every layer, f32. Layout per layer and per kv head:
// [num_kv_heads][size][head_dim], so that attention over one kv head reads head_dim-contiguous
// rows without striding over the other heads.
class KVPool {
 public:
  // size: token slots; the other arguments are the model's attention shape.
  KVPool(int64_t size, int64_t num_layers, int64_t num_kv_heads, int64_t head_dim);

  // Number of token slots.
  int64_t size() const { return size_; }
  // Number of layers stored.
  int64_t num_layers() const { return num_layers_; }
  // KV heads per token.
  int64_t num_kv_heads() const { return num_kv_heads_; }
  // Elements per head vector.
  int64_t head_dim() const { return head_dim_; }
  // Bytes of K and V storage in all (for capacity reporting).
  int64_t bytes() const { return 2 * num_layers_ * layer_elems() * 4; }

  // K vectors of one layer and kv head: [size][head_dim], row `slot` is that token's key.
  float* k_head(int64_t layer, int64_t kv_head) { return k_.get() + offset(layer, kv_head); }
  const float* k_head(int64_t layer, int64_t kv_head) const {
    return k_.get() + offset(layer, kv_head);
  }
  // V vectors of one layer and kv head: [size][head_dim].
  float* v_head(int64_t layer, int64_t kv_head) { return v_.get() + offset(layer, kv_head); }
  const float* v_head(int64_t layer, int64_t kv_head) const {
    return v_.get() + offset(layer, kv_head);
  }

  // Writes the K and V of n tokens into slots locs[0..n): k and v are [n][num_kv_heads*head_dim]
  // with rows `row_stride` floats apart.
  void store(int64_t layer, const int32_t* locs, int64_t n, const float* k, const float* v,
             int64_t row_stride);

  // The free-slot allocator over this pool's slots.
  TokenSlotAllocator& allocator() { return allocator_; }
  // Shorthands for allocator().alloc / free / available.
  std::optional<std::vector<int32_t>> alloc(int64_t n) { return allocator_.alloc(n); }
  void free(std::span<const int32_t> slots) { allocator_.free(slots); }
  int64_t available() const { return allocator_.available(); }

 private:
  int64_t layer_elems() const { return num_kv_heads_ * size_ * head_dim_; }
  int64_t offset(int64_t layer, int64_t kv_head) const {
    return layer * layer_elems() + kv_head * size_ * head_dim_;
  }

  int64_t size_;
  int64_t num_layers_;
  int64_t num_kv_heads_;
  int64_t head_dim_;
  std::unique_ptr<float[]> k_;  // [layers][kv_heads][size][head_dim], pages touched lazily
  std::unique_ptr<float[]> v_;  // same layout as k_
  TokenSlotAllocator allocator_;
};

}  // namespace dpserve
