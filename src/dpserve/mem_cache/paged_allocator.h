#pragma once
// Paged token-to-KV slot allocator (the idea of SGLang's TokenToKVPoolAllocator and
// PagedTokenToKVPoolAllocator): the KV pool's token slots are grouped in pages of `page_size`
// consecutive slots, and pages are handed out and returned in O(1) through a free-page stack.
//
// Layout. Page p holds slots [p * page_size, (p + 1) * page_size). Page 0 is reserved as the
// padding page and is never handed out: slot 0 (padding_slot()) is where a forward may write the
// K/V of padding tokens without clobbering a live sequence. The usable pages are 1..num_pages(), so
// the KVPool backing this allocator needs pool_slots() = (num_pages() + 1) * page_size slots.
//
// Page tracking. A page belongs to one sequence. Within a page the slots are always handed out in
// order from offset 0: `alloc` starts a new page for a new sequence, and `alloc_extend` continues
// the last page of an existing sequence before it takes new pages, so the slots of a sequence are
// page-contiguous (token i of a sequence whose first slot starts a page sits at page offset
// i % page_size). Per page the allocator counts the slots handed out (a prefix of the page) and
// the slots still live (handed out, not yet freed); each slot has a live bit. `free(slots)`
// releases individual slots (a double free is an invariant failure), and a page goes back on the
// free stack as soon as its last live slot is released, whether or not the page was ever filled.
// With page_size 1 this is plain token-granular allocation.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace dpserve {

class PagedAllocator {
 public:
  // num_pages: usable pages (the reserved padding page comes on top); page_size: slots per page.
  PagedAllocator(int64_t num_pages, int64_t page_size);

  // Slots per page (1 = token granularity).
  int64_t page_size() const { return page_size_; }
  // Usable pages managed (the padding page 0 excluded).
  int64_t num_pages() const { return num_pages_; }
  // Pages currently on the free stack.
  int64_t num_free_pages() const { return static_cast<int64_t>(free_pages_.size()); }
  // Pages handed out and not yet returned.
  int64_t num_used_pages() const { return num_pages_ - num_free_pages(); }
  // Tokens that fresh allocations can still get: free pages times page_size.
  int64_t available_tokens() const { return num_free_pages() * page_size_; }
  // Usable token capacity: num_pages * page_size.
  int64_t capacity_tokens() const { return num_pages_ * page_size_; }
  // Live slots (handed out and not freed), for accounting checks against the radix cache.
  int64_t used_slots() const { return used_slots_; }
  // Slots the backing KVPool must have: the padding page plus every usable page.
  int64_t pool_slots() const { return (num_pages_ + 1) * page_size_; }
  // The reserved slot that padding tokens write their K/V to (never handed out).
  static constexpr int32_t padding_slot() { return 0; }

  // n slots for a new sequence in ceil(n / page_size) fresh pages, starting at a page boundary;
  // nullopt (and no change) when there are not enough free pages. n == 0 gives an empty list.
  std::optional<std::vector<int32_t>> alloc(int64_t n);
  // n more slots for the sequence whose last slot is `last_slot`: first the unused tail of
  // last_slot's page, then fresh pages; nullopt (and no change) when the pages do not suffice.
  // last_slot must be live and be the last slot handed out from its page.
  std::optional<std::vector<int32_t>> alloc_extend(int32_t last_slot, int64_t n);
  // Releases live slots; a page returns to the free stack when its last live slot is released.
  void free(std::span<const int32_t> slots);
  // Returns every page (flush_cache when idle); outstanding slot lists become invalid.
  void clear();

  // True if `slot` is handed out and not yet freed.
  bool is_live(int32_t slot) const;
  // Number of pages `alloc_extend(last_slot, n)` would take off the free stack.
  int64_t pages_needed_for_extend(int32_t last_slot, int64_t n) const;

  // True when every usable page is back on the free stack (the idle-time leak check).
  bool check_idle() const { return leak_report().empty(); }
  // Empty when idle; otherwise names how many pages are missing and, for the first few, their
  // page id, slot range and which slots are still live.
  std::string leak_report() const;
  // Verifies the internal bookkeeping (free stack vs page states vs live bits); aborts on a bug.
  void check_invariants() const;

 private:
  int32_t page_of(int32_t slot) const { return static_cast<int32_t>(slot / page_size_); }
  // Pops a free page, marks its first `used` slots live, appends them to out.
  void take_page(int64_t used, std::vector<int32_t>& out);

  int64_t num_pages_;
  int64_t page_size_;
  int64_t used_slots_ = 0;
  std::vector<int32_t> free_pages_;  // stack of free page ids; the back is handed out first
  std::vector<int32_t> handed_;      // per page: slots handed out, always a prefix of the page
  std::vector<int32_t> live_;        // per page: handed-out slots not yet freed
  std::vector<uint8_t> page_free_;   // per page: 1 while on the free stack
  std::vector<uint8_t> slot_live_;   // per slot: 1 while handed out and not freed
};

}  // namespace dpserve
