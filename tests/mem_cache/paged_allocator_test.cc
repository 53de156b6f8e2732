// PagedAllocator (paged token-to-KV slot allocation) and size_kv_pool (pool sizing from flags).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dpserve/common/errors.h"
#include "dpserve/mem_cache/kv_pool_size.h"
#include "dpserve/mem_cache/paged_allocator.h"

namespace dpserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// True if the sequence's slots are page-contiguous from a page boundary: token i at page offset
// i % page, and consecutive inside each page.
bool page_contiguous(const std::vector<int32_t>& s, int64_t page) {
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] % page != static_cast<int64_t>(i) % page) return false;
    if (i % page != 0 && s[i] != s[i - 1] + 1) return false;
  }
  return true;
}

TEST(PagedAllocator, FreshAccountingAndPaddingPage) {
  PagedAllocator a(10, 4);
  EXPECT_EQ(a.num_pages(), 10);
  EXPECT_EQ(a.num_free_pages(), 10);
  EXPECT_EQ(a.available_tokens(), 40);
  EXPECT_EQ(a.capacity_tokens(), 40);
  EXPECT_EQ(a.pool_slots(), 44);  // page 0 is the padding page
  EXPECT_EQ(PagedAllocator::padding_slot(), 0);
  EXPECT_FALSE(a.is_live(0));
  auto s = a.alloc(5);
  ASSERT_TRUE(s.has_value());
  EXPECT_THAT(*s, ElementsAre(4, 5, 6, 7, 8));  // page 1 full, page 2 started; never page 0
  EXPECT_EQ(a.num_free_pages(), 8);
  EXPECT_EQ(a.num_used_pages(), 2);
  EXPECT_EQ(a.available_tokens(), 32);
  EXPECT_EQ(a.used_slots(), 5);
  EXPECT_TRUE(a.alloc(0).has_value());
  EXPECT_TRUE(a.alloc(0)->empty());
  a.check_invariants();
  a.free(*s);
  EXPECT_TRUE(a.check_idle());
  a.check_invariants();
}

TEST(PagedAllocator, AllocUntilFullFailsThenFreeMakesRoom) {
  for (int64_t page : {1, 4, 16}) {
    SCOPED_TRACE(page);
    PagedAllocator a(12, page);
    std::vector<std::vector<int32_t>> seqs;
    // Each sequence of 3 tokens takes one page (page >= 4) or 3 pages (page 1).
    while (auto s = a.alloc(3)) seqs.push_back(*s);
    const int64_t per_seq = (3 + page - 1) / page;
    EXPECT_EQ(static_cast<int64_t>(seqs.size()), 12 / per_seq);
    EXPECT_EQ(a.num_free_pages(), 12 % per_seq);
    const int64_t used_before = a.used_slots();
    EXPECT_FALSE(a.alloc(3).has_value());  // failure changes nothing
    EXPECT_EQ(a.used_slots(), used_before);
    std::set<int32_t> all;
    for (auto& s : seqs) all.insert(s.begin(), s.end());
    EXPECT_EQ(static_cast<int64_t>(all.size()), used_before);  // no slot handed out twice
    a.free(seqs.back());
    seqs.pop_back();
    EXPECT_EQ(a.num_free_pages(), 12 % per_seq + per_seq);
    EXPECT_TRUE(a.alloc(3).has_value());
    a.check_invariants();
  }
}

TEST(PagedAllocator, AllocExtendFillsTailThenNewPages) {
  PagedAllocator a(8, 4);
  std::vector<int32_t> x = *a.alloc(3);  // page 1: 4 5 6
  std::vector<int32_t> y = *a.alloc(2);  // page 2: 8 9
  EXPECT_THAT(x, ElementsAre(4, 5, 6));
  EXPECT_THAT(y, ElementsAre(8, 9));
  EXPECT_EQ(a.pages_needed_for_extend(x.back(), 1), 0);
  EXPECT_EQ(a.pages_needed_for_extend(x.back(), 2), 1);
  auto more = a.alloc_extend(x.back(), 6);  // 7 fills page 1, then page 3 (12..15) and page 4
  ASSERT_TRUE(more.has_value());
  EXPECT_THAT(*more, ElementsAre(7, 12, 13, 14, 15, 16));
  x.insert(x.end(), more->begin(), more->end());
  EXPECT_TRUE(page_contiguous(x, 4));
  auto y2 = a.alloc_extend(y.back(), 2);  // stays in page 2
  EXPECT_THAT(*y2, ElementsAre(10, 11));
  EXPECT_EQ(a.num_free_pages(), 4);
  // Not enough pages: nothing changes.
  EXPECT_FALSE(a.alloc_extend(x.back(), 3 + 4 * 4 + 1).has_value());
  EXPECT_EQ(a.num_free_pages(), 4);
  EXPECT_EQ(a.used_slots(), 9 + 4);
  a.check_invariants();
  // Extending only from the last handed-out slot of a page.
  EXPECT_DEATH(a.alloc_extend(x[1], 1), "");
  a.free(x);
  a.free(y);
  a.free(*y2);
  EXPECT_TRUE(a.check_idle()) << a.leak_report();
  EXPECT_DEATH(a.alloc_extend(7, 1), "");  // extending a freed sequence
}

