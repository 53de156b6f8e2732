#include "roofline.h"

#include <algorithm>

#include "dpserve/common/dtype.h"
#include "dpserve/model/safetensors.h"

namespace dpserve::bench {

LinearCost linear_cost(const ModelConfig& c, const std::string& model_dir) {
  LinearCost lc;
  const double h = static_cast<double>(c.hidden_size);
  const double q = static_cast<double>(c.num_attention_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double inter = static_cast<double>(c.intermediate_size);
  lc.layer_params =
      static_cast<double>(c.num_hidden_layers) * (h * q + 2 * h * kv + q * h + 3 * h * inter);
  lc.head_params = static_cast<double>(c.vocab_size) * h;
  lc.attn_width = static_cast<double>(c.num_hidden_layers) * q;
  // Matrices are used as stored, except F16, which the loader widens to F32.
  const WeightStore store(model_dir);
  const DType dt = store.get("model.layers.0.mlp.down_proj.weight").dtype;
  lc.bytes_per_param = dt == DType::BF16 ? 2 : 4;
  return lc;
}

DecodeRoofline decode_roofline(const Ceilings& c, const LinearCost& lc, int64_t batch) {
  DecodeRoofline r;
  const double b = static_cast<double>(batch);
  r.bandwidth_tps = c.read_gbps * 1e9 / lc.weight_bytes() * b;
  r.flops_tps = c.sgemm_gflops * 1e9 / (2.0 * (lc.layer_params + lc.head_params));
  r.tps = std::min(r.bandwidth_tps, r.flops_tps);
  return r;
}

double prefill_flops(const LinearCost& lc, int64_t n) {
  const double nn = static_cast<double>(n);
  return lc.linear_flops(nn, 1) + 4.0 * lc.attn_width * nn * (nn + 1) / 2;
}

double prefill_linear_roofline_s(const Ceilings& c, const LinearCost& lc, int64_t tokens,
                                 int64_t logit_rows) {
  return lc.linear_flops(static_cast<double>(tokens), static_cast<double>(logit_rows)) /
         (c.sgemm_gflops * 1e9);
}

}  // namespace dpserve::bench
