#pragma once
// Tokenizers: text <-> token ids for the models dpserve serves. load_tokenizer() picks the
// implementation from what a model directory holds (tokenizer.json, else tokenizer.model).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

namespace dpserve {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`; with add_special_tokens, BOS/EOS are added as the tokenizer's
  // configuration says (tokenizer_config.json's add_bos_token/add_eos_token, else the
  // post-processor of tokenizer.json). Special tokens written in the text are always recognized.
  virtual std::vector<int32_t> encode(std::string_view text,
                                      bool add_special_tokens = true) const = 0;

  // Text of `ids` (invalid UTF-8 from partial byte tokens becomes U+FFFD); with
  // skip_special_tokens, special tokens are left out. Unknown ids are ignored.
  virtual std::string decode(const std::vector<int32_t>& ids,
                             bool skip_special_tokens = false) const = 0;

  // One past the largest token id (including added tokens).
  virtual int64_t vocab_size() const = 0;

  // Id of a vocabulary or added token given as its vocabulary string (e.g. "Ġthe", "<s>").
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;

  // Vocabulary string of `id` ("" for an unknown id).
  virtual std::string id_to_token(int32_t id) const = 0;

  // Id of the beginning-of-sequence token, or -1 if the tokenizer has none.
  int32_t bos_token_id() const { return bos_token_id_; }

  // Ids that end generation (tokenizer_config.json's eos_token; callers may add more).
  const std::vector<int32_t>& eos_token_ids() const { return eos_token_ids_; }

  // Text of the BOS token ("" if none), as chat templates use it.
  const std::string& bos_token() const { return bos_token_; }

  // Text of the EOS token ("" if none), as chat templates use it.
  const std::string& eos_token() const { return eos_token_; }

  // True for special tokens (control tokens; added tokens marked "special").
  bool is_special(int32_t id) const { return special_ids_.count(id) != 0; }

 protected:
  int32_t bos_token_id_ = -1;                // -1: none
  std::vector<int32_t> eos_token_ids_;       // empty: none
  std::string bos_token_;                    // text of the BOS token
  std::string eos_token_;                    // text of the EOS token
  std::unordered_set<int32_t> special_ids_;  // ids that decode(skip_special_tokens) drops
};

// Loads the tokenizer of a model directory: tokenizer.json (Hugging Face tokenizers format) if
// present, else tokenizer.model (SentencePiece); tokenizer_config.json is read when present.
// Throws dpserve::Error naming the file and the problem.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);

}  // namespace dpserve
