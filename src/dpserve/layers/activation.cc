#include "dpserve/layers/activation.h"

#include "dpserve/layers/vec_math.h"

namespace dpserve {
namespace {

void silu_mul_range(const float* gate, const float* up, int64_t i0, int64_t i1, float* out) {
  int64_t i = i0;
#ifdef DPSERVE_HAVE_AVX2
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 zero = _mm256_setzero_ps();
  for (; i + 8 <= i1; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = vec::exp8(_mm256_sub_ps(zero, g));
    const __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
  }
#endif
  for (; i < i1; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace

void silu_and_mul(const float* gate, const float* up, int64_t n, float* out, ThreadPool* pool) {
  if (pool == nullptr || pool->num_threads() == 1 || n < 65536) {
    silu_mul_range(gate, up, 0, n, out);
    return;
  }
  pool->parallel_for(
      n, [&](int64_t i0, int64_t i1, int) { silu_mul_range(gate, up, i0, i1, out); }, 64);
}

}  // namespace dpserve
