// The MoE layers of LlamaForCausalLM: checkpoint names of Mixtral and Qwen2/3-MoE, and which
// experts (and which slice of each) a rank loads under expert parallelism.

#include <string>

#include "dpserve/common/errors.h"
#include "dpserve/model/models/llama.h"

namespace dpserve {

std::unique_ptr<SparseMoeBlock> LlamaForCausalLM::load_moe_block(int64_t layer,
                                                                 const ModelOptions& options) {
  const ModelConfig& c = config_;
  const int64_t h = c.hidden_size, inter = c.moe_intermediate_size;
  const bool mixtral = c.architecture == "MixtralForCausalLM";
  // Mixtral: block_sparse_moe.{gate, experts.E.w1 (gate) / w3 (up) / w2 (down)};
  // Qwen2/3-MoE: mlp.{gate, experts.E.{gate,up,down}_proj, shared_expert.*, shared_expert_gate}.
  const std::string p =
      "model.layers." + std::to_string(layer) + (mixtral ? ".block_sparse_moe." : ".mlp.");
  const char* gate_name = mixtral ? ".w1.weight" : ".gate_proj.weight";
  const char* up_name = mixtral ? ".w3.weight" : ".up_proj.weight";
  const char* down_name = mixtral ? ".w2.weight" : ".down_proj.weight";

  // Ranks tp_size / ep_size apart hold different experts; the tp_size / ep_size ranks that share
  // an expert range split each expert's intermediate features (SGLang's moe_ep / moe_tp ranks).
  const int moe_tp = tp_size_ / ep_size_;
  const int ep_rank = tp_rank_ / moe_tp, moe_tp_rank = tp_rank_ % moe_tp;
  const ShardRange experts = shard_range(c.num_experts, ep_rank, ep_size_);
  const ShardRange slice = shard_range(inter, moe_tp_rank, moe_tp);

  SparseMoeBlock::Params params;
  params.router = column_part(p + "gate.weight", c.num_experts, h, {0, c.num_experts});
  params.num_experts = c.num_experts;
  params.top_k = c.num_experts_per_tok;
  params.renormalize = c.norm_topk_prob;
  params.first_expert = experts.begin;
  params.group = tp_group_;
  params.impl = options.moe_impl;
  for (int64_t e = experts.begin; e < experts.end; ++e) {
    const std::string q = p + "experts." + std::to_string(e);
    params.experts.push_back({column_part(q + gate_name, inter, h, slice),
                              column_part(q + up_name, inter, h, slice),
                              row_part(q + down_name, h, inter, slice)});
  }
  if (c.shared_expert_intermediate_size > 0) {
    const int64_t si = c.shared_expert_intermediate_size;
    const ShardRange part = shard_range(si, tp_rank_, tp_size_);
    const std::string q = p + "shared_expert.";
    params.shared = ExpertWeights{column_part(q + "gate_proj.weight", si, h, part),
                                  column_part(q + "up_proj.weight", si, h, part),
                                  row_part(q + "down_proj.weight", h, si, part)};
    params.shared_gate = to_f32(weights_->get(p + "shared_expert_gate.weight", {1, h}));
  }
  return std::make_unique<SparseMoeBlock>(std::move(params));
}

}  // namespace dpserve
