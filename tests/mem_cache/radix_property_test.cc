// Randomized property test of RadixCache + PagedAllocator against a brute-force reference: the set
// of cached prefixes, one entry per cached token position (keyed by the token prefix ending there)
// with its slot and last access time. Thousands of random operations (raw inserts, matches, locks
// and evictions, and whole request lifecycles through the request helpers); after each one the
// tree's answers equal the reference's and allocator + tree + requests account for the pool.

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "dpserve/mem_cache/radix_cache.h"

namespace dpserve {
namespace {

using Tokens = std::vector<int32_t>;

// The brute-force model: every cached page, keyed by the full token prefix ending with it (a
// page is the unit of matching, so two pages that share only some tokens are distinct entries).
class RefCache {
 public:
  explicit RefCache(int64_t page) : page_(page) {}

  struct Entry {
    Tokens slots;  // page_ slots
    uint64_t time;
  };

  // Longest cached page-aligned prefix; touches it.
  Tokens match(const Tokens& tokens) {
    const uint64_t now = ++clock_;
    Tokens slots;
    for (size_t end = page_; end <= tokens.size(); end += page_) {
      auto it = pos_.find(Tokens(tokens.begin(), tokens.begin() + end));
      if (it == pos_.end()) break;
      it->second.time = now;
      slots.insert(slots.end(), it->second.slots.begin(), it->second.slots.end());
    }
    return slots;
  }

  // Inserts the aligned part; returns the length already cached. Touches the whole aligned part.
  int64_t insert(const Tokens& tokens, const Tokens& slots) {
    const uint64_t now = ++clock_;
    int64_t present = 0;
    bool still_present = true;
    for (size_t end = page_; end <= tokens.size(); end += page_) {
      const Tokens key(tokens.begin(), tokens.begin() + end);
      auto it = pos_.find(key);
      if (it == pos_.end()) {
        still_present = false;
        pos_[key] = Entry{Tokens(slots.begin() + end - page_, slots.begin() + end), now};
      } else {
        EXPECT_TRUE(still_present) << "reference lost prefix closure";
        present += page_;
        it->second.time = now;
      }
    }
    return present;
  }

  // True if the page ending `key` lies on a held lock's path.
  static bool locked(const Tokens& key, const std::multiset<Tokens>& locks) {
    for (const Tokens& l : locks) {
      if (l.size() >= key.size() && std::equal(key.begin(), key.end(), l.begin())) return true;
    }
    return false;
  }

  // Cached tokens, and those no lock covers.
  int64_t total() const { return static_cast<int64_t>(pos_.size()) * page_; }
  int64_t evictable(const std::multiset<Tokens>& locks) const {
    int64_t n = 0;
    for (const auto& [k, e] : pos_) n += locked(k, locks) ? 0 : page_;
    return n;
  }

  // Applies an eviction the tree reported (the freed slots) and checks it was a legal LRU one.
  void apply_eviction(const Tokens& freed, int64_t asked, const std::multiset<Tokens>& locks) {
    const int64_t evictable_before = evictable(locks);
    const std::set<int32_t> gone(freed.begin(), freed.end());
    ASSERT_EQ(gone.size(), freed.size()) << "a slot freed twice";
    uint64_t max_gone_time = 0;
    int64_t removed = 0;
    for (auto it = pos_.begin(); it != pos_.end();) {
      const int64_t hits = std::count_if(it->second.slots.begin(), it->second.slots.end(),
                                         [&](int32_t s) { return gone.count(s) > 0; });
      ASSERT_TRUE(hits == 0 || hits == page_) << "a page evicted in part";
      if (hits) {
        ASSERT_FALSE(locked(it->first, locks)) << "evicted a locked page";
        max_gone_time = std::max(max_gone_time, it->second.time);
        it = pos_.erase(it);
        removed += page_;
      } else {
        ++it;
      }
    }
    ASSERT_EQ(removed, static_cast<int64_t>(freed.size())) << "freed slots not in the cache";
    ASSERT_GE(removed, std::min(asked, evictable_before));
    // Still prefix-closed, and every remaining unlocked leaf is at least as recent as anything
    // evicted (LRU over leaves; parents are never older than their children).
    std::set<Tokens> parents;
    for (const auto& [k, e] : pos_) {
      if (static_cast<int64_t>(k.size()) > page_) {
        Tokens p(k.begin(), k.end() - page_);
        ASSERT_TRUE(pos_.count(p)) << "eviction left a hole";
        parents.insert(p);
      }
    }
    for (const auto& [k, e] : pos_) {
      if (!parents.count(k) && !locked(k, locks) && removed > 0) {
        ASSERT_GE(e.time, max_gone_time) << "evicted a leaf newer than a remaining one";
      }
    }
    if (removed < asked) {
      ASSERT_EQ(evictable(locks), 0);
    }
  }

