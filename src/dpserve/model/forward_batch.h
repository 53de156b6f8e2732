#pragma once
// ForwardBatch: the input of one model forward, shaped like SGLang's: the new tokens of several
// sequences laid out flat, each sequence's KV slots in the token-to-KV pool given as a CSR list.

#include <cstdint>
#include <vector>

namespace dpserve {

enum class ForwardMode {
  kExtend,  // prefill or chunked prefill: each sequence adds one or more tokens
  kDecode,  // every sequence adds exactly one token
  kIdle,    // no tokens: under DP attention a group with no work still runs forward (batch_size 0)
            // so that it joins the MLP's collectives; it computes no attention and no logits
};

struct ForwardBatch {
  ForwardMode mode = ForwardMode::kExtend;
  int batch_size = 0;  // number of sequences

  // Flat over all new tokens of all sequences, sequence after sequence (length = num_tokens()).
  std::vector<int32_t> input_ids;      // token ids
  std::vector<int32_t> positions;      // position of each token in its sequence
  std::vector<int32_t> out_cache_loc;  // KV slot each new token's K/V is written to

  // Per sequence (length batch_size).
  std::vector<int32_t> seq_lens;            // total length after this step: prefix + new tokens
  std::vector<int32_t> extend_prefix_lens;  // tokens already in the KV cache before this step
  std::vector<int32_t> extend_seq_lens;     // new tokens this step (1 for decode)

  // KV slots of every token of sequence b (prefix and new, in order) are
  // kv_indices[kv_indptr[b] .. kv_indptr[b+1]); kv_indptr has batch_size + 1 entries and
  // kv_indptr[b+1] - kv_indptr[b] == seq_lens[b].
  std::vector<int32_t> kv_indptr;
  std::vector<int32_t> kv_indices;

  // When true the forward returns logits for every new token; otherwise only for the last new
  // token of each sequence.
  bool return_all_logits = false;

  // DP attention only (ignored otherwise). The tokens of this step, num_tokens(), of every DP
  // group in attn_dp_rank order: the same vector on every rank of the model instance, with
  // global_num_tokens[attn_dp_rank] == num_tokens(). The MLP runs over the rows of all groups and
  // dp_gather places group g's rows at the sum of the counts before g. The scheduler fills it
  // from its per-step all-gather of (token count, extend flag) (SGLang's prepare_mlp_sync_batch);
  // empty means the model all-gathers the two numbers over the dp group itself (tests, callers
  // without a step sync).
  std::vector<int64_t> global_num_tokens;
  // DP attention, with global_num_tokens: whether any DP group runs an extend (prefill) this
  // step; it selects the DP padding mode (SUM_LEN when true).
  bool is_extend_in_batch = false;

  int64_t num_tokens() const { return static_cast<int64_t>(input_ids.size()); }
};

}  // namespace dpserve
