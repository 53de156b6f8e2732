// parallel_state: the world / tp / attn_tp / dp groups of every rank, built in real processes and
// checked by an all_gather of world ranks inside each group against memberships written out
// constructively here (blocks of consecutive ranks), not by the library's arithmetic.

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "dpserve/distributed/parallel_state.h"
#include "gloo_test_util.h"

namespace dpserve {
namespace {

using namespace std::chrono_literals;
using testing::all_ok;
using testing::describe;
using testing::file_store;
using testing::run_ranks;
using testing::TempDir;

struct Layout {
  int tp, dp;
  bool dp_attention;
};

// The expected groups of world rank w, built from the partition into DP groups: under DP
// attention, dp blocks of tp/dp consecutive ranks; w's attn_tp group is its block, its dp group
// takes from every block the rank at w's position in its own block.
struct Expected {
  std::vector<int> world, attn_tp, dp;
  int attn_tp_rank = 0, attn_dp_rank = 0;
};

Expected expected_for(const Layout& l, int w) {
  Expected e;
  for (int r = 0; r < l.tp; ++r) e.world.push_back(r);
  if (!l.dp_attention) {
    e.attn_tp = e.world;
    e.dp = {w};
    e.attn_tp_rank = w;
    return e;
  }
  std::vector<std::vector<int>> blocks(static_cast<size_t>(l.dp));
  int next = 0;
  for (auto& b : blocks) {
    while (static_cast<int>(b.size()) < l.tp / l.dp) b.push_back(next++);
  }
  for (size_t g = 0; g < blocks.size(); ++g) {
    const auto it = std::find(blocks[g].begin(), blocks[g].end(), w);
    if (it == blocks[g].end()) continue;
    e.attn_tp = blocks[g];
    e.attn_dp_rank = static_cast<int>(g);
    e.attn_tp_rank = static_cast<int>(it - blocks[g].begin());
  }
  for (const auto& b : blocks) e.dp.push_back(b[e.attn_tp_rank]);
  return e;
}

// Checks one group: its size, this rank's place, and the members by an all_gather of tags
// (replica * 100 + world rank).
void check_group(ProcessGroup& g, const std::string& name, const std::vector<int>& members,
                 int replica, int world_rank) {
  REQUIRE(g.name() == name, "name {} != {}", g.name(), name);
  REQUIRE(g.size() == static_cast<int>(members.size()), "{}: size {} != {}", name, g.size(),
          members.size());
  const int idx =
      static_cast<int>(std::find(members.begin(), members.end(), world_rank) - members.begin());
  REQUIRE(g.rank() == idx, "{}: rank {} != {}", name, g.rank(), idx);
  const auto tags = g.all_gather_i64(replica * 100 + world_rank);
  for (size_t i = 0; i < members.size(); ++i) {
    REQUIRE(tags[i] == replica * 100 + members[i], "{}: member {} is {} not {}", name, i, tags[i],
            replica * 100 + members[i]);
  }
  // A sum inside the group sees exactly the members.
  float x = static_cast<float>(replica * 100 + world_rank);
  g.all_reduce_sum(&x, 1);
  float want = 0;
  for (int m : members) want += static_cast<float>(replica * 100 + m);
  REQUIRE(x == want, "{}: sum {} != {}", name, x, want);
}

class ParallelStateGroups : public ::testing::TestWithParam<Layout> {};

TEST_P(ParallelStateGroups, MembershipsAndRanks) {
  const Layout l = GetParam();
  // Plain DP runs dp_size replicas of tp_size ranks; DP attention one instance of tp_size ranks.
  const int replicas = l.dp_attention ? 1 : l.dp;
  const int processes = l.tp * replicas;
  TempDir dir;
  const auto exits = run_ranks(processes, [&](int p) {
    ParallelConfig c;
    c.world_rank = p % l.tp;
    c.world_size = l.tp;
    c.tp_size = l.tp;
    c.dp_size = l.dp;
    c.enable_dp_attention = l.dp_attention;
    c.dp_replica = p / l.tp;
    GlooTransportOptions o;
    o.hostname = "127.0.0.1";
    o.timeout = 10s;
    const ParallelState s = initialize_parallel_state(c, file_store(dir.path()), "ps", o);
    const Expected e = expected_for(l, c.world_rank);

    REQUIRE(s.world_rank == c.world_rank && s.world_size == l.tp, "world coordinates");
    REQUIRE(s.tp_rank == c.world_rank && s.tp_size == l.tp, "tp coordinates");
    REQUIRE(s.attn_tp_rank == e.attn_tp_rank, "attn_tp_rank {} != {}", s.attn_tp_rank,
            e.attn_tp_rank);
    REQUIRE(s.attn_tp_size == static_cast<int>(e.attn_tp.size()), "attn_tp_size {}",
            s.attn_tp_size);
    REQUIRE(s.attn_dp_rank == e.attn_dp_rank, "attn_dp_rank {} != {}", s.attn_dp_rank,
            e.attn_dp_rank);
    REQUIRE(s.dp_size == l.dp, "dp_size {}", s.dp_size);
    REQUIRE(s.dp_rank == (l.dp_attention ? e.attn_dp_rank : c.dp_replica), "dp_rank {}", s.dp_rank);

    const ParallelGroupRanks ranks = compute_group_ranks(c);
    REQUIRE(ranks.world == e.world && ranks.tp == e.world && ranks.attn_tp == e.attn_tp &&
                ranks.dp == e.dp,
            "compute_group_ranks disagrees");

    // Same order on every rank: world, tp, attn_tp, dp.
    check_group(*s.world, "world", e.world, c.dp_replica, c.world_rank);
    check_group(*s.tp, "tp", e.world, c.dp_replica, c.world_rank);
    check_group(*s.attn_tp, "attn_tp", e.attn_tp, c.dp_replica, c.world_rank);
    check_group(*s.dp, "dp", e.dp, c.dp_replica, c.world_rank);
    s.world->barrier();
  });
  EXPECT_TRUE(all_ok(exits)) << describe(exits);
  EXPECT_TRUE(testing::no_children_left());
}

INSTANTIATE_TEST_SUITE_P(Layouts, ParallelStateGroups,
                         ::testing::Values(Layout{4, 1, false}, Layout{4, 2, true},
                                           Layout{4, 4, true}, Layout{2, 2, false}),
                         [](const auto& info) {
                           return "tp" + std::to_string(info.param.tp) + "_dp" +
                                  std::to_string(info.param.dp) +
                                  (info.param.dp_attention ? "_dpattn" : "_plain");
                         });

// Returns the message of the Error validate_parallel_config throws ("" when none).
std::string config_error(ParallelConfig c) {
  try {
    validate_parallel_config(c);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ParallelStateConfig, InvalidConfigsNameTheField) {
  ParallelConfig c;
  c.world_size = c.tp_size = 4;
  c.dp_size = 2;
  c.enable_dp_attention = true;
  EXPECT_EQ(config_error(c), "");
  auto bad = c;
  bad.world_size = 8;
  EXPECT_EQ(config_error(bad), "world size 8 must equal --tp-size 4 (one process per TP rank)");
  bad = c;
  bad.world_rank = 4;
  EXPECT_EQ(config_error(bad), "world rank must be in [0, 4), got 4");
  bad = c;
  bad.dp_replica = 1;
  EXPECT_NE(config_error(bad).find("dp_replica must be 0 under --enable-dp-attention"),
            std::string::npos);
  bad = c;
  bad.dp_size = 3;
  EXPECT_NE(config_error(bad).find("divisible"), std::string::npos);
  bad = c;
  bad.enable_dp_attention = false;
  bad.dp_replica = 2;
  EXPECT_EQ(config_error(bad), "dp_replica must be in [0, --dp-size) = [0, 2), got 2");
}

TEST(ParallelStateConfig, SingleRankNeedsNoStore) {
  ParallelConfig c;  // tp 1, dp 1
  const ParallelState s = initialize_parallel_state(c, nullptr, "none", GlooTransportOptions{});
  EXPECT_EQ(s.world->size(), 1);
  EXPECT_EQ(s.tp->size(), 1);
  EXPECT_EQ(s.attn_tp->size(), 1);
  EXPECT_EQ(s.dp->size(), 1);
  EXPECT_EQ(s.describe(), "tp 0/1 attn_tp 0/1 attn_dp 0/1 dp_rank 0");
  float x = 2;
  s.tp->all_reduce_sum(&x, 1);
  EXPECT_EQ(x, 2.0f);
}

}  // namespace
}  // namespace dpserve