TEST(PagedAllocator, PageReturnsWhenItsLastLiveSlotIsFreed) {
  PagedAllocator a(4, 4);
  auto s = *a.alloc(6);  // page 1 full, page 2 with 2 slots
  a.free(std::vector<int32_t>{s[4]});
  EXPECT_EQ(a.num_free_pages(), 2);  // page 2 still has slot 9 live
  a.free(std::vector<int32_t>{s[5]});
  EXPECT_EQ(a.num_free_pages(), 3);  // partially used page 2 is back
  a.free(std::vector<int32_t>{s[0], s[1], s[2]});
  EXPECT_EQ(a.num_free_pages(), 3);
  a.free(std::vector<int32_t>{s[3]});
  EXPECT_EQ(a.num_free_pages(), 4);
  EXPECT_DEATH(a.free(std::vector<int32_t>{s[0]}), "");  // double free
  EXPECT_DEATH(a.free(std::vector<int32_t>{0}), "");     // the padding slot is never handed out
  a.check_invariants();
}

TEST(PagedAllocator, CheckIdleReportsTheLeakedPagePrecisely) {
  PagedAllocator a(6, 4);
  auto x = *a.alloc(4);  // page 1: 4..7
  auto y = *a.alloc(3);  // page 2: 8..10
  EXPECT_FALSE(a.check_idle());
  a.free(x);
  a.free(std::vector<int32_t>{y[0], y[2]});  // slot 9 leaks
  EXPECT_FALSE(a.check_idle());
  const std::string r = a.leak_report();
  EXPECT_THAT(r, HasSubstr("1 of 6 pages missing"));
  EXPECT_THAT(r, HasSubstr("1 live slots"));
  EXPECT_THAT(r, HasSubstr("page 2 (slots 8..11, 3 handed out) live slots [9]"));
  EXPECT_THAT(r, ::testing::Not(HasSubstr("page 1 ")));
  a.free(std::vector<int32_t>{y[1]});
  EXPECT_TRUE(a.check_idle());
  EXPECT_EQ(a.leak_report(), "");
}

TEST(PagedAllocator, ClearReturnsEverything) {
  PagedAllocator a(5, 2);
  (void)a.alloc(7);
  a.clear();
  EXPECT_TRUE(a.check_idle());
  EXPECT_THAT(*a.alloc(3), ElementsAre(2, 3, 4));
}

// Page alloc/free cost must not depend on the pool size: a million-page pool cycles pages about
// as fast as a thousand-page one (a scan of the pool per alloc would be ~1000x slower).
TEST(PagedAllocator, AllocAndFreeAreConstantTime) {
  auto cycle_ns = [](int64_t pages) {
    PagedAllocator a(pages, 16);
    std::vector<std::vector<int32_t>> held;
    for (int i = 0; i < 64; ++i) held.push_back(*a.alloc(40));  // a non-trivial free stack
    const auto t0 = std::chrono::steady_clock::now();
    constexpr int kIters = 20000;
    for (int i = 0; i < kIters; ++i) {
      auto s = *a.alloc(33);
      auto e = *a.alloc_extend(s.back(), 20);
      a.free(s);
      a.free(e);
    }
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / kIters;
  };
  cycle_ns(1000);  // warm up
  const double small = cycle_ns(1000);
  const double large = cycle_ns(1000000);
  EXPECT_LT(large, small * 10 + 2000) << "small pool " << small << " ns, large " << large << " ns";
}

