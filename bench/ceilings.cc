#include "ceilings.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include <fmt/format.h>

namespace dpserve::bench {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Sum of n floats (n a multiple of 32) with four independent accumulators.
float stream_sum(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

}  // namespace

double measure_read_bandwidth(ThreadPool& pool, size_t bytes, int reps) {
  const size_t n = bytes / sizeof(float) / 256 * 256;
  std::unique_ptr<float, AlignedFree> buf(
      static_cast<float*>(std::aligned_alloc(64, n * sizeof(float))));
  // Touch every page from the threads that will read it.
  pool.parallel_for(
      static_cast<int64_t>(n),
      [&](int64_t b, int64_t e, int) {
        std::memset(buf.get() + b, 0, static_cast<size_t>(e - b) * sizeof(float));
      },
      256);
  std::vector<float> sink(static_cast<size_t>(pool.num_threads()));
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    const double t0 = now_s();
    pool.parallel_for(
        static_cast<int64_t>(n),
        [&](int64_t b, int64_t e, int t) {
          sink[static_cast<size_t>(t)] += stream_sum(buf.get() + b, static_cast<size_t>(e - b));
        },
        256);
    best = std::max(best, static_cast<double>(n * sizeof(float)) / (now_s() - t0) / 1e9);
  }
  if (sink[0] != 0.0f) std::fputs("", stderr);  // keep the sums alive
  return best;
}

double measure_sgemm_blas_threads(ThreadPool& pool, int n, int reps) {
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  openblas_set_num_threads(pool.num_threads());
  double best = 0;
  for (int rep = 0; rep < reps + 1; ++rep) {  // the first run warms up
    const double t0 = now_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
    if (rep > 0) best = std::max(best, 2.0 * n * n * n / (now_s() - t0) / 1e9);
  }
  return best;
}

double measure_sgemm_split(ThreadPool& pool, int n, int reps) {
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  openblas_set_num_threads(1);
  double best = 0;
  for (int rep = 0; rep < reps + 1; ++rep) {
    const double t0 = now_s();
    pool.parallel_for(
        n,
        [&](int64_t r0, int64_t r1, int) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, static_cast<int>(r1 - r0), n,
                      1.0f, a.data(), n, b.data() + r0 * n, n, 0.0f, c.data() + r0, n);
        },
        16);
    if (rep > 0) best = std::max(best, 2.0 * n * n * n / (now_s() - t0) / 1e9);
  }
  return best;
}

Ceilings measure_ceilings(ThreadPool& pool) {
  Ceilings c;
  c.threads = pool.num_threads();
  c.read_gbps = measure_read_bandwidth(pool);
  c.sgemm_blas_gflops = measure_sgemm_blas_threads(pool);
  c.sgemm_split_gflops = measure_sgemm_split(pool);
  c.sgemm_gflops = std::max(c.sgemm_blas_gflops, c.sgemm_split_gflops);
  return c;
}

Ceilings best_of(const Ceilings& a, const Ceilings& b) {
  Ceilings c = a;
  c.read_gbps = std::max(a.read_gbps, b.read_gbps);
  c.sgemm_gflops = std::max(a.sgemm_gflops, b.sgemm_gflops);
  c.sgemm_blas_gflops = std::max(a.sgemm_blas_gflops, b.sgemm_blas_gflops);
  c.sgemm_split_gflops = std::max(a.sgemm_split_gflops, b.sgemm_split_gflops);
  return c;
}

std::string describe(const Ceilings& c) {
  return fmt::format(
      "ceilings ({} threads): memory read {:.1f} GB/s; sgemm 2048^3 {:.1f} GFLOP/s (OpenBLAS "
      "threads {:.1f}, split over pool {:.1f}); load average {:.2f}",
      c.threads, c.read_gbps, c.sgemm_gflops, c.sgemm_blas_gflops, c.sgemm_split_gflops,
      load_average());
}

double load_average() {
  double l = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = -1;
    std::fclose(f);
  }
  return l;
}

}  // namespace dpserve::bench
