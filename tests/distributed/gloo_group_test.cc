// GlooProcessGroup: every collective in real processes (fork) over 127.0.0.1 with a FileStore,
// at 1 to 4 ranks, checked against values computed in closed form; failures (a peer killed with
// SIGKILL, a peer that hangs, a peer that never joins) become DistributedError within the timeout.
// GlooBench (set DPSERVE_GLOO_BENCH=1) times all_reduce_sum per algorithm and size.

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "dpserve/distributed/gloo_group.h"
#include "gloo_test_util.h"

namespace dpserve {
namespace {

using namespace std::chrono_literals;
using testing::all_ok;
using testing::describe;
using testing::file_store;
using testing::run_ranks;
using testing::TempDir;

// Options for tests: loopback, a short timeout.
GlooTransportOptions loopback(std::chrono::milliseconds timeout = 10s,
                              GlooAllreduceAlgorithm algorithm = GlooAllreduceAlgorithm::kBcube) {
  GlooTransportOptions o;
  o.hostname = "127.0.0.1";
  o.timeout = timeout;
  o.allreduce = algorithm;
  return o;
}

// all_reduce_sum of n floats, rank r contributing (r + 1) * (i % 97) + 0.5 * r: the sum is
// S * (i % 97) + 0.5 * T with S = sum(r + 1), T = sum(r) (all exact in float).
void check_all_reduce(ProcessGroup& g, int64_t n) {
  const int size = g.size(), rank = g.rank();
  std::vector<float> data(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) data[i] = static_cast<float>((rank + 1) * (i % 97)) + 0.5f * rank;
  g.all_reduce_sum(data.data(), n);
  const float s = size * (size + 1) / 2.0f, t = size * (size - 1) / 2.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float want = s * static_cast<float>(i % 97) + 0.5f * t;
    REQUIRE(data[i] == want, "all_reduce n={} i={}: got {} want {}", n, i, data[i], want);
  }
}

// all_gatherv with rank r contributing counts[r] floats of value r * 1e5 + j.
void check_all_gatherv(ProcessGroup& g, const std::vector<int64_t>& counts) {
  const int rank = g.rank();
  std::vector<float> in(static_cast<size_t>(counts[rank]));
  for (size_t j = 0; j < in.size(); ++j) in[j] = static_cast<float>(rank * 100000 + j);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  std::vector<float> out(static_cast<size_t>(total) + 1, -7.0f);  // one sentinel past the end
  g.all_gatherv(in.data(), out.data(), counts);
  size_t k = 0;
  for (int r = 0; r < g.size(); ++r) {
    for (int64_t j = 0; j < counts[r]; ++j, ++k) {
      const float want = static_cast<float>(r * 100000 + j);
      REQUIRE(out[k] == want, "all_gatherv from rank {} row {}: got {} want {}", r, j, out[k],
              want);
    }
  }
  REQUIRE(out[k] == -7.0f, "all_gatherv wrote past sum(counts)");
}

// Every collective of the interface, twice over (so tags advance), against closed forms.
void exercise_all_collectives(ProcessGroup& g) {
  const int size = g.size(), rank = g.rank();
  for (int round = 0; round < 2; ++round) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{300'007}}) {
      check_all_reduce(g, n);
    }
    // Uneven counts with zeros; all-but-one zero; all zero; large uneven.
    std::vector<int64_t> uneven, one_nonzero, zeros, large;
    for (int r = 0; r < size; ++r) {
      uneven.push_back((r * 3 + 1) % 4);  // 1, 0, 3, 2
      one_nonzero.push_back(r == size - 1 ? 5 : 0);
      zeros.push_back(0);
      large.push_back(20'000 * r + 3);
    }
    check_all_gatherv(g, uneven);
    check_all_gatherv(g, one_nonzero);
    check_all_gatherv(g, zeros);
    check_all_gatherv(g, large);

    // all_gather_bytes of 13 bytes: byte j of rank r is (7r + j) mod 256.
    uint8_t in[13];
    for (int j = 0; j < 13; ++j) in[j] = static_cast<uint8_t>(7 * rank + j);
    std::vector<uint8_t> out(13 * static_cast<size_t>(size));
    g.all_gather_bytes(in, sizeof(in), out.data());
    for (int r = 0; r < size; ++r) {
      for (int j = 0; j < 13; ++j) {
        REQUIRE(out[r * 13 + j] == static_cast<uint8_t>(7 * r + j), "all_gather_bytes r={} j={}", r,
                j);
      }
    }

    // all_gather_i64, negative values included.
    const auto values = g.all_gather_i64(int64_t{rank} * rank - 5 - (int64_t{1} << 40));
    REQUIRE(values.size() == static_cast<size_t>(size), "all_gather_i64 size {}", values.size());
    for (int r = 0; r < size; ++r) {
      REQUIRE(values[r] == int64_t{r} * r - 5 - (int64_t{1} << 40), "all_gather_i64[{}]", r);
    }

    // broadcast_bytes from every root.
    for (int root = 0; root < size; ++root) {
      int32_t v[3] = {rank, rank * 2, -rank};
      g.broadcast_bytes(v, sizeof(v), root);
      REQUIRE(v[0] == root && v[1] == 2 * root && v[2] == -root, "broadcast_bytes root {}", root);
    }

    // broadcast_string: 1 MB from the last rank, then an empty string over non-empty ones, then
    // a short one from rank 0.
    const int big_root = size - 1;
    std::string big;
    if (rank == big_root) {
      big.resize(1 << 20);
      for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 31 + 7) % 251);
    } else {
      big = "stale";
    }
    g.broadcast_string(big, big_root);
    REQUIRE(big.size() == (1u << 20), "broadcast_string 1 MB: size {}", big.size());
    for (size_t i = 0; i < big.size(); ++i) {
      REQUIRE(big[i] == static_cast<char>((i * 31 + 7) % 251), "broadcast_string byte {}", i);
    }
    std::string empty = rank == 0 ? "" : "not empty";
    g.broadcast_string(empty, 0);
    REQUIRE(empty.empty(), "broadcast_string of an empty string left '{}'", empty);
    std::string hello = rank == 0 ? "hello" : "";
    g.broadcast_string(hello, 0);
    REQUIRE(hello == "hello", "broadcast_string small: '{}'", hello);

