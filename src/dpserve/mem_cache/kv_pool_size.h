#pragma once
// Sizing the token-to-KV pool from the user's budget: `--max-total-tokens` (tokens),
// `--kv-cache-memory` (bytes), or by default a fraction of the host's available RAM
// (/proc/meminfo MemAvailable, read after the weights are loaded). The result is whole pages and
// accounts for the reserved padding page of PagedAllocator.

#include <cstdint>
#include <optional>
#include <string>

namespace dpserve {

// Bytes of K and V per token in f32 over all layers: 2 * layers * kv_heads * head_dim * 4.
int64_t kv_bytes_per_token(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim);

// MemAvailable in bytes from a meminfo-format file, or nullopt if it cannot be read or parsed.
std::optional<int64_t> read_mem_available(const std::string& meminfo_path = "/proc/meminfo");

// What the user asked for and what the model needs.
struct KVPoolBudget {
  int64_t max_total_tokens = 0;  // --max-total-tokens: usable token slots; 0 = not given
  int64_t kv_cache_memory = 0;   // --kv-cache-memory: bytes for K and V; 0 = not given
  double mem_fraction = 0.5;     // share of MemAvailable used when neither flag is given
  // Cap on the default (RAM-derived) size, so a big host does not get GBs of slot bookkeeping for
  // a tiny model; explicit flags are never capped. 0 = no cap.
  int64_t max_default_tokens = int64_t{1} << 22;
  int64_t page_size = 1;        // --page-size
  int64_t bytes_per_token = 0;  // kv_bytes_per_token() of the model
  int64_t context_length = 0;   // longest sequence the pool must hold at once; 0 = no check
  std::optional<int64_t> mem_available;  // overrides /proc/meminfo (tests)
};

// The pool that results.
struct KVPoolSize {
  int64_t page_size = 1;      // slots per page
  int64_t num_pages = 0;      // usable pages (PagedAllocator's num_pages)
  int64_t usable_tokens = 0;  // num_pages * page_size
  int64_t pool_slots = 0;     // KVPool size: usable pages plus the padding page
  int64_t bytes = 0;          // pool_slots * bytes_per_token
  std::string source;         // which flag or default decided the size, for the startup log
};

// Computes the pool size. Throws dpserve::Error naming the flag when both flags are given, when a
// value is invalid, or when the result holds less than one page or less than context_length
// tokens. max_total_tokens is rounded down to whole pages; kv_cache_memory must also pay for the
// padding page.
KVPoolSize size_kv_pool(const KVPoolBudget& budget);

}  // namespace dpserve
