#pragma once
// Added tokens (special tokens like <|im_start|>, and others) and the matcher that finds them in
// text before normalization and pre-tokenization.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dpserve {

// An entry of tokenizer.json's "added_tokens" or tokenizer_config.json's "added_tokens_decoder".
struct AddedToken {
  int32_t id = -1;          // token id
  std::string content;      // text that stands for the token
  bool special = false;     // dropped by decode(skip_special_tokens)
  bool lstrip = false;      // swallows whitespace on its left
  bool rstrip = false;      // swallows whitespace on its right
  bool normalized = false;  // matched after normalization (we match all on the raw text)
};

// A piece of text: either plain text to tokenize or one added token.
struct TextSegment {
  std::string_view text;  // the text (for an added token: its content in the input)
  int32_t token_id;       // the added token's id, or -1 for plain text
};

// Leftmost-longest matcher of added tokens' contents over a byte trie.
class AddedTokenMatcher {
 public:
  // Adds (or replaces, by content) a token to match.
  void add(const AddedToken& token);

  // True when no token was added.
  bool empty() const { return tokens_.empty(); }

  // Splits `text` into plain segments and added tokens (lstrip/rstrip remove the adjacent
  // whitespace from the neighbouring plain segments); empty plain segments are dropped.
  std::vector<TextSegment> split(std::string_view text) const;

  // The tokens added so far.
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;  // byte -> node index
    int32_t token = -1;                                       // index into tokens_ or -1
  };
  int32_t child(int32_t node, unsigned char b) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_{Node{}};
  bool first_byte_[256] = {};  // bytes that can start a match
};

}  // namespace dpserve
