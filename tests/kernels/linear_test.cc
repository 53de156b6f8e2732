#include "dpserve/kernels/cpu/linear.h"
#include "dpserve/kernels/cpu/gemv.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "dpserve/common/dtype.h"
#include "dpserve/common/thread_pool.h"
#include "dpserve/kernels/cpu/gemv.h"

namespace dpserve::kernels {
namespace {

// Restores the process-wide tuning when a test ends.
class TuningGuard {
 public:
  TuningGuard() : saved_(linear_tuning()) {}
  ~TuningGuard() { linear_tuning() = saved_; }

 private:
  LinearTuning saved_;
};

// A random problem with the weights stored both as given to linear() and as doubles.
struct Problem {
  int64_t m, rows, cols;
  DType dtype;
  std::vector<float> x, bias;
  std::vector<float> wf;     // F32 weights
  std::vector<uint16_t> wb;  // BF16 weights
  std::vector<double> wd;    // the same weights, exactly, as doubles

  Problem(int64_t m_, int64_t rows_, int64_t cols_, DType dt, uint32_t seed)
      : m(m_), rows(rows_), cols(cols_), dtype(dt) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    x.resize(static_cast<size_t>(m * cols));
    for (auto& v : x) v = u(rng);
    bias.resize(static_cast<size_t>(rows));
    for (auto& v : bias) v = u(rng);
    wd.resize(static_cast<size_t>(rows * cols));
    if (dt == DType::F32) {
      wf.resize(wd.size());
      for (size_t i = 0; i < wf.size(); ++i) wd[i] = wf[i] = u(rng);
    } else {
      wb.resize(wd.size());
      for (size_t i = 0; i < wb.size(); ++i) {
        wb[i] = f32_to_bf16(u(rng));
        wd[i] = bf16_to_f32(wb[i]);
      }
    }
  }

  WeightMatrix weights() const {
    return {dtype, rows, cols,
            dtype == DType::F32 ? static_cast<const void*>(wf.data()) : wb.data()};
  }

  // Checks y against a double-precision reference; tolerance 1e-5·sqrt(cols) relative to the
  // root-sum-square of the products (the natural scale of rounding errors in a dot product).
  void check(const std::vector<float>& y, bool with_bias, const std::string& what) const {
    int bad = 0;
    for (int64_t i = 0; i < m && bad < 5; ++i) {
      for (int64_t r = 0; r < rows && bad < 5; ++r) {
        double ref = with_bias ? bias[r] : 0.0, scale = with_bias ? std::fabs(bias[r]) : 0.0;
        double sq = 0.0;
        for (int64_t c = 0; c < cols; ++c) {
          const double p = static_cast<double>(x[i * cols + c]) * wd[r * cols + c];
          ref += p;
          sq += p * p;
        }
        scale += std::sqrt(sq) + 1e-30;
        const double err = std::fabs(y[i * rows + r] - ref);
        if (err > 1e-5 * std::sqrt(static_cast<double>(cols)) * scale) {
          ADD_FAILURE() << what << ": y[" << i << "," << r << "] = " << y[i * rows + r]
                        << " expected " << ref;
          ++bad;
        }
      }
    }
  }
};

enum class Path { kDefault, kSmallM, kSgemm, kSgemmBlasThreads };

const char* path_name(Path p) {
  switch (p) {
    case Path::kDefault:
      return "default";
    case Path::kSmallM:
      return "small-m";
    case Path::kSgemm:
      return "sgemm";
    default:
      return "sgemm-blas-threads";
  }
}

void set_path(Path p) {
  LinearTuning& t = linear_tuning();
  t = LinearTuning{};
  if (p == Path::kSmallM) {
    t.sgemm_min_m_f32 = t.sgemm_min_m_bf16 = INT64_MAX;
    t.chunks_per_thread = 3;  // the default path runs with the default chunking
  }
  if (p == Path::kSgemm || p == Path::kSgemmBlasThreads) t.sgemm_min_m_f32 = t.sgemm_min_m_bf16 = 1;
  if (p == Path::kSgemmBlasThreads) t.blas_threads = true;
  t.bf16_panel_rows = 48;  // several panels per thread even for small shapes
}

void run_cases(DType dtype, const std::vector<Path>& paths, const std::vector<int>& threads,
               const std::vector<int64_t>& ms,
               const std::vector<std::pair<int64_t, int64_t>>& shapes) {
  TuningGuard guard;
  uint32_t seed = 1;
  for (int64_t m : ms) {
    for (auto [rows, cols] : shapes) {
      const Problem p(m, rows, cols, dtype, seed++);
      const bool with_bias = (seed % 2) == 0;
      for (int nt : threads) {
        ThreadPool pool(nt);
        for (Path path : paths) {
          set_path(path);
          std::vector<float> y(static_cast<size_t>(m * rows), NAN);
          linear(p.x.data(), m, p.weights(), with_bias ? p.bias.data() : nullptr, y.data(), pool);
          p.check(y, with_bias,
                  fmt::format("{} {} m={} rows={} cols={} threads={} bias={}", dtype_name(dtype),
                              path_name(path), m, rows, cols, nt, with_bias));
        }
      }
    }
  }
}

const std::vector<int64_t> kMs = {1, 2, 3, 7, 16, 17, 64, 300};
const std::vector<std::pair<int64_t, int64_t>> kShapes = {{1, 1},     {5, 33},  {33, 5}, {172, 513},
                                                          {513, 172}, {17, 64}, {9, 100}};

TEST(Linear, F32AllPaths) {
  run_cases(DType::F32, {Path::kDefault, Path::kSmallM, Path::kSgemm}, {1, 2, 3}, kMs, kShapes);
}

TEST(Linear, BF16AllPaths) {
  run_cases(DType::BF16, {Path::kDefault, Path::kSmallM, Path::kSgemm}, {1, 2, 3}, kMs, kShapes);
}

TEST(Linear, SmallMBlockedVariants) {
  // Every register tile of the blocked m > 1 kernel, column blocks smaller than, equal to and
  // larger than the row (tails in rows, columns and m), and the unblocked tiles.
  struct SmallMGuard {
    SmallMTuning saved = small_m_tuning();
    ~SmallMGuard() { small_m_tuning() = saved; }
  } small_guard;
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {5, 33}, {172, 513}, {37, 100}, {64, 48}, {9, 16}};
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int tile = 0; tile < 4; ++tile) {
      for (int64_t kb : {16, 48, 256, 0}) {
        small_m_tuning() = SmallMTuning{};
        small_m_tuning().tile = tile;
        small_m_tuning().k_block = kb;
        run_cases(dt, {Path::kSmallM}, {1, 2}, {2, 3, 5, 7, 16, 17}, shapes);
      }
    }
    small_m_tuning() = SmallMTuning{};
    small_m_tuning().blocked = false;
    run_cases(dt, {Path::kSmallM}, {2}, {2, 3, 5, 16, 17}, shapes);
  }
}

