#include "dpserve/mem_cache/kv_pool_size.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "dpserve/common/errors.h"

namespace dpserve {

int64_t kv_bytes_per_token(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim) {
  DPSERVE_CHECK(num_layers > 0 && num_kv_heads > 0 && head_dim > 0,
                "bad KV shape layers={} kv_heads={} head_dim={}", num_layers, num_kv_heads,
                head_dim);
  return 2 * num_layers * num_kv_heads * head_dim * static_cast<int64_t>(sizeof(float));
}

std::optional<int64_t> read_mem_available(const std::string& meminfo_path) {
  std::ifstream in(meminfo_path);
  if (!in) return std::nullopt;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream fields(line.substr(13));
    int64_t value = -1;
    std::string unit;
    fields >> value >> unit;
    if (!fields && !fields.eof()) return std::nullopt;
    if (value < 0) return std::nullopt;
    if (unit == "kB" || unit == "KB") return value * 1024;
    if (unit.empty()) return value;
    return std::nullopt;
  }
  return std::nullopt;
}

KVPoolSize size_kv_pool(const KVPoolBudget& b) {
  if (b.page_size < 1) throw_error("--page-size must be >= 1, got {}", b.page_size);
  DPSERVE_CHECK(b.bytes_per_token > 0, "bytes_per_token {} not set", b.bytes_per_token);
  if (b.max_total_tokens < 0) {
    throw_error("--max-total-tokens must be positive, got {}", b.max_total_tokens);
  }
  if (b.kv_cache_memory < 0) {
    throw_error("--kv-cache-memory must be positive, got {}", b.kv_cache_memory);
  }
  if (b.max_total_tokens > 0 && b.kv_cache_memory > 0) {
    throw_error(
        "--max-total-tokens ({}) and --kv-cache-memory ({}) both size the KV pool; give "
        "only one",
        b.max_total_tokens, b.kv_cache_memory);
  }
  const int64_t page_bytes = b.page_size * b.bytes_per_token;
  KVPoolSize r;
  r.page_size = b.page_size;
  std::string flag;
  if (b.max_total_tokens > 0) {
    flag = "--max-total-tokens";
    r.num_pages = b.max_total_tokens / b.page_size;
    r.source = fmt::format("--max-total-tokens {}", b.max_total_tokens);
  } else if (b.kv_cache_memory > 0) {
    flag = "--kv-cache-memory";
    r.num_pages = b.kv_cache_memory / page_bytes - 1;  // one page goes to padding
    r.source = fmt::format("--kv-cache-memory {} bytes", b.kv_cache_memory);
  } else {
    flag = "--max-total-tokens or --kv-cache-memory";
    const std::optional<int64_t> avail = b.mem_available ? b.mem_available : read_mem_available();
    if (!avail) {
      throw_error(
          "cannot read MemAvailable from /proc/meminfo to size the KV cache; pass "
          "--max-total-tokens or --kv-cache-memory");
    }
    if (!(b.mem_fraction > 0.0 && b.mem_fraction <= 1.0)) {
      throw_error("KV cache memory fraction must be in (0, 1], got {}", b.mem_fraction);
    }
    const auto bytes = static_cast<int64_t>(static_cast<double>(*avail) * b.mem_fraction);
    r.num_pages = bytes / page_bytes - 1;
    if (b.max_default_tokens > 0) {
      r.num_pages = std::min(r.num_pages, b.max_default_tokens / b.page_size);
    }
    r.source = fmt::format("{:.0f}% of MemAvailable ({} MiB)", b.mem_fraction * 100, *avail >> 20);
  }
  if (r.num_pages < 1) {
    throw_error(
        "KV cache too small: {} gives less than one page of {} tokens ({} bytes per "
        "token); raise {}",
        r.source, b.page_size, b.bytes_per_token, flag);
  }
  r.usable_tokens = r.num_pages * b.page_size;
  if (b.context_length > 0 && r.usable_tokens < b.context_length) {
    throw_error(
        "KV cache too small: {} gives {} tokens (page size {}), fewer than the context "
        "length {}; raise {} (at least {} tokens, {} bytes) or lower the context length",
        r.source, r.usable_tokens, b.page_size, b.context_length, flag,
        (b.context_length + b.page_size - 1) / b.page_size * b.page_size,
        ((b.context_length + b.page_size - 1) / b.page_size + 1) * page_bytes);
  }
  r.pool_slots = (r.num_pages + 1) * b.page_size;
  r.bytes = r.pool_slots * b.bytes_per_token;
  return r;
}

}  // namespace dpserve
