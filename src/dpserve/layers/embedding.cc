#include "dpserve/layers/embedding.h"

#include <cstring>

#include "dpserve/common/errors.h"

namespace dpserve {

Embedding::Embedding(const kernels::WeightMatrix& table) : table_(table) {
  DPSERVE_CHECK(table.dtype == DType::F32 || table.dtype == DType::BF16,
                "embedding table must be F32 or BF16 (F16 is converted at load)");
  DPSERVE_CHECK(table.rows > 0 && table.cols > 0 && table.data != nullptr, "empty embedding");
}

void Embedding::forward(const int32_t* ids, int64_t n, float* out) const {
  const int64_t dim = table_.cols;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t id = ids[t];
    if (id < 0 || id >= table_.rows) {
      throw_error("token id {} is outside the vocabulary [0, {})", id, table_.rows);
    }
    float* o = out + t * dim;
    if (table_.dtype == DType::F32) {
      std::memcpy(o, static_cast<const float*>(table_.data) + id * dim, dim * sizeof(float));
    } else {
      const uint16_t* row = static_cast<const uint16_t*>(table_.data) + id * dim;
      for (int64_t i = 0; i < dim; ++i) o[i] = bf16_to_f32(row[i]);
    }
  }
}

}  // namespace dpserve
