#pragma once
// A tokenizer backed by libsentencepiece and a tokenizer.model file (Llama 2 family).

#include <memory>
#include <string>
#include <vector>

#include "dpserve/tokenizer/added_tokens.h"
#include "dpserve/tokenizer/tokenizer.h"
#include "dpserve/tokenizer/tokenizer_config.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace dpserve {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // Loads `model_path` (tokenizer.model) with the already-read tokenizer_config.json `config`.
  // Control pieces (<s>, </s>) and the config's added tokens are matched whole in the text; the
  // plain text between them is encoded by SentencePiece (which adds its dummy-prefix space).
  SentencePieceTokenizer(const std::string& model_path, const TokenizerConfig& config);
  ~SentencePieceTokenizer() override;

  // See Tokenizer.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const override;
  // See Tokenizer. Pieces are joined with "▁" -> " ", byte pieces fused into UTF-8, and the
  // dummy-prefix space of the first piece removed (the same output as tokenizer.json's decoder).
  std::string decode(const std::vector<int32_t>& ids,
                     bool skip_special_tokens = false) const override;
  // See Tokenizer.
  int64_t vocab_size() const override;
  // See Tokenizer.
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  // See Tokenizer.
  std::string id_to_token(int32_t id) const override;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  AddedTokenMatcher added_;
  std::unordered_map<int32_t, std::string> added_by_id_;  // config's added tokens
  bool add_bos_ = true;                                   // prepend BOS with special tokens
  bool add_eos_ = false;                                  // append EOS with special tokens
};

}  // namespace dpserve
