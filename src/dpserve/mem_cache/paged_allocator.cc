#include "dpserve/mem_cache/paged_allocator.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "dpserve/common/errors.h"

namespace dpserve {

PagedAllocator::PagedAllocator(int64_t num_pages, int64_t page_size)
    : num_pages_(num_pages), page_size_(page_size) {
  DPSERVE_CHECK(page_size >= 1, "page size {} must be >= 1", page_size);
  DPSERVE_CHECK(num_pages >= 1, "paged allocator needs at least one usable page, got {}",
                num_pages);
  DPSERVE_CHECK((num_pages + 1) * page_size <= INT32_MAX, "{} pages of {} slots overflow int32",
                num_pages, page_size);
  clear();
}

void PagedAllocator::clear() {
  const int64_t total_pages = num_pages_ + 1;
  free_pages_.resize(num_pages_);
  // Highest page at the bottom of the stack so that a fresh allocator hands out page 1 first.
  for (int64_t i = 0; i < num_pages_; ++i) free_pages_[i] = static_cast<int32_t>(num_pages_ - i);
  handed_.assign(total_pages, 0);
  live_.assign(total_pages, 0);
  page_free_.assign(total_pages, 1);
  page_free_[0] = 0;  // the padding page is never free nor handed out
  slot_live_.assign(total_pages * page_size_, 0);
  used_slots_ = 0;
}

void PagedAllocator::take_page(int64_t used, std::vector<int32_t>& out) {
  const int32_t page = free_pages_.back();
  free_pages_.pop_back();
  DPSERVE_CHECK(page_free_[page] && handed_[page] == 0 && live_[page] == 0,
                "page {} on the free stack is in use", page);
  page_free_[page] = 0;
  handed_[page] = static_cast<int32_t>(used);
  live_[page] = static_cast<int32_t>(used);
  const int32_t first = static_cast<int32_t>(page * page_size_);
  for (int32_t s = first; s < first + used; ++s) {
    slot_live_[s] = 1;
    out.push_back(s);
  }
  used_slots_ += used;
}

std::optional<std::vector<int32_t>> PagedAllocator::alloc(int64_t n) {
  DPSERVE_CHECK(n >= 0, "alloc of {} slots", n);
  const int64_t pages = (n + page_size_ - 1) / page_size_;
  if (pages > num_free_pages()) return std::nullopt;
  std::vector<int32_t> out;
  out.reserve(n);
  for (int64_t left = n; left > 0; left -= page_size_) take_page(std::min(left, page_size_), out);
  return out;
}

int64_t PagedAllocator::pages_needed_for_extend(int32_t last_slot, int64_t n) const {
  DPSERVE_CHECK(is_live(last_slot), "extending from slot {}, which is not live", last_slot);
  const int32_t page = page_of(last_slot);
  DPSERVE_CHECK(last_slot % page_size_ == handed_[page] - 1,
                "slot {} is not the last slot handed out from page {} ({} handed out)", last_slot,
                page, handed_[page]);
  const int64_t room = page_size_ - handed_[page];
  const int64_t rest = std::max<int64_t>(0, n - room);
  return (rest + page_size_ - 1) / page_size_;
}

std::optional<std::vector<int32_t>> PagedAllocator::alloc_extend(int32_t last_slot, int64_t n) {
  DPSERVE_CHECK(n >= 0, "alloc_extend of {} slots", n);
  const int64_t pages = pages_needed_for_extend(last_slot, n);
  if (pages > num_free_pages()) return std::nullopt;
  std::vector<int32_t> out;
  out.reserve(n);
  const int32_t page = page_of(last_slot);
  const int64_t tail = std::min<int64_t>(n, page_size_ - handed_[page]);
  for (int64_t i = 1; i <= tail; ++i) {
    const int32_t s = last_slot + static_cast<int32_t>(i);
    DPSERVE_CHECK(!slot_live_[s], "tail slot {} of page {} is already live", s, page);
    slot_live_[s] = 1;
    out.push_back(s);
  }
  handed_[page] += static_cast<int32_t>(tail);
  live_[page] += static_cast<int32_t>(tail);
  used_slots_ += tail;
  for (int64_t left = n - tail; left > 0; left -= page_size_) {
    take_page(std::min(left, page_size_), out);
  }
  return out;
}

void PagedAllocator::free(std::span<const int32_t> slots) {
  const int64_t limit = pool_slots();
  for (int32_t s : slots) {
    DPSERVE_CHECK(s >= page_size_ && s < limit, "freeing slot {} outside the usable [{}, {})", s,
                  page_size_, limit);
    DPSERVE_CHECK(slot_live_[s], "double free of KV slot {}", s);
    slot_live_[s] = 0;
    --used_slots_;
    const int32_t page = page_of(s);
    if (--live_[page] == 0) {
      handed_[page] = 0;
      page_free_[page] = 1;
      free_pages_.push_back(page);
    }
  }
}

bool PagedAllocator::is_live(int32_t slot) const {
  return slot >= 0 && slot < pool_slots() && slot_live_[slot] != 0;
}

std::string PagedAllocator::leak_report() const {
  if (num_free_pages() == num_pages_ && used_slots_ == 0) return {};
  constexpr int kMaxListed = 8;
  std::string msg = fmt::format(
      "KV pool not idle: {} of {} pages missing from the free list ({} live slots, page size {})",
      num_pages_ - num_free_pages(), num_pages_, used_slots_, page_size_);
  int listed = 0;
  for (int64_t p = 1; p <= num_pages_; ++p) {
    if (page_free_[p]) continue;
    if (listed == kMaxListed) {
      msg += "; ...";
      break;
    }
    std::vector<int64_t> live;
    for (int64_t s = p * page_size_; s < (p + 1) * page_size_; ++s) {
      if (slot_live_[s]) live.push_back(s);
    }
    msg += fmt::format("; page {} (slots {}..{}, {} handed out) live slots [{}]", p, p * page_size_,
                       (p + 1) * page_size_ - 1, handed_[p], fmt::join(live, ", "));
    ++listed;
  }
  return msg;
}

void PagedAllocator::check_invariants() const {
  std::vector<uint8_t> on_stack(num_pages_ + 1, 0);
  for (int32_t p : free_pages_) {
    DPSERVE_CHECK(p >= 1 && p <= num_pages_, "free stack holds page {} out of range", p);
    DPSERVE_CHECK(!on_stack[p], "page {} is twice on the free stack", p);
    on_stack[p] = 1;
  }
  int64_t live_total = 0;
  for (int64_t p = 0; p <= num_pages_; ++p) {
    DPSERVE_CHECK(on_stack[p] == page_free_[p], "page {} free flag {} but on stack {}", p,
                  page_free_[p], on_stack[p]);
    int64_t live = 0;
    for (int64_t o = 0; o < page_size_; ++o) {
      const bool l = slot_live_[p * page_size_ + o] != 0;
      DPSERVE_CHECK(!l || o < handed_[p], "slot {} live beyond the {} handed out of page {}",
                    p * page_size_ + o, handed_[p], p);
      live += l;
    }
    DPSERVE_CHECK(live == live_[p], "page {} counts {} live slots, bits say {}", p, live_[p], live);
    DPSERVE_CHECK(page_free_[p] || p == 0 || live > 0, "used page {} has no live slot", p);
    DPSERVE_CHECK(!page_free_[p] || handed_[p] == 0, "free page {} has {} slots handed out", p,
                  handed_[p]);
    live_total += live;
  }
  DPSERVE_CHECK(live_total == used_slots_, "used_slots {} but {} live bits", used_slots_,
                live_total);
}

}  // namespace dpserve
