#pragma once
// This machine's performance ceilings, measured at benchmark start so that every figure can be
// printed beside the roofline it is bounded by.

#include <cstddef>
#include <string>

#include "dpserve/common/thread_pool.h"

namespace dpserve::bench {

// Measured ceilings for a given thread count.
struct Ceilings {
  int threads = 1;                // threads the ceilings were measured with
  double read_gbps = 0;           // streaming memory read bandwidth, GB/s (1e9 bytes/s)
  double sgemm_gflops = 0;        // best SGEMM rate, GFLOP/s (max of the two ways below)
  double sgemm_blas_gflops = 0;   // one OpenBLAS call with OpenBLAS's own `threads` threads
  double sgemm_split_gflops = 0;  // single-threaded OpenBLAS on each pool thread, N split
};

// Best-of-`reps` memory read bandwidth in GB/s: the pool's threads sum disjoint parts of a
// `bytes`-sized buffer (much larger than the last-level cache) with AVX2 loads.
double measure_read_bandwidth(ThreadPool& pool, size_t bytes = size_t{1} << 30, int reps = 5);

// Best-of-`reps` GFLOP/s of an n×n×n OpenBLAS sgemm using OpenBLAS's own threads (set to
// pool.num_threads()); leaves OpenBLAS at that thread count.
double measure_sgemm_blas_threads(ThreadPool& pool, int n = 2048, int reps = 5);

// Best-of-`reps` GFLOP/s of an n×n×n sgemm computed as one single-threaded OpenBLAS call per pool
// thread, each on its own block of output columns (the way linear() runs sgemm).
double measure_sgemm_split(ThreadPool& pool, int n = 2048, int reps = 5);

// Measures all ceilings with the pool's threads (a few seconds).
Ceilings measure_ceilings(ThreadPool& pool);

// Per-field maximum of two measurements of the same ceilings: on a shared machine every figure
// is best-of-several, and taking the highest ceiling keeps the fractions of roofline conservative.
Ceilings best_of(const Ceilings& a, const Ceilings& b);

// One line describing the ceilings, e.g. "ceilings (2 threads): read 30.1 GB/s, sgemm 160 GFLOP/s".
std::string describe(const Ceilings& c);

// The 1-minute load average from /proc/loadavg (negative when unavailable), to flag noisy runs.
double load_average();

}  // namespace dpserve::bench
