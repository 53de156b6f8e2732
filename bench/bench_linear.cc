// dpserve_bench_linear: linear() at the TinyLlama-1.1B shapes, figures beside the machine's
// measured ceilings (memory read bandwidth for the weight stream, SGEMM rate for the flops).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "ceilings.h"
#include "dpserve/common/dtype.h"
#include "dpserve/common/thread_pool.h"
#include "dpserve/kernels/cpu/gemv.h"
#include "dpserve/kernels/cpu/linear.h"

namespace dpserve::bench {
namespace {

using kernels::WeightMatrix;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Enough copies of one weight matrix that cycling through them streams from memory, not cache.
struct WeightSet {
  DType dtype;
  int64_t rows, cols;
  std::vector<std::vector<uint16_t>> bf16;
  std::vector<std::vector<float>> f32;

  WeightSet(DType dt, int64_t r, int64_t c, size_t min_bytes) : dtype(dt), rows(r), cols(c) {
    const size_t bytes = static_cast<size_t>(r * c) * dtype_size(dt);
    const size_t copies = std::max<size_t>(1, (min_bytes + bytes - 1) / bytes);
    uint32_t s = 12345;
    auto next = [&] {
      s = s * 1664525u + 1013904223u;
      return static_cast<float>(static_cast<int32_t>(s >> 8) - (1 << 23)) / (1 << 26);
    };
    for (size_t k = 0; k < copies; ++k) {
      if (dt == DType::F32) {
        f32.emplace_back(static_cast<size_t>(r * c));
        for (auto& v : f32.back()) v = next();
      } else {
        bf16.emplace_back(static_cast<size_t>(r * c));
        for (auto& v : bf16.back()) v = f32_to_bf16(next());
      }
    }
  }
  size_t copies() const { return dtype == DType::F32 ? f32.size() : bf16.size(); }
  WeightMatrix get(size_t k) const {
    return {dtype, rows, cols,
            dtype == DType::F32 ? static_cast<const void*>(f32[k].data()) : bf16[k].data()};
  }
  double bytes() const { return static_cast<double>(rows * cols) * dtype_size(dtype); }
};

// Seconds per linear() call: best over `rounds` rounds, each cycling through every copy at least
// once and running for at least min_s.
double time_linear(const WeightSet& ws, int64_t m, ThreadPool& pool, int rounds, double min_s) {
  std::vector<float> x(static_cast<size_t>(m * ws.cols), 0.01f),
      y(static_cast<size_t>(m * ws.rows));
  linear(x.data(), m, ws.get(0), nullptr, y.data(), pool);  // warm-up (scratch buffers, BLAS)
  double best = 1e30;
  for (int round = 0; round < rounds; ++round) {
    const double t0 = now_s();
    int64_t calls = 0;
    do {
      for (size_t k = 0; k < ws.copies(); ++k, ++calls)
        linear(x.data(), m, ws.get(k), nullptr, y.data(), pool);
    } while (now_s() - t0 < min_s);
    best = std::min(best, (now_s() - t0) / static_cast<double>(calls));
  }
  return best;
}

struct Shape {
  int64_t cols, rows;  // in -> out features
  const char* name;
};

const Shape kShapes[] = {{2048, 2048, "q/o 2048->2048"},
                         {2048, 5632, "gate/up 2048->5632"},
                         {5632, 2048, "down 5632->2048"},
                         {2048, 32000, "lm_head 2048->32000"}};

// One measured figure.
struct Row {
  DType dtype;
  const char* shape;
  int64_t m;
  double bytes;  // weight bytes per call
  double flops;  // per call
  double s;      // seconds per call
};

void print_row(const Ceilings& c, const Row& r) {
  const double gbps = r.bytes / r.s / 1e9;
  const double gflops = r.flops / r.s / 1e9;
  std::printf("%-5s %-22s %5lld %10.3f %8.1f %6.0f%% %9.1f %6.0f%%\n",
              std::string(dtype_name(r.dtype)).c_str(), r.shape, static_cast<long long>(r.m),
              r.s * 1e3, gbps, 100.0 * gbps / c.read_gbps, gflops, 100.0 * gflops / c.sgemm_gflops);
}

}  // namespace
}  // namespace dpserve::bench

