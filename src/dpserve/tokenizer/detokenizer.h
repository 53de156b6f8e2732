#pragma once
// Incremental detokenization for streaming: feed generated token ids one at a time and get back
// the text they complete, never half a UTF-8 character.

#include <cstdint>
#include <string>
#include <vector>

#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {

class IncrementalDetokenizer {
 public:
  // `tokenizer` must outlive this object. `prompt_ids` (optional) give the context the generated
  // tokens follow (so SentencePiece's leading-space handling matches decode(prompt + generated));
  // their text is not emitted.
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens = false,
                                  std::vector<int32_t> prompt_ids = {});

  // Adds one token and returns the newly completed text (possibly empty while a multi-byte
  // character is still incomplete).
  std::string add(int32_t id);

  // Returns whatever text is still held back (an incomplete character decodes as U+FFFD). After
  // flush, the concatenation of all returned pieces equals decode(generated ids).
  std::string flush();

  // All text emitted so far.
  const std::string& text() const { return text_; }

  // All ids added so far (prompt ids first).
  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  std::string decode_range(size_t begin, size_t end) const;

  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // prompt + generated ids
  size_t prefix_offset_;      // start of the decode window (a clean character boundary)
  size_t read_offset_;        // ids before this are emitted
  std::string text_;          // emitted text
};

}  // namespace dpserve
