// ChatTemplate: loads templates from tokenizer configs and renders conversations.

#include "dpserve/chat_template/chat_template.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "dpserve/chat_template/template.h"
#include "dpserve/chat_template/value.h"
#include "dpserve/common/errors.h"

namespace dpserve {

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error("cannot open {}", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::ordered_json parse_json_file(const std::filesystem::path& path) {
  try {
    return nlohmann::ordered_json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw_error("{}: invalid JSON: {}", path.string(), e.what());
  }
}

// tokenizer_config stores a token as a string or as an AddedToken object {"content": ...}.
std::optional<std::string> token_text(const nlohmann::ordered_json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

std::string format_time(const std::string& fmt, const std::tm& tm) {
  if (fmt.empty()) return "";
  std::vector<char> buf(256 + fmt.size() * 8);
  const size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
  if (n == 0) jinja::fail("strftime_now(): format produced no output or is too long");
  return std::string(buf.data(), n);
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source) {
  auto parsed = std::make_shared<const jinja::Template>(source);
  templates_.push_back(Named{"default", std::move(source), std::move(parsed)});
}

ChatTemplate ChatTemplate::from_tokenizer_config(const std::string& path) {
  const std::filesystem::path p(path);
  const nlohmann::ordered_json config = parse_json_file(p);
  if (!config.is_object()) throw_error("{}: expected a JSON object", path);
  nlohmann::ordered_json tmpl =
      config.contains("chat_template") ? config["chat_template"] : nullptr;
  if (tmpl.is_null()) {
    const auto dir = p.parent_path();
    if (std::filesystem::exists(dir / "chat_template.jinja")) {
      tmpl = read_file(dir / "chat_template.jinja");
    } else if (std::filesystem::exists(dir / "chat_template.json")) {
      const auto j = parse_json_file(dir / "chat_template.json");
      if (j.is_object() && j.contains("chat_template")) tmpl = j["chat_template"];
    }
  }
  ChatTemplate ct;
  auto add = [&](std::string name, std::string source) {
    try {
      auto parsed = std::make_shared<const jinja::Template>(source);
      ct.templates_.push_back(Named{std::move(name), std::move(source), std::move(parsed)});
    } catch (const Error& e) {
      throw_error("{}: chat template '{}': {}", path, name, e.what());
    }
  };
  if (tmpl.is_string()) {
    add("default", tmpl.get<std::string>());
  } else if (tmpl.is_array()) {
    for (const auto& entry : tmpl) {
      if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") ||
          !entry["name"].is_string() || !entry["template"].is_string()) {
        throw_error("{}: chat_template list entries must be {{name, template}} objects", path);
      }
      add(entry["name"].get<std::string>(), entry["template"].get<std::string>());
    }
    if (ct.templates_.empty()) throw_error("{}: chat_template list is empty", path);
  } else {
    throw_error("{}: no chat_template (string or list of named templates)", path);
  }
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                          "cls_token", "mask_token"}) {
    if (!config.contains(key)) continue;
    if (auto t = token_text(config[key])) ct.special_tokens_[key] = *t;
  }
  return ct;
}

const ChatTemplate::Named& ChatTemplate::pick(bool has_tools) const {
  if (templates_.size() == 1) return templates_[0];
  if (has_tools) {
    for (const auto& t : templates_) {
      if (t.name == "tool_use") return t;
    }
  }
  for (const auto& t : templates_) {
    if (t.name == "default") return t;
  }
  throw_error("the tokenizer config has named chat templates but none called \"default\"");
}

const std::string& ChatTemplate::source() const { return pick(false).source; }

std::vector<std::string> ChatTemplate::template_names() const {
  std::vector<std::string> names;
  for (const auto& t : templates_) names.push_back(t.name);
  return names;
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages,
                                 const ChatTemplateOptions& opts) const {
  if (!messages.is_array()) throw_error("chat template: messages must be a JSON array");
  if (!opts.tools.is_null() && !opts.tools.is_array()) {
    throw_error("chat template: tools must be a JSON array or null");
  }
  if (!opts.extra.is_object()) throw_error("chat template: extra variables must be a JSON object");
  const Named& t = pick(!opts.tools.is_null());

  using jinja::Value;
  Value messages_value, tools_value;
  jinja::Dict extra;
  try {
    messages_value = Value::from_json(messages);
    tools_value = Value::from_json(opts.tools);
    for (const auto& [k, v] : opts.extra.items()) extra.set(k, Value::from_json(v));
  } catch (const jinja::Failure& e) {
    throw_error("chat template: {}", e.what());
  }
  // Variables in transformers' order; the extra ones come last and win.
  jinja::Dict ordered;
  ordered.set("messages", messages_value);
  ordered.set("add_generation_prompt", Value::boolean(opts.add_generation_prompt));
  ordered.set("tools", tools_value);
  ordered.set("documents", Value::none());
  for (const auto& [k, v] : special_tokens_.items())
    ordered.set(k, Value::string(v.get<std::string>()));
  if (opts.bos_token) ordered.set("bos_token", Value::string(*opts.bos_token));
  if (opts.eos_token) ordered.set("eos_token", Value::string(*opts.eos_token));
  const std::optional<std::tm> fixed_now = opts.now;
  ordered.set("strftime_now", Value::function("strftime_now", [fixed_now](jinja::Args& a) {
                auto p = jinja::bind_args(a, "strftime_now", {{"format", Value(), true}});
                if (!p[0].is_string()) jinja::fail("strftime_now() format must be a string");
                std::tm tm{};
                if (fixed_now) {
                  tm = *fixed_now;
                } else {
                  const std::time_t now =
                      std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
                  localtime_r(&now, &tm);
                }
                return Value::string(format_time(p[0].as_string(), tm));
              }));
  for (const auto& [k, v] : extra.items()) ordered.set(k, v);
  return t.parsed->render(ordered);
}

}  // namespace dpserve
