#pragma once
// ForwardBatch: the input of one model forward, shaped like SGLang's: the new tokens of several
// sequences laid out flat, each sequence's KV slots in the token-to-KV pool given as a CSR list.

#include <cstdint>
#include <vector>

namespace dpserve {

enum class ForwardMode {
  kExtend,  // prefill or chunked prefill: each sequence adds one or more tokens
  kDecode,  // every sequence adds exactly one token
  kIdle,    // no tokens (a DP group with no work still joins the collectives)
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

  int64_t num_tokens() const { return static_cast<int64_t>(input_ids.size()); }
};

}  // namespace dpserve