TEST(Linear, SgemmWithBlasThreads) {
  for (DType dt : {DType::F32, DType::BF16})
    run_cases(dt, {Path::kSgemmBlasThreads}, {1, 2}, {1, 17, 64},
              {{5, 33}, {172, 513}, {513, 172}});
}

TEST(Linear, WithAndWithoutBiasAgree) {
  // Same problem with both bias settings on both paths, at a model-like width.
  TuningGuard guard;
  ThreadPool pool(2);
  for (DType dt : {DType::F32, DType::BF16}) {
    const Problem p(5, 67, 2048 + 24, dt, 7);
    for (Path path : {Path::kSmallM, Path::kSgemm}) {
      set_path(path);
      for (bool with_bias : {false, true}) {
        std::vector<float> y(static_cast<size_t>(p.m * p.rows));
        linear(p.x.data(), p.m, p.weights(), with_bias ? p.bias.data() : nullptr, y.data(), pool);
        p.check(y, with_bias,
                fmt::format("{} {} bias={}", dtype_name(dt), path_name(path), with_bias));
      }
    }
  }
}

TEST(Linear, EmptyShapes) {
  ThreadPool pool(2);
  const float bias[3] = {1.0f, 2.0f, 3.0f};
  float y[6] = {0, 0, 0, 0, 0, 0};
  // cols == 0: the result is the bias (or zero).
  linear(nullptr, 2, {DType::F32, 3, 0, nullptr}, bias, y, pool);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[5], 3.0f);
  linear(nullptr, 2, {DType::BF16, 3, 0, nullptr}, nullptr, y, pool);
  EXPECT_EQ(y[4], 0.0f);
  // m == 0 or rows == 0: nothing is written.
  y[0] = 42.0f;
  linear(nullptr, 0, {DType::F32, 3, 4, nullptr}, bias, y, pool);
  linear(nullptr, 2, {DType::F32, 0, 4, nullptr}, bias, y, pool);
  EXPECT_EQ(y[0], 42.0f);
}

}  // namespace
}  // namespace dpserve::kernels
