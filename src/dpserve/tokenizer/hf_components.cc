// Normalizers, pre-tokenizers and decoders of the tokenizer.json format.

#include "dpserve/tokenizer/hf_components.h"

#include <optional>

#include "dpserve/common/errors.h"
#include "dpserve/tokenizer/byte_level.h"
#include "dpserve/tokenizer/regex.h"
#include "dpserve/tokenizer/unicode.h"

namespace dpserve {
namespace {

// GPT-2's pre-tokenization pattern (ByteLevel with use_regex).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string type_of(const nlohmann::json& j, const std::string& path, const char* what) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    throw_error("{}: {} without a \"type\"", path, what);
  }
  return j["type"].get<std::string>();
}

// A regex source for a {"String": s} or {"Regex": r} pattern object.
std::string pattern_source(const nlohmann::json& p, const std::string& path) {
  if (p.is_object() && p.contains("Regex")) return p["Regex"].get<std::string>();
  if (p.is_object() && p.contains("String")) {
    std::string out;
    for (char c : p["String"].get<std::string>()) {
      const auto u = static_cast<unsigned char>(c);
      if (u < 0x80 && !std::isalnum(u)) out.push_back('\\');
      out.push_back(c);
    }
    return out;
  }
  throw_error("{}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}", path);
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty() || s.find(from) == std::string::npos) return;
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  out.append(s, pos);
  s = std::move(out);
}

// ---- normalizers ----

class SequenceNormalizer : public Normalizer {
 public:
  std::vector<std::unique_ptr<Normalizer>> steps;
  void normalize(std::string& text) const override {
    for (const auto& s : steps) s->normalize(text);
  }
};

class NfcNormalizer : public Normalizer {
 public:
  void normalize(std::string& text) const override { text = nfc_normalize(text); }
};

class PrependNormalizer : public Normalizer {
 public:
  std::string prepend;
  void normalize(std::string& text) const override {
    if (!text.empty()) text = prepend + text;
  }
};

class ReplaceNormalizer : public Normalizer {
 public:
  std::optional<std::string> literal;  // String pattern
  std::unique_ptr<Regex> regex;        // Regex pattern
  std::string content;
  void normalize(std::string& text) const override {
    if (literal) {
      replace_all(text, *literal, content);
      return;
    }
    std::string out;
    size_t last = 0;
    regex->for_each_match(text, [&](size_t b, size_t e) {
      out.append(text, last, b - last);
      out.append(content);
      last = e;
    });
    out.append(text, last);
    text = std::move(out);
  }
};

class StripNormalizer : public Normalizer {
 public:
  bool left = false, right = false;
  void normalize(std::string& text) const override {
    auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    size_t b = 0, e = text.size();
    if (left) {
      while (b < e && ws(text[b])) ++b;
    }
    if (right) {
      while (e > b && ws(text[e - 1])) --e;
    }
    text = text.substr(b, e - b);
  }
};

// ---- pre-tokenizers ----

