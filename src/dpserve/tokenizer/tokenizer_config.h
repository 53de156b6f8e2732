#pragma once
// tokenizer_config.json (optional beside tokenizer.json / tokenizer.model) and JSON file reading.

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/tokenizer/added_tokens.h"

namespace dpserve {

// The fields of tokenizer_config.json that tokenization uses.
struct TokenizerConfig {
  std::optional<bool> add_bos_token;     // prepend BOS when encoding with special tokens
  std::optional<bool> add_eos_token;     // append EOS when encoding with special tokens
  std::optional<std::string> bos_token;  // BOS text
  std::optional<std::string> eos_token;  // EOS text
  std::vector<AddedToken> added_tokens;  // from added_tokens_decoder
};

// Parses a JSON file; throws dpserve::Error naming the file when it cannot be read or parsed.
nlohmann::json read_json_file(const std::string& path);

// Reads tokenizer_config.json at `path`; a missing file gives an empty config. Throws
// dpserve::Error naming the file for malformed content.
TokenizerConfig read_tokenizer_config(const std::string& path);

}  // namespace dpserve
