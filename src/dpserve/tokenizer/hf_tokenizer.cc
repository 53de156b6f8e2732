// tokenizer.json loading and the encode/decode pipelines.

#include "dpserve/tokenizer/hf_tokenizer.h"

#include "dpserve/common/errors.h"
#include "dpserve/tokenizer/unicode.h"

namespace dpserve {
namespace {

std::vector<std::pair<std::string, std::string>> parse_merges(const nlohmann::json& merges,
                                                              const std::string& path) {
  std::vector<std::pair<std::string, std::string>> out;
  if (merges.is_null()) return out;
  if (!merges.is_array()) throw_error("{}: model.merges must be an array", path);
  out.reserve(merges.size());
  for (const auto& m : merges) {
    if (m.is_string()) {  // "a b"
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size()) {
        throw_error("{}: bad merge \"{}\" (expected \"left right\")", path, s);
      }
      out.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      out.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      throw_error("{}: bad merge entry {}", path, m.dump());
    }
  }
  return out;
}

}  // namespace

HfTokenizer::HfTokenizer(const std::string& path, const TokenizerConfig& config) {
  const nlohmann::json root = read_json_file(path);
  if (!root.is_object()) throw_error("{}: expected a JSON object", path);
  if (!root.contains("model") || !root["model"].is_object()) {
    throw_error("{}: missing \"model\" object", path);
  }
  const nlohmann::json& model = root["model"];
  const std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE") throw_error("{}: unsupported model type \"{}\" (only BPE)", path, type);
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    throw_error("{}: model.vocab must be an object of token -> id", path);
  }
  try {
    TokenIdMap vocab;
    vocab.reserve(model["vocab"].size());
    for (const auto& [tok, id] : model["vocab"].items()) vocab.emplace(tok, id.get<int32_t>());
    BpeOptions opts;
    opts.byte_fallback = model.value("byte_fallback", false);
    opts.ignore_merges = model.value("ignore_merges", false);
    opts.fuse_unk = model.value("fuse_unk", false);
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      opts.unk_token = model["unk_token"].get<std::string>();
    }
    model_ = std::make_unique<BpeModel>(std::move(vocab),
                                        parse_merges(model.value("merges", nlohmann::json()), path),
                                        std::move(opts));
  } catch (const nlohmann::json::exception& e) {
    throw_error("{}: bad model: {}", path, e.what());
  }
  vocab_size_ = model_->size();

  normalizer_ = make_normalizer(root.value("normalizer", nlohmann::json()), path);
  pre_tokenizer_ = make_pre_tokenizer(root.value("pre_tokenizer", nlohmann::json()), path);
  decoder_ = make_decoder(root.value("decoder", nlohmann::json()), path);

  if (auto it = root.find("added_tokens"); it != root.end() && it->is_array()) {
    for (const auto& t : *it) {
      AddedToken tok;
      try {
        tok.id = t.at("id").get<int32_t>();
        tok.content = t.at("content").get<std::string>();
        tok.special = t.value("special", false);
        tok.lstrip = t.value("lstrip", false);
        tok.rstrip = t.value("rstrip", false);
        tok.normalized = t.value("normalized", false);
      } catch (const nlohmann::json::exception& e) {
        throw_error("{}: bad added_tokens entry {}: {}", path, t.dump(), e.what());
      }
      add_token(tok);
    }
  }
  // tokenizer_config.json may declare more added tokens.
  for (const AddedToken& tok : config.added_tokens) {
    if (!added_by_id_.count(tok.id)) add_token(tok);
  }

  load_post_processor(root.value("post_processor", nlohmann::json()), path);

  // BOS/EOS: tokenizer_config.json's add_bos_token/add_eos_token override the post-processor.
  if (config.bos_token) {
    bos_token_ = *config.bos_token;
    bos_token_id_ = token_to_id(bos_token_).value_or(-1);
  }
  if (config.eos_token) {
    eos_token_ = *config.eos_token;
    if (auto id = token_to_id(eos_token_)) eos_token_ids_.push_back(*id);
  }
  if (config.add_bos_token) {
    prefix_ids_.clear();
    if (*config.add_bos_token && bos_token_id_ >= 0) prefix_ids_.push_back(bos_token_id_);
  }
  if (config.add_eos_token) {
    suffix_ids_.clear();
    if (*config.add_eos_token && !eos_token_ids_.empty()) suffix_ids_.push_back(eos_token_ids_[0]);
  }
}

void HfTokenizer::add_token(const AddedToken& tok) {
  if (tok.id < 0) return;
  added_.add(tok);
  added_by_id_[tok.id] = tok.content;
  added_by_content_[tok.content] = tok.id;
  if (tok.special) special_ids_.insert(tok.id);
  vocab_size_ = std::max<int64_t>(vocab_size_, int64_t{tok.id} + 1);
}

void HfTokenizer::load_post_processor(const nlohmann::json& j, const std::string& path) {
  if (j.is_null()) return;
  const std::string type = j.value("type", std::string());
  try {
    if (type == "Sequence") {
      for (const auto& p : j.at("processors")) load_post_processor(p, path);
    } else if (type == "TemplateProcessing") {
      prefix_ids_.clear();
      suffix_ids_.clear();
      bool seen_sequence = false;
      for (const auto& item : j.at("single")) {
        if (item.contains("Sequence")) {
          seen_sequence = true;
          continue;
        }
        const std::string name = item.at("SpecialToken").at("id").get<std::string>();
        const auto& spec = j.at("special_tokens").at(name);
        for (const auto& id : spec.at("ids")) {
          (seen_sequence ? suffix_ids_ : prefix_ids_).push_back(id.get<int32_t>());
        }
      }
    } else if (type == "BertProcessing" || type == "RobertaProcessing") {
      prefix_ids_ = {j.at("cls").at(1).get<int32_t>()};
      suffix_ids_ = {j.at("sep").at(1).get<int32_t>()};
    } else if (type != "ByteLevel") {
      throw_error("{}: unsupported post_processor type \"{}\"", path, type);
    }
  } catch (const nlohmann::json::exception& e) {
    throw_error("{}: bad {} post_processor: {}", path, type, e.what());
  }
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string sanitized;
  if (!is_valid_utf8(text)) {
    sanitized = sanitize_utf8(text);
    text = sanitized;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
  std::vector<std::string> pieces;
  for (const TextSegment& seg : added_.split(text)) {
    if (seg.token_id >= 0) {
      ids.push_back(seg.token_id);
      continue;
    }
    std::string s(seg.text);
    if (normalizer_) normalizer_->normalize(s);
    if (s.empty()) continue;
    pieces.clear();
    pieces.push_back(std::move(s));
    if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pieces);
    for (const std::string& p : pieces) model_->encode_word(p, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
      tokens.push_back(it->second);
    } else if (const std::string* t = model_->id_to_token(id)) {
      tokens.push_back(*t);
    }
  }
  if (!decoder_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  decoder_->decode_chain(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

std::optional<int32_t> HfTokenizer::token_to_id(std::string_view token) const {
  if (auto it = added_by_content_.find(token); it != added_by_content_.end()) return it->second;
  return model_->token_to_id(token);
}

std::string HfTokenizer::id_to_token(int32_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return it->second;
  const std::string* t = model_->id_to_token(id);
  return t ? *t : std::string();
}

}  // namespace dpserve
