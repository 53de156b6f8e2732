#pragma once
// The pipeline stages of a tokenizer.json: normalizers, pre-tokenizers and decoders, built from
// their JSON objects. Unsupported types raise dpserve::Error naming the file and the type.

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dpserve {

// Rewrites the text of a segment before pre-tokenization (NFC, Prepend, Replace, ...).
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Normalizes `text` in place.
  virtual void normalize(std::string& text) const = 0;
};

// Splits normalized text into words that the model encodes separately (Split, ByteLevel, ...).
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` with their finer split.
  virtual void pre_tokenize(std::vector<std::string>& pieces) const = 0;
};

// Turns token strings back into text (ByteLevel, Replace, ByteFallback, Fuse, Strip, ...).
class Decoder {
 public:
  virtual ~Decoder() = default;
  // Transforms the token strings in place (a step may fuse them into fewer strings).
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// Builds the normalizer of tokenizer.json's "normalizer" (null: nullptr). `path` names errors.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& path);

// Builds the pre-tokenizer of "pre_tokenizer" (null: nullptr).
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& path);

// Builds the decoder of "decoder" (null: nullptr).
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& path);

}  // namespace dpserve