int main(int argc, char** argv) {
  using namespace dpserve;
  using namespace dpserve::bench;
  CLI::App app{"linear() at the TinyLlama-1.1B shapes versus this machine's ceilings"};
  int threads = default_num_threads();
  std::vector<int64_t> ms = {1, 16, 512};
  std::vector<std::string> dtypes = {"F32", "BF16"};
  int rounds = 3;
  double min_s = 0.3;
  double min_mb = 256;
  bool sweep = false, blas_threads = false, no_ceilings = false;
  int64_t panel_rows = kernels::linear_tuning().bf16_panel_rows;
  app.add_option("--threads", threads, "threads (pool and OpenBLAS)");
  app.add_option("--m", ms, "token counts (rows of x)");
  app.add_option("--dtype", dtypes, "weight dtypes: F32, BF16");
  app.add_option("--rounds", rounds, "timed rounds per figure (best is kept)");
  app.add_option("--min-seconds", min_s, "minimum duration of one round");
  app.add_option("--min-mb", min_mb, "weight copies cycled so at least this many MB stream");
  app.add_option("--panel-rows", panel_rows, "BF16 rows widened per sgemm call");
  int64_t k_block = kernels::small_m_tuning().k_block;
  int tile = kernels::small_m_tuning().tile;
  bool force_small_m = false;
  std::vector<std::string> only_shapes;
  bool unblocked = false;
  app.add_option("--k-block", k_block, "blocked small-m kernel: columns per block; 0 = all");
  app.add_flag("--unblocked", unblocked, "m > 1: the unblocked small-m tiles (the old kernel)");
  app.add_option("--tile", tile, "small-m kernel (m > 1): register tile variant (0 = default)");
  std::vector<int> ab_tiles;
  app.add_option("--ab-tiles", ab_tiles,
                 "A/B of small-m variants at each --m and shape, alternating round by round in one "
                 "process (best of --rounds each): tile ids, -1 = unblocked kernel");
  app.add_flag("--force-small-m", force_small_m, "use the small-m kernel at every m");
  app.add_option("--shape", only_shapes, "only these shapes (e.g. 2048x5632 = in x out)");
  app.add_flag("--sweep", sweep,
               "compare the small-m kernel and sgemm for m = 1..32, 48, 64 (gate/up shape)");
  app.add_flag("--blas-threads", blas_threads, "sgemm path: OpenBLAS's own threads");
  app.add_flag("--no-ceilings", no_ceilings, "skip measuring the ceilings (fractions are void)");
  CLI11_PARSE(app, argc, argv);

  kernels::small_m_tuning().k_block = k_block;
  kernels::small_m_tuning().blocked = !unblocked;
  kernels::small_m_tuning().tile = tile;
  if (force_small_m) {
    kernels::linear_tuning().sgemm_min_m_f32 = kernels::linear_tuning().sgemm_min_m_bf16 =
        INT64_MAX;
  }
  ThreadPool pool(threads);
  kernels::linear_tuning().blas_threads = blas_threads;
  kernels::linear_tuning().bf16_panel_rows = panel_rows;
  Ceilings c;
  c.threads = threads;
  c.read_gbps = c.sgemm_gflops = 1;
  if (!no_ceilings) c = measure_ceilings(pool);
  std::printf("%s\n", describe(c).c_str());
  std::fflush(stdout);
  const size_t min_bytes = static_cast<size_t>(min_mb * 1e6);

  if (!ab_tiles.empty()) {
    kernels::linear_tuning().sgemm_min_m_f32 = kernels::linear_tuning().sgemm_min_m_bf16 =
        INT64_MAX;
    std::printf("%-5s %-22s %5s", "dtype", "shape", "m");
    for (int t : ab_tiles)
      std::printf(" %9s", t < 0 ? "unblocked" : fmt::format("tile {}", t).c_str());
    std::printf("  (GFLOP/s, best of %d alternating rounds)\n", rounds);
    for (const auto& name : dtypes) {
      const DType dt = name == "F32" ? DType::F32 : DType::BF16;
      for (const Shape& sh : kShapes) {
        const std::string key = std::to_string(sh.cols) + "x" + std::to_string(sh.rows);
        if (!only_shapes.empty() &&
            std::find(only_shapes.begin(), only_shapes.end(), key) == only_shapes.end())
          continue;
        const WeightSet ws(dt, sh.rows, sh.cols, min_bytes);
        for (int64_t m : ms) {
          std::vector<double> best(ab_tiles.size(), 1e30);
          for (int round = 0; round < rounds; ++round) {
            for (size_t v = 0; v < ab_tiles.size(); ++v) {
              kernels::small_m_tuning().blocked = ab_tiles[v] >= 0;
              kernels::small_m_tuning().tile = std::max(0, ab_tiles[v]);
              best[v] = std::min(best[v], time_linear(ws, m, pool, 1, min_s));
            }
          }
          std::printf("%-5s %-22s %5lld", name.c_str(), sh.name, static_cast<long long>(m));
          for (double b : best)
            std::printf(" %9.1f", 2.0 * static_cast<double>(m * sh.rows * sh.cols) / b / 1e9);
          std::printf("\n");
          std::fflush(stdout);
        }
      }
    }
    return 0;
  }

  if (sweep) {
    std::printf("%-5s %5s %14s %14s  (GFLOP/s, gate/up 2048->5632)\n", "dtype", "m", "small-m",
                "sgemm");
    for (const auto& name : dtypes) {
      const DType dt = name == "F32" ? DType::F32 : DType::BF16;
      const WeightSet ws(dt, 5632, 2048, min_bytes);
      std::vector<int64_t> sweep_ms;
      for (int64_t m = 1; m <= 32; ++m) sweep_ms.push_back(m);
      sweep_ms.push_back(48);
      sweep_ms.push_back(64);
      for (int64_t m : sweep_ms) {
        double g[2];
        for (int path = 0; path < 2; ++path) {
          auto& t = kernels::linear_tuning();
          t.sgemm_min_m_f32 = t.sgemm_min_m_bf16 = path == 0 ? INT64_MAX : 1;
          g[path] = 2.0 * static_cast<double>(m * ws.rows * ws.cols) /
                    time_linear(ws, m, pool, rounds, min_s / 3) / 1e9;
        }
        std::printf("%-5s %5lld %14.1f %14.1f\n", name.c_str(), static_cast<long long>(m), g[0],
                    g[1]);
        std::fflush(stdout);
      }
    }
    return 0;
  }

  std::vector<Row> rows;
  for (const auto& name : dtypes) {
    const DType dt = name == "F32" ? DType::F32 : DType::BF16;
    for (const Shape& sh : kShapes) {
      const std::string key = std::to_string(sh.cols) + "x" + std::to_string(sh.rows);
      if (!only_shapes.empty() &&
          std::find(only_shapes.begin(), only_shapes.end(), key) == only_shapes.end())
        continue;
      const WeightSet ws(dt, sh.rows, sh.cols, min_bytes);
      for (int64_t m : ms) {
        rows.push_back({dt, sh.name, m, ws.bytes(),
                        2.0 * static_cast<double>(m * sh.rows * sh.cols),
                        time_linear(ws, m, pool, rounds, min_s)});
        std::fprintf(stderr, ".");
      }
    }
  }
  std::fprintf(stderr, "\n");
  if (!no_ceilings) {
    // Measured again after the figures; fractions use the higher of the two (conservative).
    const Ceilings end = measure_ceilings(pool);
    std::printf("%s (measured again at the end)\n", describe(end).c_str());
    c = best_of(c, end);
  }
  std::printf("%-5s %-22s %5s %10s %8s %7s %9s %7s\n", "dtype", "shape", "m", "ms/call", "GB/s",
              "%bw", "GFLOP/s", "%sgemm");
  for (const Row& r : rows) print_row(c, r);
  return 0;
}