// Random sequences alloc / extend / free against a simple model of who owns which slot.
TEST(PagedAllocator, RandomizedAgainstOwnershipModel) {
  for (int64_t page : {1, 3, 16}) {
    SCOPED_TRACE(page);
    std::mt19937 rng(1234 + page);
    const int64_t pages = 40;
    PagedAllocator a(pages, page);
    std::vector<std::vector<int32_t>> seqs;
    std::vector<int> owner(a.pool_slots(), -1);
    for (int op = 0; op < 4000; ++op) {
      const int kind = std::uniform_int_distribution<int>(0, 2)(rng);
      const int64_t n = std::uniform_int_distribution<int64_t>(0, 2 * page + 3)(rng);
      if (kind == 0 || seqs.empty()) {
        const bool fits = (n + page - 1) / page <= a.num_free_pages();
        auto s = a.alloc(n);
        ASSERT_EQ(s.has_value(), fits);
        if (s && !s->empty()) {
          seqs.push_back(*s);
        }
      } else if (kind == 1) {
        auto& s = seqs[rng() % seqs.size()];
        auto e = a.alloc_extend(s.back(), n);
        if (e) s.insert(s.end(), e->begin(), e->end());
      } else {
        const size_t i = rng() % seqs.size();
        a.free(seqs[i]);
        seqs.erase(seqs.begin() + static_cast<ptrdiff_t>(i));
      }
      std::fill(owner.begin(), owner.end(), -1);
      int64_t live = 0;
      std::set<int64_t> used_pages;
      for (size_t q = 0; q < seqs.size(); ++q) {
        ASSERT_TRUE(page_contiguous(seqs[q], page));
        for (int32_t s : seqs[q]) {
          ASSERT_EQ(owner[s], -1) << "slot " << s << " handed out twice";
          ASSERT_GE(s, page) << "padding page handed out";
          owner[s] = static_cast<int>(q);
          ASSERT_TRUE(a.is_live(s));
          used_pages.insert(s / page);
          ++live;
        }
      }
      ASSERT_EQ(a.used_slots(), live);
      ASSERT_EQ(a.num_used_pages(), static_cast<int64_t>(used_pages.size()));
      ASSERT_EQ(a.num_free_pages() + a.num_used_pages(), pages);
      a.check_invariants();
    }
    for (auto& s : seqs) a.free(s);
    EXPECT_TRUE(a.check_idle()) << a.leak_report();
  }
}

TEST(KVPoolSize, BytesPerTokenAndMemAvailable) {
  EXPECT_EQ(kv_bytes_per_token(5, 4, 8), 2 * 5 * 4 * 8 * 4);
  const std::string path = ::testing::TempDir() + "/meminfo_test";
  {
    std::ofstream f(path);
    f << "MemTotal:       1000 kB\nMemFree:         200 kB\nMemAvailable:    300 kB\n";
  }
  EXPECT_EQ(read_mem_available(path), 300 * 1024);
  {
    std::ofstream f(path);
    f << "MemTotal:       1000 kB\n";
  }
  EXPECT_FALSE(read_mem_available(path).has_value());
  std::remove(path.c_str());
  EXPECT_FALSE(read_mem_available("/nonexistent/meminfo").has_value());
  auto real = read_mem_available();
  ASSERT_TRUE(real.has_value());
  EXPECT_GT(*real, 0);
}

TEST(KVPoolSize, FromEachSource) {
  KVPoolBudget b;
  b.bytes_per_token = 100;
  b.page_size = 16;
  b.max_total_tokens = 1000;  // 62 whole pages
  KVPoolSize r = size_kv_pool(b);
  EXPECT_EQ(r.num_pages, 62);
  EXPECT_EQ(r.usable_tokens, 992);
  EXPECT_EQ(r.pool_slots, 1008);
  EXPECT_EQ(r.bytes, 100800);

  b.max_total_tokens = 0;
  b.page_size = 4;
  b.kv_cache_memory = 4000 + 399;  // 10 pages of 400 bytes, one of them the padding page
  r = size_kv_pool(b);
  EXPECT_EQ(r.num_pages, 9);
  EXPECT_LE(r.bytes, b.kv_cache_memory);

  b.kv_cache_memory = 0;
  b.page_size = 1;
  b.mem_available = 1'000'000;
  b.mem_fraction = 0.5;
  b.max_default_tokens = 0;
  r = size_kv_pool(b);
  EXPECT_EQ(r.num_pages, 4999);
  EXPECT_THAT(r.source, HasSubstr("MemAvailable"));
  b.max_default_tokens = 1000;
  EXPECT_EQ(size_kv_pool(b).num_pages, 1000);
}

TEST(KVPoolSize, ErrorsNameTheFlag) {
  KVPoolBudget b;
  b.bytes_per_token = 100;
  b.page_size = 16;
  b.max_total_tokens = 10;  // less than one page
  try {
    size_kv_pool(b);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("--max-total-tokens"));
  }
  b.max_total_tokens = 0;
  b.kv_cache_memory = 1600;  // exactly the padding page
  try {
    size_kv_pool(b);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("--kv-cache-memory"));
  }
  b.kv_cache_memory = 0;
  b.max_total_tokens = 512;
  b.context_length = 2048;
  try {
    size_kv_pool(b);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("context length 2048"));
    EXPECT_THAT(e.what(), HasSubstr("--max-total-tokens"));
  }
  b.kv_cache_memory = 100000;
  EXPECT_THROW(size_kv_pool(b), Error);  // both flags
  b.kv_cache_memory = 0;
  b.page_size = 0;
  EXPECT_THROW(size_kv_pool(b), Error);
}

}  // namespace
}  // namespace dpserve