 private:
  int64_t page_;
  uint64_t clock_ = 0;
  std::map<Tokens, Entry> pos_;
};

struct ActiveReq {
  CacheReq req;
  Tokens locked_prefix;  // tokens of the path its lock covers (what the reference records)
};

class RadixProperty : public ::testing::TestWithParam<int64_t> {};

TEST_P(RadixProperty, MatchesBruteForceReference) {
  const int64_t page = GetParam();
  const int64_t num_pages = page >= 16 ? 12 : 48 / page;  // small: memory pressure
  std::mt19937 rng(20240917 + static_cast<uint32_t>(page));
  auto rnd = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  PagedAllocator alloc(num_pages, page);
  RadixCache cache(alloc);
  RefCache ref(page);
  std::multiset<Tokens> locks;                     // every held lock's path
  std::vector<std::pair<RadixNode*, Tokens>> raw;  // raw inc_lock_ref holds
  std::vector<ActiveReq> reqs;
  std::vector<Tokens> bases;
  for (int i = 0; i < 5; ++i) {
    Tokens b(rnd(0, std::max<int64_t>(3 * page, 12)));
    for (auto& t : b) t = static_cast<int32_t>(rnd(0, 2));
    bases.push_back(b);
  }
  auto random_tokens = [&](int64_t max_len) {
    Tokens t = rnd(0, 1) ? bases[rnd(0, bases.size() - 1)] : Tokens{};
    const int64_t extra = rnd(1, std::max<int64_t>(max_len, 24));
    for (int64_t i = 0; i < extra; ++i) t.push_back(static_cast<int32_t>(rnd(0, 2)));
    return t;
  };
  std::map<std::string, int> stats;  // coverage: the interesting cases must actually happen
  auto evict = [&](int64_t k) {
    Tokens freed;
    const int64_t n = cache.evict(k, &freed);
    ASSERT_EQ(n, static_cast<int64_t>(freed.size()));
    for (int32_t s : freed) ASSERT_FALSE(alloc.is_live(s));
    ref.apply_eviction(freed, k, locks);
    if (!freed.empty()) ++stats["evictions that freed"];
  };
  auto check_slots_contiguous = [&](const Tokens& s) {
    for (size_t i = 0; i < s.size(); ++i) {
      ASSERT_EQ(s[i] % page, static_cast<int64_t>(i) % page);
      if (i % page) {
        ASSERT_EQ(s[i], s[i - 1] + 1);
      }
    }
  };
  // Grows a request by up to `n` computed tokens, evicting for room; false if the pool is full.
  auto grow = [&](ActiveReq& a, int64_t n) {
    CacheReq& r = a.req;
    n = std::min<int64_t>(n, r.token_ids.size() - r.kv_slots.size());
    if (n <= 0) return true;
    const int64_t pages = r.kv_slots.empty() ? (n + page - 1) / page
                                             : alloc.pages_needed_for_extend(r.kv_slots.back(), n);
    if (pages > alloc.num_free_pages()) evict((pages - alloc.num_free_pages()) * page);
    auto s = r.kv_slots.empty() ? alloc.alloc(n) : alloc.alloc_extend(r.kv_slots.back(), n);
    if (!s) return false;
    r.kv_slots.insert(r.kv_slots.end(), s->begin(), s->end());
    return true;
  };
  auto unlock = [&](const Tokens& path) { locks.erase(locks.find(path)); };

  const int kOps = 6000;
  for (int op = 0; op < kOps; ++op) {
    const int64_t kind = rnd(0, 9);
    if (kind == 0 && reqs.size() < 8) {  // admit a request
      ActiveReq a;
      a.req.token_ids = random_tokens(std::max<int64_t>(6 * page, 40));
      const int64_t max_prefix = static_cast<int64_t>(a.req.token_ids.size()) - 1;
      const Tokens want =
          ref.match(Tokens(a.req.token_ids.begin(), a.req.token_ids.begin() + max_prefix));
      ASSERT_EQ(cache.match_and_lock(a.req, max_prefix), static_cast<int64_t>(want.size()));
      if (!want.empty()) ++stats["admissions with cached tokens"];
      ASSERT_EQ(a.req.kv_slots, want);
      a.locked_prefix.assign(a.req.token_ids.begin(), a.req.token_ids.begin() + want.size());
      locks.insert(a.locked_prefix);
      reqs.push_back(std::move(a));
    } else if (kind <= 2 && !reqs.empty()) {  // a prefill chunk, maybe shared
      ActiveReq& a = reqs[rnd(0, reqs.size() - 1)];
      if (!grow(a, rnd(1, 3 * page))) {
        unlock(a.locked_prefix);
        cache.release_req(a.req);  // out of memory: abort
        ++stats["aborts for memory"];
        reqs.erase(reqs.begin() + (&a - reqs.data()));
      } else if (rnd(0, 1)) {
        CacheReq& r = a.req;
        const int64_t len = static_cast<int64_t>(r.kv_slots.size()) / page * page;
        if (len > r.prefix_len) {
          const Tokens toks(r.token_ids.begin(), r.token_ids.begin() + len);
          ref.insert(toks, r.kv_slots);
          const Tokens want = ref.match(toks);
          cache.cache_unfinished_req(r);
          ASSERT_EQ(Tokens(r.kv_slots.begin(), r.kv_slots.begin() + len), want);
          ASSERT_EQ(r.prefix_len, len);
          ++stats["chunks cached"];
          unlock(a.locked_prefix);
          a.locked_prefix = toks;
          locks.insert(toks);
        } else {
          cache.cache_unfinished_req(r);  // nothing new: no change
          ASSERT_EQ(r.prefix_len, static_cast<int64_t>(a.locked_prefix.size()));
        }
      }
      for (const ActiveReq& q : reqs) check_slots_contiguous(q.req.kv_slots);
    } else if (kind == 3 && !reqs.empty()) {  // finish or abort
      const size_t i = rnd(0, reqs.size() - 1);
      CacheReq& r = reqs[i].req;
      unlock(reqs[i].locked_prefix);
      if (rnd(0, 3)) {
        const int64_t len = static_cast<int64_t>(r.kv_slots.size()) / page * page;
        ref.insert(Tokens(r.token_ids.begin(), r.token_ids.begin() + len), r.kv_slots);
        cache.cache_finished_req(r);
      } else {
        cache.release_req(r);
      }
      ASSERT_EQ(r.last_node, nullptr);
      reqs.erase(reqs.begin() + static_cast<ptrdiff_t>(i));
    } else if (kind == 4) {  // raw insert of fresh slots
      const Tokens t = random_tokens(4 * page);
      const int64_t len = static_cast<int64_t>(t.size()) / page * page;
      if ((len + page - 1) / page > alloc.num_free_pages()) evict(len);
      auto s = alloc.alloc(len);
      if (s) {
        const int64_t want = ref.insert(t, *s);
        ASSERT_EQ(cache.insert(t, *s), want);
        alloc.free(std::span<const int32_t>(*s).first(want));
        if (want > 0 && want < len) ++stats["inserts sharing a prefix"];
      }
    } else if (kind == 5 || kind == 6) {  // raw match
      const Tokens t = random_tokens(6 * page);
      const Tokens want = ref.match(t);
      ASSERT_EQ(cache.match_prefix(t).slots, want);
      if (!want.empty()) ++stats["raw matches that hit"];
    } else if (kind == 7) {  // raw lock / unlock
      if (!raw.empty() && rnd(0, 1)) {
        const size_t i = rnd(0, raw.size() - 1);
        cache.dec_lock_ref(raw[i].first);
        unlock(raw[i].second);
        raw.erase(raw.begin() + static_cast<ptrdiff_t>(i));
      } else if (raw.size() < 4) {
        const Tokens t = random_tokens(4 * page);
        const Tokens want = ref.match(t);
        PrefixMatch m = cache.match_prefix(t);
        ASSERT_EQ(m.slots, want);
        cache.inc_lock_ref(m.last_node);
        raw.emplace_back(m.last_node, Tokens(t.begin(), t.begin() + want.size()));
        locks.insert(raw.back().second);
      }
    } else if (kind == 8) {
      evict(rnd(1, 3 * page));
    }
    // Tree and reference agree; allocator, tree and requests account for every slot and page.
    cache.check_invariants();
    alloc.check_invariants();
    stats["max nodes"] = std::max<int>(stats["max nodes"], cache.num_nodes());
    ASSERT_EQ(cache.total_size(), ref.total()) << "op " << op;
    ASSERT_EQ(cache.evictable_size(), ref.evictable(locks)) << "op " << op;
    ASSERT_EQ(cache.protected_size(), ref.total() - ref.evictable(locks));
    int64_t own = 0;
    for (const ActiveReq& a : reqs) {
      own += static_cast<int64_t>(a.req.kv_slots.size()) - a.req.prefix_len;
      ASSERT_EQ(a.req.prefix_len, static_cast<int64_t>(a.locked_prefix.size()));
    }
    ASSERT_EQ(alloc.used_slots(), cache.total_size() + own) << "op " << op;
    ASSERT_EQ(alloc.num_free_pages() + alloc.num_used_pages(), num_pages);
    ASSERT_LE(alloc.used_slots(), alloc.num_used_pages() * page);
  }
  for (const char* name :
       {"admissions with cached tokens", "chunks cached", "evictions that freed",
        "inserts sharing a prefix", "raw matches that hit", "aborts for memory"}) {
    EXPECT_GE(stats[name], 10) << name;
  }
  EXPECT_GE(stats["max nodes"], 8);
  for (const auto& [name, n] : stats) {
    std::printf("page %ld: %s %d\n", static_cast<long>(page), name.c_str(), n);
  }
  // Idle: finish everything, drop the raw locks, evict all; every page must be back.
  for (ActiveReq& a : reqs) {
    unlock(a.locked_prefix);
    cache.cache_finished_req(a.req);
  }
  for (auto& [node, path] : raw) cache.dec_lock_ref(node);
  EXPECT_EQ(cache.protected_size(), 0);
  const int64_t cached = cache.total_size();
  EXPECT_EQ(cache.evictable_size(), cached);
  EXPECT_EQ(cache.evict(alloc.capacity_tokens()), cached);
  EXPECT_EQ(cache.total_size(), 0);
  cache.check_invariants();
  EXPECT_TRUE(alloc.check_idle()) << alloc.leak_report();
}

INSTANTIATE_TEST_SUITE_P(PageSizes, RadixProperty, ::testing::Values(1, 2, 4, 16));

}  // namespace
}  // namespace dpserve