    g.barrier();
  }
}

class GlooCollectives : public ::testing::TestWithParam<int> {};

TEST_P(GlooCollectives, EveryCollectiveMatchesClosedForm) {
  const int size = GetParam();
  TempDir dir;
  const auto exits = run_ranks(size, [&](int rank) {
    GlooProcessGroup g("test", rank, size, file_store(dir.path()), "collectives", loopback());
    REQUIRE(g.rank() == rank && g.size() == size && g.name() == "test", "identity");
    exercise_all_collectives(g);
  });
  EXPECT_TRUE(all_ok(exits)) << describe(exits);
  EXPECT_TRUE(testing::no_children_left());
}

INSTANTIATE_TEST_SUITE_P(Sizes, GlooCollectives, ::testing::Values(1, 2, 3, 4));

class GlooAlgorithms : public ::testing::TestWithParam<std::tuple<GlooAllreduceAlgorithm, int>> {};

TEST_P(GlooAlgorithms, AllReduceMatchesClosedForm) {
  const auto [algorithm, size] = GetParam();
  TempDir dir;
  const auto exits = run_ranks(size, [&](int rank) {
    GlooProcessGroup g("alg", rank, size, file_store(dir.path()), "alg", loopback(10s, algorithm));
    for (int64_t n : {1, 7, 1000, 262'144 + 5}) check_all_reduce(g, n);
  });
  EXPECT_TRUE(all_ok(exits)) << describe(exits);
}

INSTANTIATE_TEST_SUITE_P(AlgorithmsAndSizes, GlooAlgorithms,
                         ::testing::Combine(::testing::Values(GlooAllreduceAlgorithm::kRing,
                                                              GlooAllreduceAlgorithm::kBcube),
                                            ::testing::Values(2, 3, 4)));

// Size 1: no store, no transport; collectives are copies.
TEST(GlooSingleRank, WorksWithoutStoreOrTransport) {
  GlooProcessGroup g("solo", 0, 1, nullptr, "unused", GlooTransportOptions{});
  float x[3] = {1, 2, 3};
  g.all_reduce_sum(x, 3);
  EXPECT_EQ(x[2], 3.0f);
  float out[4] = {0, 0, 0, -1};
  g.all_gatherv(x, out, {3});
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[2], 3.0f);
  EXPECT_EQ(out[3], -1.0f);
  EXPECT_EQ(g.all_gather_i64(-42), std::vector<int64_t>{-42});
  std::string s = "abc";
  g.broadcast_string(s, 0);
  EXPECT_EQ(s, "abc");
  g.barrier();
}

// Checks the error a surviving rank got: DistributedError naming the group and the operation,
// within `limit`; a later collective on the broken group fails at once.
void expect_failure(GlooProcessGroup& g, std::chrono::milliseconds limit, const char* op,
                    const std::function<void()>& call) {
  const auto start = std::chrono::steady_clock::now();
  bool threw = false;
  try {
    call();
  } catch (const DistributedError& e) {
    threw = true;
    const std::string msg = e.what();
    const auto took = std::chrono::steady_clock::now() - start;
    std::fprintf(
        stderr, "[rank %d] got after %lld ms: %s\n", g.rank(),
        static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()),
        msg.c_str());
    REQUIRE(took < limit, "the error took {} ms", took / 1ms);
    REQUIRE(msg.find("'" + g.name() + "'") != std::string::npos, "group not named: {}", msg);
    REQUIRE(msg.find(op) != std::string::npos, "op not named: {}", msg);
  }
  REQUIRE(threw, "{} did not fail", op);
  const auto again = std::chrono::steady_clock::now();
  bool threw_again = false;
  try {
    g.barrier();
  } catch (const DistributedError& e) {
    threw_again = std::string(e.what()).find("earlier failure") != std::string::npos;
  }
  REQUIRE(threw_again, "a broken group must keep failing");
  REQUIRE(std::chrono::steady_clock::now() - again < 100ms, "the second failure must be immediate");
}

