// RadixCache: matching, splitting, page alignment, locks, LRU eviction, request helpers and the
// disabled pass-through mode.

#include <algorithm>
#include <numeric>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dpserve/mem_cache/radix_cache.h"

namespace dpserve {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Tokens = std::vector<int32_t>;

Tokens iota_tokens(int n, int start) {
  Tokens t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}

// All live slots of an allocator.
std::set<int32_t> live_slots(const PagedAllocator& a) {
  std::set<int32_t> out;
  for (int32_t s = 0; s < a.pool_slots(); ++s) {
    if (a.is_live(s)) out.insert(s);
  }
  return out;
}

// Allocates slots for tokens and inserts them; frees the caller's duplicates (none had come from
// the tree) and unaligned tail like a finished request would. Returns the slots used.
Tokens insert_fresh(RadixCache& c, PagedAllocator& a, const Tokens& tokens) {
  Tokens slots = *a.alloc(static_cast<int64_t>(tokens.size()));
  const int64_t present = c.insert(tokens, slots);
  const int64_t aligned = static_cast<int64_t>(tokens.size()) / c.page_size() * c.page_size();
  a.free(std::span<const int32_t>(slots).first(present));
  a.free(std::span<const int32_t>(slots).subspan(aligned));
  return slots;
}

TEST(RadixCache, EmptyTreeMatchesNothing) {
  PagedAllocator a(16, 1);
  RadixCache c(a);
  PrefixMatch m = c.match_prefix(Tokens{1, 2, 3});
  EXPECT_TRUE(m.slots.empty());
  EXPECT_EQ(m.last_node, c.root());
  EXPECT_EQ(c.total_size(), 0);
  c.check_invariants();
}

TEST(RadixCache, InsertAndMatchSharedPrefixes) {
  PagedAllocator a(64, 1);
  RadixCache c(a);
  Tokens s1 = *a.alloc(5);
  EXPECT_EQ(c.insert(Tokens{1, 2, 3, 4, 5}, s1), 0);
  Tokens s2 = *a.alloc(5);
  EXPECT_EQ(c.insert(Tokens{1, 2, 3, 9, 9}, s2), 3);  // [1,2,3] already cached
  a.free(std::span<const int32_t>(s2).first(3));      // caller frees its duplicates
  EXPECT_EQ(c.total_size(), 7);
  EXPECT_EQ(c.evictable_size(), 7);
  EXPECT_EQ(c.num_nodes(), 3);  // [1,2,3] -> {[4,5], [9,9]}
  c.check_invariants();

  EXPECT_THAT(c.match_prefix(Tokens{1, 2, 3, 4, 5, 6}).slots, ElementsAreArray(s1));
  EXPECT_THAT(c.match_prefix(Tokens{1, 2, 3, 9}).slots, ElementsAre(s1[0], s1[1], s1[2], s2[3]));
  EXPECT_THAT(c.match_prefix(Tokens{1, 2}).slots, ElementsAre(s1[0], s1[1]));
  EXPECT_TRUE(c.match_prefix(Tokens{7, 1, 2}).slots.empty());
  EXPECT_EQ(c.insert(Tokens{1, 2, 3, 4, 5}, s1), 5);  // re-inserting the tree's own slots
  c.check_invariants();
  EXPECT_EQ(a.used_slots(), c.total_size());
}

TEST(RadixCache, MatchEndingInsideAnEdgeSplitsIt) {
  PagedAllocator a(64, 1);
  RadixCache c(a);
  Tokens s = insert_fresh(c, a, iota_tokens(6, 1));  // one node [1..6]
  EXPECT_EQ(c.num_nodes(), 1);
  PrefixMatch m = c.match_prefix(Tokens{1, 2, 3, 42});
  EXPECT_THAT(m.slots, ElementsAre(s[0], s[1], s[2]));
  EXPECT_EQ(c.num_nodes(), 2);  // [1,2,3] -> [4,5,6]
  c.inc_lock_ref(m.last_node);  // locks exactly the matched 3 tokens
  EXPECT_EQ(c.protected_size(), 3);
  EXPECT_EQ(c.evictable_size(), 3);
  c.check_invariants();
  std::vector<int32_t> freed;
  EXPECT_EQ(c.evict(100, &freed), 3);
  EXPECT_THAT(freed, ElementsAre(s[3], s[4], s[5]));
  EXPECT_THAT(c.match_prefix(iota_tokens(6, 1)).slots, ElementsAre(s[0], s[1], s[2]));
  c.dec_lock_ref(m.last_node);
  EXPECT_EQ(c.evict(100), 3);
  EXPECT_TRUE(a.check_idle()) << a.leak_report();
  c.check_invariants();
}

TEST(RadixCache, InsertDivergingInsideAnEdgeSplitsIt) {
  PagedAllocator a(64, 1);
  RadixCache c(a);
  insert_fresh(c, a, Tokens{5, 6, 7, 8});
  insert_fresh(c, a, Tokens{5, 6, 0, 0, 0});
  EXPECT_EQ(c.num_nodes(), 3);
  EXPECT_EQ(c.total_size(), 7);
  EXPECT_THAT(c.pretty_print(), HasSubstr("tokens=[5,6]"));
  EXPECT_THAT(c.pretty_print(), HasSubstr("tokens=[7,8]"));
  EXPECT_THAT(c.pretty_print(), HasSubstr("tokens=[0,0,0]"));
  c.check_invariants();
}

TEST(RadixCache, PageSizeFourMatchesWholePagesOnly) {
  PagedAllocator a(32, 4);
  RadixCache c(a);
  const Tokens prompt = iota_tokens(10, 100);
  CacheReq r;
  r.token_ids = prompt;
  EXPECT_EQ(c.match_and_lock(r, 9), 0);
  r.kv_slots = *a.alloc(10);
  c.cache_finished_req(r);  // 8 tokens cached, tail of 2 freed
  EXPECT_EQ(c.total_size(), 8);
  EXPECT_EQ(a.used_slots(), 8);
  EXPECT_EQ(c.match_prefix(prompt).slots.size(), 8u);  // a 10-token prompt with page 4 matches 8
  EXPECT_EQ(c.match_prefix(std::span<const int32_t>(prompt).first(7)).slots.size(), 4u);
  Tokens other = prompt;
  other[6] = -1;  // differs inside the second page
  EXPECT_EQ(c.match_prefix(other).slots.size(), 4u);
  EXPECT_EQ(c.num_nodes(), 2);  // split at the page boundary 4
  c.check_invariants();
}

TEST(RadixCache, PageSizeSixteen) {
  PagedAllocator a(16, 16);
  RadixCache c(a);
  const Tokens prompt = iota_tokens(40, 0);
  Tokens s = insert_fresh(c, a, prompt);  // 32 cached
  EXPECT_EQ(c.total_size(), 32);
  EXPECT_THAT(c.match_prefix(prompt).slots,
              ElementsAreArray(std::vector<int32_t>(s.begin(), s.begin() + 32)));
  EXPECT_EQ(c.match_prefix(std::span<const int32_t>(prompt).first(31)).slots.size(), 16u);
  Tokens other = prompt;
  other[20] = 999;
  Tokens s2 = *a.alloc(40);
  EXPECT_EQ(c.insert(other, s2), 16);  // the first page is shared, the second diverges
  a.free(std::span<const int32_t>(s2).first(16));
  a.free(std::span<const int32_t>(s2).subspan(32));
  EXPECT_EQ(c.total_size(), 48);
  EXPECT_EQ(a.used_slots(), 48);
  EXPECT_EQ(c.match_prefix(other).slots.size(), 32u);
  c.check_invariants();
}

TEST(RadixCache, LockedNodesAreNeverEvicted) {
  PagedAllocator a(64, 1);
  RadixCache c(a);
  Tokens sa = insert_fresh(c, a, Tokens{1, 1, 1});
  Tokens sb = insert_fresh(c, a, Tokens{2, 2, 2, 2});
  PrefixMatch m = c.match_prefix(Tokens{1, 1, 1});
  c.inc_lock_ref(m.last_node);
  c.inc_lock_ref(m.last_node);  // two requests share it
  EXPECT_EQ(c.protected_size(), 3);
  std::vector<int32_t> freed;
  EXPECT_EQ(c.evict(1000, &freed), 4);
  EXPECT_THAT(freed, ElementsAreArray(sb));
  EXPECT_EQ(c.evict(1000), 0);
  c.dec_lock_ref(m.last_node);
  EXPECT_EQ(c.evict(1000), 0);  // still locked once
  c.dec_lock_ref(m.last_node);
  EXPECT_EQ(c.protected_size(), 0);
  EXPECT_EQ(c.evict(1000), 3);
  EXPECT_TRUE(a.check_idle()) << a.leak_report();
  insert_fresh(c, a, Tokens{1});
  RadixNode* n = c.match_prefix(Tokens{1}).last_node;
  EXPECT_DEATH(c.dec_lock_ref(n), "");  // a lock ref below zero
  c.inc_lock_ref(n);
  EXPECT_DEATH(c.reset(), "");  // reset while a request holds a lock
}

TEST(RadixCache, EvictsLeastRecentlyUsedLeafFirst) {
  PagedAllocator a(64, 1);
  RadixCache c(a);
  Tokens sa = insert_fresh(c, a, Tokens{1, 1});
  Tokens sb = insert_fresh(c, a, Tokens{2, 2});
  Tokens sc = insert_fresh(c, a, Tokens{3, 3});
  c.match_prefix(Tokens{1, 1});  // touch A: B is now the oldest, then C, then A
  std::vector<int32_t> freed;
  EXPECT_EQ(c.evict(1, &freed), 2);  // whole leaves go
  EXPECT_THAT(freed, ElementsAreArray(sb));
  c.match_prefix(Tokens{3, 3});  // C is now the newest
  freed.clear();
  EXPECT_EQ(c.evict(2, &freed), 2);
  EXPECT_THAT(freed, ElementsAreArray(sa));
  // A partial match touches only the matched part: the split-off tail of C keeps its old time.
  Tokens sd = insert_fresh(c, a, Tokens{4, 4});
  c.match_prefix(Tokens{3});  // C = [3] (newest) -> [3] (older than D)
  EXPECT_EQ(c.num_nodes(), 3);
  freed.clear();
  EXPECT_EQ(c.evict(1, &freed), 1);
  EXPECT_THAT(freed, ElementsAre(sc[1]));
  freed.clear();
  EXPECT_EQ(c.evict(1, &freed), 2);
  EXPECT_THAT(freed, ElementsAreArray(sd));
  freed.clear();
  EXPECT_EQ(c.evict(1, &freed), 1);
  EXPECT_THAT(freed, ElementsAre(sc[0]));
  EXPECT_TRUE(a.check_idle()) << a.leak_report();
}

TEST(RadixCache, ParentsBecomeEvictableAfterTheirChildren) {
  PagedAllocator a(64, 1);
  RadixCache c(a);
  Tokens s1 = insert_fresh(c, a, Tokens{1, 2, 3, 4});
  Tokens s2 = insert_fresh(c, a, Tokens{1, 2, 5, 6});
  EXPECT_EQ(c.num_nodes(), 3);
  std::vector<int32_t> freed;
  EXPECT_EQ(c.evict(5, &freed), 6);
  EXPECT_THAT(freed, ElementsAre(s1[2], s1[3], s2[2], s2[3], s1[0], s1[1]));
  EXPECT_EQ(c.num_nodes(), 0);
  c.check_invariants();
}

TEST(RadixCache, EvictFreesExactlyTheReturnedSlots) {
  PagedAllocator a(64, 4);
  RadixCache c(a);
  for (int i = 0; i < 6; ++i) insert_fresh(c, a, iota_tokens(9 + i, i * 3));
  c.check_invariants();
  const std::set<int32_t> before = live_slots(a);
  EXPECT_EQ(static_cast<int64_t>(before.size()), c.total_size());
  std::vector<int32_t> freed;
  const int64_t n = c.evict(10, &freed);
  EXPECT_GE(n, 10);
  EXPECT_EQ(n, static_cast<int64_t>(freed.size()));
  const std::set<int32_t> after = live_slots(a);
  std::set<int32_t> gone;
  std::set_difference(before.begin(), before.end(), after.begin(), after.end(),
                      std::inserter(gone, gone.end()));
  EXPECT_EQ(gone, std::set<int32_t>(freed.begin(), freed.end()));
  EXPECT_EQ(static_cast<int64_t>(after.size()), c.total_size());
  c.check_invariants();
}

TEST(RadixCache, MakeRoomEvictsOnlyWhatIsNeeded) {
  PagedAllocator a(8, 1);
  RadixCache c(a);
  insert_fresh(c, a, Tokens{1, 1, 1});
  insert_fresh(c, a, Tokens{2, 2, 2});
  EXPECT_EQ(a.available_tokens(), 2);
  EXPECT_TRUE(c.make_room(2));
  EXPECT_EQ(c.total_size(), 6);
  EXPECT_TRUE(c.make_room(4));
  EXPECT_EQ(c.total_size(), 3);
  EXPECT_FALSE(c.make_room(9));
  EXPECT_EQ(c.total_size(), 0);
}

TEST(RadixCache, ChunkedPrefillThenFinishWithPageFour) {
  PagedAllocator a(32, 4);
  RadixCache c(a);
  CacheReq r;
  r.token_ids = iota_tokens(11, 50);
  EXPECT_EQ(c.match_and_lock(r, 10), 0);
  EXPECT_EQ(r.last_node, c.root());
  r.kv_slots = *a.alloc(6);  // chunk 1: 6 tokens, page 1 full + 2 in page 2
  c.cache_unfinished_req(r);
  EXPECT_EQ(r.prefix_len, 4);
  EXPECT_EQ(c.protected_size(), 4);
  EXPECT_EQ(c.total_size(), 4);
  auto more = *a.alloc_extend(r.kv_slots.back(), 5);  // chunk 2 continues page 2
  r.kv_slots.insert(r.kv_slots.end(), more.begin(), more.end());
  EXPECT_EQ(r.kv_slots[6], r.kv_slots[5] + 1);
  c.cache_unfinished_req(r);
  EXPECT_EQ(r.prefix_len, 8);
  EXPECT_EQ(c.protected_size(), 8);
  c.check_invariants();
  EXPECT_EQ(c.evict(100), 0);
  c.cache_finished_req(r);
  EXPECT_EQ(r.last_node, nullptr);
  EXPECT_TRUE(r.kv_slots.empty());
  EXPECT_EQ(c.protected_size(), 0);
  EXPECT_EQ(c.total_size(), 8);
  EXPECT_EQ(a.used_slots(), 8);  // the tail page of 3 is back
  c.reset();
  EXPECT_TRUE(a.check_idle()) << a.leak_report();
}

TEST(RadixCache, ConcurrentSamePromptFreesDuplicates) {
  PagedAllocator a(32, 2);
  RadixCache c(a);
  const Tokens prompt = iota_tokens(9, 7);
  CacheReq x, y;
  x.token_ids = y.token_ids = prompt;
  EXPECT_EQ(c.match_and_lock(x, 8), 0);
  EXPECT_EQ(c.match_and_lock(y, 8), 0);
  x.kv_slots = *a.alloc(9);
  y.kv_slots = *a.alloc(9);
  c.cache_unfinished_req(x);  // x's first 8 are the tree's now
  const Tokens x_slots = x.kv_slots;
  c.cache_unfinished_req(y);  // y's 8 are duplicates: freed, y switches to x's
  EXPECT_THAT(std::vector<int32_t>(y.kv_slots.begin(), y.kv_slots.begin() + 8),
              ElementsAreArray(std::vector<int32_t>(x_slots.begin(), x_slots.begin() + 8)));
  EXPECT_EQ(a.used_slots(), 8 + 1 + 1);  // the tree's 8 plus each request's own tail
  c.check_invariants();
  c.cache_finished_req(x);
  c.cache_finished_req(y);
  EXPECT_EQ(a.used_slots(), 8);
  CacheReq z;
  z.token_ids = prompt;
  EXPECT_EQ(c.match_and_lock(z, 8), 8);  // cached_tokens of a third request
  c.release_req(z);
  c.reset();
  EXPECT_TRUE(a.check_idle()) << a.leak_report();
}

TEST(RadixCache, ReleaseReqFreesOwnSlotsOnly) {
  PagedAllocator a(32, 1);
  RadixCache c(a);
  insert_fresh(c, a, Tokens{1, 2, 3});
  CacheReq r;
  r.token_ids = Tokens{1, 2, 3, 4, 5};
  EXPECT_EQ(c.match_and_lock(r, 4), 3);
  auto own = *a.alloc(2);
  r.kv_slots.insert(r.kv_slots.end(), own.begin(), own.end());
  EXPECT_EQ(c.protected_size(), 3);
  c.release_req(r);  // retraction: nothing inserted
  EXPECT_EQ(c.total_size(), 3);
  EXPECT_EQ(c.protected_size(), 0);
  EXPECT_EQ(a.used_slots(), 3);
}

TEST(RadixCache, DisabledModeIsAPassThrough) {
  PagedAllocator a(32, 4);
  RadixCache c(a, /*disabled=*/true);
  EXPECT_TRUE(c.disabled());
  CacheReq r;
  r.token_ids = iota_tokens(10, 0);
  EXPECT_EQ(c.match_and_lock(r, 9), 0);
  r.kv_slots = *a.alloc(6);
  c.cache_unfinished_req(r);  // keeps its slots
  EXPECT_EQ(r.prefix_len, 0);
  EXPECT_EQ(r.kv_slots.size(), 6u);
  r.kv_slots.push_back(a.alloc_extend(r.kv_slots.back(), 1)->at(0));
  c.cache_finished_req(r);
  EXPECT_EQ(c.total_size(), 0);
  EXPECT_TRUE(a.check_idle()) << a.leak_report();
  CacheReq again;
  again.token_ids = iota_tokens(10, 0);
  EXPECT_EQ(c.match_and_lock(again, 9), 0);  // nothing was cached
  EXPECT_TRUE(c.match_prefix(iota_tokens(10, 0)).slots.empty());
  EXPECT_EQ(c.evict(100), 0);
  c.release_req(again);
  c.check_invariants();
  EXPECT_DEATH(c.insert(Tokens{1, 2, 3, 4}, Tokens{4, 5, 6, 7}), "");
}

TEST(RadixCache, InsertingAFreeSlotIsCaught) {
  PagedAllocator a(32, 1);
  RadixCache c(a);
  EXPECT_DEATH(c.insert(Tokens{1, 2}, Tokens{5, 6}), "");  // never allocated
}

}  // namespace
}  // namespace dpserve
