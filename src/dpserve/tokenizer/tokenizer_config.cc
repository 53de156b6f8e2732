// tokenizer_config.json parsing.

#include "dpserve/tokenizer/tokenizer_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "dpserve/common/errors.h"

namespace dpserve {
namespace {

// A token field: "text", null, or {"content": "text", ...}.
std::optional<std::string> token_field(const nlohmann::json& cfg, const char* key,
                                       const std::string& path) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  throw_error("{}: \"{}\" must be a string or an object with a \"content\" string", path, key);
}

std::optional<bool> bool_field(const nlohmann::json& cfg, const char* key,
                               const std::string& path) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) throw_error("{}: \"{}\" must be true or false", path, key);
  return it->get<bool>();
}

}  // namespace

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error("{}: cannot open file", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw_error("{}: malformed JSON: {}", path, e.what());
  }
}

TokenizerConfig read_tokenizer_config(const std::string& path) {
  TokenizerConfig config;
  if (!std::filesystem::exists(path)) return config;
  const nlohmann::json cfg = read_json_file(path);
  if (!cfg.is_object()) throw_error("{}: expected a JSON object", path);
  config.add_bos_token = bool_field(cfg, "add_bos_token", path);
  config.add_eos_token = bool_field(cfg, "add_eos_token", path);
  config.bos_token = token_field(cfg, "bos_token", path);
  config.eos_token = token_field(cfg, "eos_token", path);
  if (auto it = cfg.find("added_tokens_decoder"); it != cfg.end() && it->is_object()) {
    for (const auto& [key, value] : it->items()) {
      AddedToken tok;
      try {
        tok.id = std::stoi(key);
        tok.content = value.at("content").get<std::string>();
        tok.special = value.value("special", false);
        tok.lstrip = value.value("lstrip", false);
        tok.rstrip = value.value("rstrip", false);
        tok.normalized = value.value("normalized", false);
      } catch (const std::exception& e) {
        throw_error("{}: bad added_tokens_decoder entry \"{}\": {}", path, key, e.what());
      }
      config.added_tokens.push_back(std::move(tok));
    }
  }
  return config;
}

}  // namespace dpserve