// A peer killed with SIGKILL before a collective: the others get DistributedError, no hang.
TEST(GlooFailures, KilledPeerGivesDistributedError) {
  TempDir dir;
  const auto exits = run_ranks(
      3,
      [&](int rank) {
        GlooProcessGroup g("victims", rank, 3, file_store(dir.path()), "killed", loopback(2s));
        g.barrier();
        if (rank == 2) raise(SIGKILL);  // kill -9 of this rank, connections established
        std::this_thread::sleep_for(100ms);
        std::vector<float> data(100'000, 1.0f);
        expect_failure(g, 2500ms, "all_reduce_sum",
                       [&] { g.all_reduce_sum(data.data(), static_cast<int64_t>(data.size())); });
      },
      20s);
  ASSERT_EQ(exits.size(), 3u);
  EXPECT_TRUE(exits[0].exited && exits[0].code == 0) << describe(exits);
  EXPECT_TRUE(exits[1].exited && exits[1].code == 0) << describe(exits);
  EXPECT_TRUE(!exits[2].exited && exits[2].signal == SIGKILL && !exits[2].timed_out)
      << describe(exits);
  EXPECT_TRUE(testing::no_children_left());
}

// A peer killed while the others already wait inside the collective.
TEST(GlooFailures, PeerKilledMidCollectiveGivesDistributedError) {
  TempDir dir;
  const auto exits = run_ranks(
      4,
      [&](int rank) {
        GlooProcessGroup g("midway", rank, 4, file_store(dir.path()), "midway", loopback(2s));
        g.barrier();
        if (rank == 3) {
          std::this_thread::sleep_for(300ms);
          raise(SIGKILL);
        }
        std::vector<float> data(1 << 20, 1.0f);
        expect_failure(g, 2500ms, "all_reduce_sum",
                       [&] { g.all_reduce_sum(data.data(), static_cast<int64_t>(data.size())); });
      },
      20s);
  ASSERT_EQ(exits.size(), 4u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(exits[r].exited && exits[r].code == 0) << describe(exits);
  }
  EXPECT_TRUE(!exits[3].exited && exits[3].signal == SIGKILL && !exits[3].timed_out)
      << describe(exits);
  EXPECT_TRUE(testing::no_children_left());
}

// A peer that is alive but never enters the collective: the others time out (2 s).
TEST(GlooFailures, HungPeerTimesOut) {
  TempDir dir;
  const auto exits = run_ranks(
      2,
      [&](int rank) {
        GlooProcessGroup a("hung_a", rank, 2, file_store(dir.path()), "hung_a", loopback(2s));
        GlooProcessGroup b("hung_b", rank, 2, file_store(dir.path()), "hung_b", loopback(2s));
        a.barrier();
        b.barrier();
        if (rank == 1) {
          std::this_thread::sleep_for(5s);  // outlives both timeouts of rank 0, then leaves
          return;
        }
        std::string s = "x";
        expect_failure(a, 3500ms, "broadcast_bytes", [&] { a.broadcast_string(s, 0); });
        std::vector<float> data(1000, 1.0f);
        expect_failure(b, 3500ms, "all_reduce_sum", [&] { b.all_reduce_sum(data.data(), 1000); });
      },
      20s);
  EXPECT_TRUE(all_ok(exits)) << describe(exits);
}

// A rank whose peer never starts: the constructor fails after the timeout.
TEST(GlooFailures, MissingPeerFailsRendezvous) {
  TempDir dir;
  const auto exits = run_ranks(
      1,
      [&](int) {
        const auto start = std::chrono::steady_clock::now();
        try {
          GlooProcessGroup g("lonely", 0, 2, file_store(dir.path()), "missing", loopback(1s));
        } catch (const DistributedError& e) {
          const std::string msg = e.what();
          std::fprintf(stderr, "[rank 0] got: %s\n", msg.c_str());
          REQUIRE(msg.find("'lonely'") != std::string::npos, "group not named: {}", msg);
          REQUIRE(std::chrono::steady_clock::now() - start < 5s, "took too long");
          return;
        }
        REQUIRE(false, "the rendezvous did not fail");
      },
      20s);
  EXPECT_TRUE(all_ok(exits)) << describe(exits);
}

// Timings of all_reduce_sum per algorithm, size and rank count, and of the scheduler's small
// collectives (DPSERVE_GLOO_BENCH=1 to run). The algorithms are timed interleaved, iteration by
// iteration, so that load from other processes hits them alike.
TEST(GlooBench, AllReduce) {
  if (std::getenv("DPSERVE_GLOO_BENCH") == nullptr) GTEST_SKIP() << "set DPSERVE_GLOO_BENCH=1";
  const std::vector<std::pair<GlooAllreduceAlgorithm, const char*>> algorithms = {
      {GlooAllreduceAlgorithm::kRing, "ring"}, {GlooAllreduceAlgorithm::kBcube, "bcube"}};
  auto percentile = [](std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
  };
  for (int size : {2, 3, 4}) {
    TempDir dir;
    const auto exits = run_ranks(
        size,
        [&](int rank) {
          auto device = make_gloo_tcp_device(loopback());
          std::vector<std::unique_ptr<GlooProcessGroup>> groups;
          for (const auto& [algorithm, algorithm_name] : algorithms) {
            groups.push_back(std::make_unique<GlooProcessGroup>(
                algorithm_name, rank, size, file_store(dir.path()), algorithm_name,
                loopback(30s, algorithm), device));
          }
          for (int64_t bytes : {int64_t{4} << 10, int64_t{64} << 10, int64_t{512} << 10,
                                int64_t{2} << 20, int64_t{8} << 20}) {
            const int64_t n = bytes / 4;
            std::vector<float> data(static_cast<size_t>(n), 1.0f);
            const int iters = bytes <= (64 << 10) ? 200 : (bytes <= (512 << 10) ? 60 : 15);
            std::vector<std::vector<double>> us(groups.size());
            for (int i = -2; i < iters; ++i) {  // two warm-up rounds
              for (size_t a = 0; a < groups.size(); ++a) {
                groups[a]->barrier();
                const auto t0 = std::chrono::steady_clock::now();
                groups[a]->all_reduce_sum(data.data(), n);
                const double t =
                    std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                        .count();
                if (i >= 0) us[a].push_back(t);
              }
            }
            if (rank != 0) continue;
            for (size_t a = 0; a < groups.size(); ++a) {
              std::printf(
                  "all_reduce %-16s ranks %d %6lld KB: p10 %8.0f us  median %8.0f us  "
                  "(%.0f MB/s at median)\n",
                  algorithms[a].second, size, static_cast<long long>(bytes >> 10),
                  percentile(us[a], 0.1), percentile(us[a], 0.5),
                  static_cast<double>(bytes) / percentile(us[a], 0.5));
            }
            std::fflush(stdout);
          }
          // The scheduler's per-step collectives on the default (ring) group.
          auto& g = *groups[0];
          std::vector<double> gather_us, bcast_us, barrier_us;
          std::string msg(256, 'x');
          for (int i = 0; i < 300; ++i) {
            auto t0 = std::chrono::steady_clock::now();
            g.all_gather_i64(i);
            auto t1 = std::chrono::steady_clock::now();
            g.broadcast_string(msg, 0);
            auto t2 = std::chrono::steady_clock::now();
            g.barrier();
            auto t3 = std::chrono::steady_clock::now();
            gather_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
            bcast_us.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
            barrier_us.push_back(std::chrono::duration<double, std::micro>(t3 - t2).count());
          }
          if (rank == 0) {
            std::printf(
                "ranks %d: all_gather_i64 p10 %.0f / median %.0f us; broadcast_string(256 B) "
                "p10 %.0f / median %.0f us; barrier p10 %.0f / median %.0f us\n",
                size, percentile(gather_us, 0.1), percentile(gather_us, 0.5),
                percentile(bcast_us, 0.1), percentile(bcast_us, 0.5), percentile(barrier_us, 0.1),
                percentile(barrier_us, 0.5));
            std::fflush(stdout);
          }
        },
        590s);
    EXPECT_TRUE(all_ok(exits)) << describe(exits);
  }
}

}  // namespace
}  // namespace dpserve
