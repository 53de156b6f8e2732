#pragma once
// Chat templates: renders a conversation into a prompt with the model's Jinja chat template, the
// way Hugging Face transformers does (trim_blocks and lstrip_blocks on, Python semantics).

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dpserve {

namespace jinja {
class Template;
}

// Inputs of one rendering besides the messages.
struct ChatTemplateOptions {
  // Append the header that starts the assistant's reply.
  bool add_generation_prompt = false;
  // Tool (function) definitions: a JSON array, or null for none.
  nlohmann::ordered_json tools = nullptr;
  // Overrides the tokenizer config's bos_token (unset: the config's, if any).
  std::optional<std::string> bos_token;
  // Overrides the tokenizer config's eos_token (unset: the config's, if any).
  std::optional<std::string> eos_token;
  // Extra template variables, e.g. {"enable_thinking": false}; they override the others.
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
  // The local time strftime_now() formats (unset: the current local time).
  std::optional<std::tm> now;
};

// A parsed chat template (or a set of named ones); parse once, render many times, thread-safe.
class ChatTemplate {
 public:
  // Loads the chat template of a tokenizer_config.json: its `chat_template` string, or the list
  // of {name, template} (picking "tool_use" when tools are given, else "default"); falls back to
  // chat_template.jinja / chat_template.json in the same folder. Also reads its special tokens.
  static ChatTemplate from_tokenizer_config(const std::string& path);

  // Parses one template; throws dpserve::Error naming the line on unsupported constructs.
  explicit ChatTemplate(std::string source);

  // Renders `messages` (a JSON array of {role, content, ...}); throws dpserve::Error naming the
  // template line on failure (including the template's own raise_exception). Pass ordered_json
  // to keep the key order of tool schemas that the template prints with tojson.
  std::string render(const nlohmann::ordered_json& messages,
                     const ChatTemplateOptions& opts = ChatTemplateOptions{}) const;

  // The source of the "default" template (or of the only one).
  const std::string& source() const;

  // Names of the available templates ("default" for a single template).
  std::vector<std::string> template_names() const;

  // Special tokens read from the tokenizer config (bos_token, eos_token, ...), as a JSON object.
  const nlohmann::ordered_json& special_tokens() const { return special_tokens_; }

 private:
  struct Named {
    std::string name;                               // "default", "tool_use", ...
    std::string source;                             // template text
    std::shared_ptr<const jinja::Template> parsed;  // parsed once
  };
  ChatTemplate() = default;
  const Named& pick(bool has_tools) const;

  std::vector<Named> templates_;
  nlohmann::ordered_json special_tokens_ = nlohmann::ordered_json::object();
};

}  // namespace dpserve
