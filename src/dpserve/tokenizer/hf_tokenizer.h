#pragma once
// A tokenizer read from a Hugging Face tokenizer.json with a BPE model: byte-level BPE (GPT-2,
// Llama 3, Qwen) and SentencePiece-style BPE with byte fallback (Llama 2 family).
//
// Supported: model BPE (byte_fallback, ignore_merges, unk/fuse_unk); normalizers Sequence, NFC,
// Prepend, Replace, Strip; pre-tokenizers Sequence, Split (all behaviors), ByteLevel; decoders
// Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace; post-processors
// TemplateProcessing, ByteLevel, Bert/Roberta, Sequence. Anything else raises dpserve::Error.
// Known gaps: added tokens are matched on the raw text (their "normalized" flag and
// "single_word" are not honoured); decode() never applies clean_up_tokenization_spaces;
// BPE dropout, continuing_subword_prefix and end_of_word_suffix are ignored.

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "dpserve/tokenizer/added_tokens.h"
#include "dpserve/tokenizer/bpe.h"
#include "dpserve/tokenizer/hf_components.h"
#include "dpserve/tokenizer/tokenizer.h"
#include "dpserve/tokenizer/tokenizer_config.h"

namespace dpserve {

class HfTokenizer : public Tokenizer {
 public:
  // Loads `json_path` (tokenizer.json) with the already-read tokenizer_config.json `config`.
  // Throws dpserve::Error naming the file on a malformed or unsupported tokenizer.
  HfTokenizer(const std::string& json_path, const TokenizerConfig& config);

  // See Tokenizer.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const override;
  // See Tokenizer.
  std::string decode(const std::vector<int32_t>& ids,
                     bool skip_special_tokens = false) const override;
  // See Tokenizer.
  int64_t vocab_size() const override { return vocab_size_; }
  // See Tokenizer.
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  // See Tokenizer.
  std::string id_to_token(int32_t id) const override;

 private:
  void load_post_processor(const nlohmann::json& j, const std::string& path);
  void add_token(const AddedToken& tok);

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Decoder> decoder_;
  AddedTokenMatcher added_;
  std::unordered_map<int32_t, std::string> added_by_id_;  // added token id -> content
  TokenIdMap added_by_content_;                           // added token content -> id
  std::vector<int32_t> prefix_ids_;  // added before the text with add_special_tokens (BOS)
  std::vector<int32_t> suffix_ids_;  // added after the text with add_special_tokens (EOS)
  int64_t vocab_size_ = 0;
};

}  // namespace dpserve
