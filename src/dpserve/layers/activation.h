#pragma once
// SwiGLU activation of the Llama MLP: out = silu(gate) * up.

#include <cstdint>

#include "dpserve/common/thread_pool.h"

namespace dpserve {

// out[i] = silu(gate[i]) * up[i] for n elements (silu(x) = x / (1 + exp(-x))). out may equal
// gate or up. pool may be null.
void silu_and_mul(const float* gate, const float* up, int64_t n, float* out, ThreadPool* pool);

}  // namespace dpserve
