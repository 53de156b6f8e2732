#pragma once
// Roofline arithmetic shared by the model benchmarks: what one forward of a model costs in weight
// bytes and flops, and the tokens/s or seconds the measured ceilings allow for it.

#include <cstdint>
#include <string>

#include "ceilings.h"
#include "dpserve/model/model_config.h"

namespace dpserve::bench {

// Weight bytes and parameter counts of a model's linear layers (what a forward streams).
struct LinearCost {
  double layer_params = 0;     // all decoder layers' q/k/v/o/gate/up/down
  double head_params = 0;      // lm_head (vocab · hidden, tied or not)
  double bytes_per_param = 4;  // 2 for BF16 matrices, 4 for F32 (F16 is widened at load)
  double attn_width = 0;       // layers · heads · head_dim: attention flops = 4 · this · pairs

  // Bytes of every linear matrix (lm_head included), streamed once per decode step.
  double weight_bytes() const { return (layer_params + head_params) * bytes_per_param; }
  // Flops of the linear layers for `tokens` new tokens of which `logit_rows` need logits.
  double linear_flops(double tokens, double logit_rows) const {
    return 2.0 * layer_params * tokens + 2.0 * head_params * logit_rows;
  }
};

// The cost of the model in `model_dir` (config already parsed into `c`); reads the dtype of one
// layer matrix from the checkpoint.
LinearCost linear_cost(const ModelConfig& c, const std::string& model_dir);

// Decode roofline in tokens/s for `batch` sequences (one new token each, logits for each):
// min(read bandwidth / weight bytes, SGEMM rate / linear flops) · batch, attention left out.
struct DecodeRoofline {
  double bandwidth_tps = 0;  // bound by streaming the weights once per step
  double flops_tps = 0;      // bound by the SGEMM rate
  double tps = 0;            // the lower of the two
  // Seconds of one decode step at the roofline.
  double step_s(int64_t batch) const { return tps > 0 ? static_cast<double>(batch) / tps : 0; }
};
DecodeRoofline decode_roofline(const Ceilings& c, const LinearCost& lc, int64_t batch);

// Flops of prefilling one sequence of n tokens from scratch with logits for its last token:
// linear layers plus causal attention 4 · layers · heads · head_dim · n(n+1)/2 (QKᵀ and PV).
double prefill_flops(const LinearCost& lc, int64_t n);

// Seconds a prefill of `tokens` new tokens over `logit_rows` sequences takes at the SGEMM
// ceiling, counting the linear layers only (attention left out, so the fraction is conservative).
double prefill_linear_roofline_s(const Ceilings& c, const LinearCost& lc, int64_t tokens,
                                 int64_t logit_rows);

}  // namespace dpserve::bench
