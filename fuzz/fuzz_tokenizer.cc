// Fuzz target: the real Qwen3 and Llama 3 tokenizers (byte-level BPE from ../shared/tokenizers,
// loaded once) encoding arbitrary bytes and decoding arbitrary id sequences.
//
// Input: byte 0 picks the tokenizer (bit 0: Qwen3 / Llama 3) and the flags (bit 1:
// add_special_tokens, bit 2: skip_special_tokens); the remaining bytes are the text, and are
// also read as token ids, 4 bytes each (see below: valid ids, negative ones, ids past the
// vocabulary).
// Properties:
// - encode never fails; every id lies in [0, vocab_size);
// - decode never fails and returns valid UTF-8; unknown ids are ignored (decoding the ids with
//   the unknown ones removed gives the same text);
// - round trip without special tokens: Llama 3 (no normalizer) gives back the text exactly
//   (invalid UTF-8 first becomes U+FFFD, as encode documents); Qwen3 (NFC normalizer) gives back
//   text that is already in NFC exactly;
// - with add_special_tokens the added BOS/EOS are special: skipping specials decodes both
//   encodings to the same text;
// - IncrementalDetokenizer: the pieces of add() plus flush() concatenate to decode(ids);
// - id_to_token / token_to_id agree for every known id.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dpserve/common/utf8.h"
#include "dpserve/tokenizer/detokenizer.h"
#include "dpserve/tokenizer/tokenizer.h"
#include "dpserve/tokenizer/unicode.h"
#include "fuzz_common.h"

namespace dpserve {
namespace {

struct Loaded {
  std::string name;                // "qwen3" or "llama3"
  std::unique_ptr<Tokenizer> tok;  // the tokenizer
  bool nfc = false;                // its normalizer is NFC
};

const std::vector<Loaded>& tokenizers() {
  static const std::vector<Loaded>* loaded = [] {
    auto* v = new std::vector<Loaded>();
    v->push_back({"qwen3", load_tokenizer(fuzz::shared_dir() + "/tokenizers/qwen3"), true});
    v->push_back({"llama3", load_tokenizer(fuzz::shared_dir() + "/tokenizers/llama3"), false});
    return v;
  }();
  return *loaded;
}

void check_encode(const Loaded& t, std::string_view text, bool add_special, bool skip_special) {
  const Tokenizer& tok = *t.tok;
  const std::vector<int32_t> ids = tok.encode(text, add_special);
  for (int32_t id : ids) {
    FUZZ_CHECK(id >= 0 && id < tok.vocab_size(), "{}: encode gave id {}", t.name, id);
  }
  const std::string back = tok.decode(ids, skip_special);
  FUZZ_CHECK(is_valid_utf8(back), "{}: decode gave invalid UTF-8", t.name);
  if (!add_special && !skip_special) {
    const std::string valid = is_valid_utf8(text) ? std::string(text) : sanitize_utf8(text);
    if (!t.nfc) {
      FUZZ_CHECK(back == valid, "{}: decode(encode(text)) != text", t.name);
    } else if (nfc_normalize(valid) == valid) {
      FUZZ_CHECK(back == valid, "{}: decode(encode(nfc text)) != text", t.name);
    }
  }
  if (add_special && skip_special) {
    const std::string plain = tok.decode(tok.encode(text, false), true);
    FUZZ_CHECK(back == plain, "{}: added BOS/EOS changed the text without specials", t.name);
  }
}

void check_decode(const Loaded& t, const std::vector<int32_t>& ids, bool skip_special) {
  const Tokenizer& tok = *t.tok;
  const std::string text = tok.decode(ids, skip_special);
  FUZZ_CHECK(is_valid_utf8(text), "{}: decode gave invalid UTF-8", t.name);
  std::vector<int32_t> known;
  for (int32_t id : ids) {
    if (id >= 0 && id < tok.vocab_size() && !tok.id_to_token(id).empty()) known.push_back(id);
  }
  FUZZ_CHECK(tok.decode(known, skip_special) == text, "{}: unknown ids changed the text", t.name);

  IncrementalDetokenizer detok(tok, skip_special);
  std::string streamed;
  for (int32_t id : ids) streamed += detok.add(id);
  streamed += detok.flush();
  FUZZ_CHECK(streamed == text, "{}: incremental detokenization differs from decode", t.name);

  for (int32_t id : ids) {
    const std::string piece = tok.id_to_token(id);
    if (id < 0 || id >= tok.vocab_size()) {
      FUZZ_CHECK(piece.empty(), "{}: id {} outside the vocabulary has a token", t.name, id);
      continue;
    }
    if (piece.empty()) continue;
    const std::optional<int32_t> back = tok.token_to_id(piece);
    FUZZ_CHECK(back.has_value() && tok.id_to_token(*back) == piece,
               "{}: token_to_id(id_to_token({})) does not map back", t.name, id);
  }
}

}  // namespace
}  // namespace dpserve

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  dpserve::tokenizers();  // load once, before the first input
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  const dpserve::Loaded& t = dpserve::tokenizers()[flags & 1];
  const bool add_special = (flags & 2) != 0;
  const bool skip_special = (flags & 4) != 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  dpserve::check_encode(t, text, add_special, skip_special);

  // 4 bytes per id: with the top bit of the last byte set, the raw int32 (mostly far outside the
  // vocabulary, negative included); else the low 24 bits modulo vocab_size + 64 (mostly valid).
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 4 <= text.size(); i += 4) {
    int32_t raw;
    std::memcpy(&raw, text.data() + i, 4);
    const auto u = static_cast<uint32_t>(raw);
    ids.push_back((u & 0x80000000u) != 0
                      ? raw
                      : static_cast<int32_t>((u & 0xFFFFFFu) % (t.tok->vocab_size() + 64)));
  }
  dpserve::check_decode(t, ids, skip_special);
  return 0;
}