class SequencePreTokenizer : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  void pre_tokenize(std::vector<std::string>& pieces) const override {
    for (const auto& s : steps) s->pre_tokenize(pieces);
  }
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// Splits each piece at the matches of `regex` and arranges the matches per `behavior`.
void split_pieces(const Regex& regex, SplitBehavior behavior, bool invert,
                  std::vector<std::string>& pieces) {
  std::vector<std::string> out;
  out.reserve(pieces.size() * 2);
  struct Span {
    size_t b, e;
    bool match;
  };
  std::vector<Span> spans;
  for (const std::string& piece : pieces) {
    spans.clear();
    size_t last = 0;
    regex.for_each_match(piece, [&](size_t b, size_t e) {
      if (b > last) spans.push_back({last, b, invert});
      spans.push_back({b, e, !invert});
      last = e;
    });
    if (last < piece.size()) spans.push_back({last, piece.size(), invert});
    const size_t first_out = out.size();
    bool pending_next = false;  // MergedWithNext: the last emitted piece waits for the next one
    bool prev_match = false;
    for (const Span& s : spans) {
      const std::string_view text = std::string_view(piece).substr(s.b, s.e - s.b);
      switch (behavior) {
        case SplitBehavior::Removed:
          if (!s.match) out.emplace_back(text);
          break;
        case SplitBehavior::Isolated:
          out.emplace_back(text);
          break;
        case SplitBehavior::MergedWithPrevious:
          if (s.match && !prev_match && out.size() > first_out) {
            out.back().append(text);
          } else {
            out.emplace_back(text);
          }
          break;
        case SplitBehavior::MergedWithNext:
          if (pending_next) {
            out.back().append(text);
          } else {
            out.emplace_back(text);
          }
          pending_next = s.match;
          break;
        case SplitBehavior::Contiguous:
          if (s.match && prev_match) {
            out.back().append(text);
          } else {
            out.emplace_back(text);
          }
          break;
      }
      prev_match = s.match;
    }
  }
  pieces = std::move(out);
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  std::unique_ptr<Regex> regex;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  void pre_tokenize(std::vector<std::string>& pieces) const override {
    split_pieces(*regex, behavior, invert, pieces);
  }
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  bool add_prefix_space = false;
  std::unique_ptr<Regex> regex;  // set when use_regex
  void pre_tokenize(std::vector<std::string>& pieces) const override {
    if (add_prefix_space) {
      for (auto& p : pieces) {
        if (!p.empty() && p[0] != ' ') p = ' ' + p;
      }
    }
    if (regex) split_pieces(*regex, SplitBehavior::Isolated, false, pieces);
    std::string mapped;
    for (auto& p : pieces) {
      mapped.clear();
      byte_level_encode(p, mapped);
      p.swap(mapped);
    }
  }
};

// ---- decoders ----

class SequenceDecoder : public Decoder {
 public:
  std::vector<std::unique_ptr<Decoder>> steps;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& s : steps) s->decode_chain(tokens);
  }
};

class ByteLevelDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      // Tokens outside the byte-level alphabet (some added tokens) are taken as they are.
      if (auto b = byte_level_decode(t)) {
        bytes += *b;
      } else {
        bytes += t;
      }
    }
    tokens.assign(1, is_valid_utf8(bytes) ? std::move(bytes) : sanitize_utf8(bytes));
  }
};

class ReplaceDecoder : public Decoder {
 public:
  std::string from, to;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) replace_all(t, from, to);
  }
};

// "<0xNN>" -> NN, or -1.
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

class ByteFallbackDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string bytes;
    auto flush = [&]() {
      if (bytes.empty()) return;
      if (is_valid_utf8(bytes)) {
        out.push_back(bytes);
      } else {
        for (size_t i = 0; i < bytes.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      bytes.clear();
    };
    for (auto& t : tokens) {
      const int b = parse_byte_token(t);
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder : public Decoder {
 public:
  std::string content;
  size_t start = 0, stop = 0;
  void decode_chain(std::vector<std::string>& tokens) const override {
    if (content.empty()) return;
    for (auto& t : tokens) {
      size_t b = 0, e = t.size();
      for (size_t i = 0; i < start && t.compare(b, content.size(), content) == 0; ++i) {
        b += content.size();
      }
      for (size_t i = 0; i < stop && e >= b + content.size() &&
                         t.compare(e - content.size(), content.size(), content) == 0;
           ++i) {
        e -= content.size();
      }
      t = t.substr(b, e - b);
    }
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  std::string replacement = "\xE2\x96\x81";
  bool strip_first = true;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      replace_all(tokens[i], replacement, " ");
      if (i == 0 && strip_first && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
    }
  }
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& path) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, path, "normalizer");
  try {
    if (type == "Sequence") {
      auto seq = std::make_unique<SequenceNormalizer>();
      for (const auto& s : j.at("normalizers")) {
        if (auto n = make_normalizer(s, path)) seq->steps.push_back(std::move(n));
      }
      return seq;
    }
    if (type == "NFC") return std::make_unique<NfcNormalizer>();
    if (type == "Prepend") {
      auto n = std::make_unique<PrependNormalizer>();
      n->prepend = j.at("prepend").get<std::string>();
      return n;
    }
    if (type == "Replace") {
      auto n = std::make_unique<ReplaceNormalizer>();
      const auto& p = j.at("pattern");
      if (p.contains("String")) {
        n->literal = p["String"].get<std::string>();
      } else {
        n->regex = std::make_unique<Regex>(pattern_source(p, path), path + ": Replace normalizer");
      }
      n->content = j.at("content").get<std::string>();
      return n;
    }
    if (type == "Strip") {
      auto n = std::make_unique<StripNormalizer>();
      n->left = j.value("strip_left", false);
      n->right = j.value("strip_right", false);
      return n;
    }
  } catch (const nlohmann::json::exception& e) {
    throw_error("{}: bad {} normalizer: {}", path, type, e.what());
  }
  throw_error("{}: unsupported normalizer type \"{}\"", path, type);
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& path) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, path, "pre_tokenizer");
  try {
    if (type == "Sequence") {
      auto seq = std::make_unique<SequencePreTokenizer>();
      for (const auto& s : j.at("pretokenizers")) {
        if (auto p = make_pre_tokenizer(s, path)) seq->steps.push_back(std::move(p));
      }
      return seq;
    }
    if (type == "Split") {
      auto p = std::make_unique<SplitPreTokenizer>();
      p->regex = std::make_unique<Regex>(pattern_source(j.at("pattern"), path),
                                         path + ": Split pre_tokenizer");
      const std::string b = j.value("behavior", "Isolated");
      if (b == "Removed") {
        p->behavior = SplitBehavior::Removed;
      } else if (b == "Isolated") {
        p->behavior = SplitBehavior::Isolated;
      } else if (b == "MergedWithPrevious") {
        p->behavior = SplitBehavior::MergedWithPrevious;
      } else if (b == "MergedWithNext") {
        p->behavior = SplitBehavior::MergedWithNext;
      } else if (b == "Contiguous") {
        p->behavior = SplitBehavior::Contiguous;
      } else {
        throw_error("{}: unsupported Split behavior \"{}\"", path, b);
      }
      p->invert = j.value("invert", false);
      return p;
    }
    if (type == "ByteLevel") {
      auto p = std::make_unique<ByteLevelPreTokenizer>();
      p->add_prefix_space = j.value("add_prefix_space", false);
      if (j.value("use_regex", true)) {
        p->regex = std::make_unique<Regex>(kGpt2Pattern, path + ": ByteLevel pre_tokenizer");
      }
      return p;
    }
  } catch (const nlohmann::json::exception& e) {
    throw_error("{}: bad {} pre_tokenizer: {}", path, type, e.what());
  }
  throw_error("{}: unsupported pre_tokenizer type \"{}\"", path, type);
}

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& path) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, path, "decoder");
  try {
    if (type == "Sequence") {
      auto seq = std::make_unique<SequenceDecoder>();
      for (const auto& s : j.at("decoders")) {
        if (auto d = make_decoder(s, path)) seq->steps.push_back(std::move(d));
      }
      return seq;
    }
    if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
    if (type == "Replace") {
      const auto& p = j.at("pattern");
      if (!p.contains("String")) throw_error("{}: Replace decoder needs a String pattern", path);
      auto d = std::make_unique<ReplaceDecoder>();
      d->from = p["String"].get<std::string>();
      d->to = j.at("content").get<std::string>();
      return d;
    }
    if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
    if (type == "Fuse") return std::make_unique<FuseDecoder>();
    if (type == "Strip") {
      auto d = std::make_unique<StripDecoder>();
      d->content = j.at("content").get<std::string>();
      d->start = j.value("start", size_t{0});
      d->stop = j.value("stop", size_t{0});
      return d;
    }
    if (type == "Metaspace") {
      auto d = std::make_unique<MetaspaceDecoder>();
      d->replacement = j.value("replacement", std::string("\xE2\x96\x81"));
      d->strip_first = j.value("prepend_scheme", std::string("always")) != "never" &&
                       j.value("add_prefix_space", true);
      return d;
    }
  } catch (const nlohmann::json::exception& e) {
    throw_error("{}: bad {} decoder: {}", path, type, e.what());
  }
  throw_error("{}: unsupported decoder type \"{}\"", path, type);
}

}  // namespace dpserve
