// Incremental detokenization: decode a window of already-emitted tokens together with the new
// ones and emit the part of the text that the new tokens add, once it ends on a whole character.

#include "dpserve/tokenizer/detokenizer.h"

#include "dpserve/tokenizer/unicode.h"

namespace dpserve {
namespace {

// Tokens of context decoded before the first new token (enough for the leading-space rules).
constexpr size_t kPromptContext = 5;

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens,
                                               std::vector<int32_t> prompt_ids)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens), ids_(std::move(prompt_ids)) {
  read_offset_ = ids_.size();
  prefix_offset_ = ids_.size() > kPromptContext ? ids_.size() - kPromptContext : 0;
}

std::string IncrementalDetokenizer::decode_range(size_t begin, size_t end) const {
  if (begin >= end) return {};
  const std::vector<int32_t> window(ids_.begin() + static_cast<std::ptrdiff_t>(begin),
                                    ids_.begin() + static_cast<std::ptrdiff_t>(end));
  return tokenizer_.decode(window, skip_special_);
}

std::string IncrementalDetokenizer::add(int32_t id) {
  ids_.push_back(id);
  const std::string prefix = decode_range(prefix_offset_, read_offset_);
  const std::string full = decode_range(prefix_offset_, ids_.size());
  // Hold back while the new text ends in a cut-off character (decoded as U+FFFD), or while it
  // does not extend the prefix text yet.
  if (full.size() <= prefix.size() || ends_with_replacement_char(full) ||
      incomplete_utf8_suffix(full) != 0 || full.compare(0, prefix.size(), prefix) != 0) {
    return {};
  }
  std::string piece = full.substr(prefix.size());
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  text_ += piece;
  return piece;
}

std::string IncrementalDetokenizer::flush() {
  if (read_offset_ >= ids_.size()) return {};
  const std::string prefix = decode_range(prefix_offset_, read_offset_);
  const std::string full = decode_range(prefix_offset_, ids_.size());
  std::string piece =
      full.compare(0, prefix.size(), prefix) == 0 ? full.substr(prefix.size()) : std::string();
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  text_ += piece;
  return piece;
}

}  // namespace dpserve
