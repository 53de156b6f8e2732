// Fuzz target: the real Qwen3 and Llama 3 chat templates (../shared/tokenizers/*/
// tokenizer_config.json, loaded once) rendering fuzzed conversations.
//
// The input is JSON: a chat request body ({"messages": [...], "tools": [...],
// "chat_template_kwargs": {...}, "add_generation_prompt": ...}) or a bare list of messages.
// 1. A body goes through parse_chat_request as the server does, and the accepted request is
//    rendered with its chat_template_options() by both templates.
// 2. The raw `messages` / `tools` / kwargs (any JSON, unvalidated) are rendered directly.
// Properties: rendering refuses only with dpserve::Error; no crash, UB, leak, hang or huge
// allocation; rendering valid messages gives valid UTF-8 (strings from JSON are valid UTF-8, and
// Python's string operations keep it so).

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/chat_template/chat_template.h"
#include "dpserve/common/errors.h"
#include "dpserve/common/utf8.h"
#include "dpserve/openai/protocol.h"
#include "fuzz_common.h"

namespace dpserve {
namespace {

using ojson = nlohmann::ordered_json;

struct Loaded {
  std::string name;   // "qwen3" or "llama3"
  ChatTemplate tmpl;  // its chat template
};

const std::vector<Loaded>& templates() {
  static const std::vector<Loaded>* loaded = [] {
    auto* v = new std::vector<Loaded>();
    for (const char* name : {"qwen3", "llama3"}) {
      v->push_back({name, ChatTemplate::from_tokenizer_config(fuzz::shared_dir() + "/tokenizers/" +
                                                              name + "/tokenizer_config.json")});
    }
    return v;
  }();
  return *loaded;
}

ChatTemplateOptions fixed_time(ChatTemplateOptions o) {
  o.now = fuzz::fixed_now();
  return o;
}

// Renders with every template; a refusal must be a dpserve::Error.
void render_all(const ojson& messages, const ChatTemplateOptions& opts) {
  for (const Loaded& t : templates()) {
    try {
      const std::string out = t.tmpl.render(messages, opts);
      FUZZ_CHECK(is_valid_utf8(out), "{}: rendering gave invalid UTF-8", t.name);
    } catch (const Error&) {
    }
  }
}

void fuzz_request(const ojson& body) {
  OpenAIRequest req;
  try {
    req = parse_chat_request(body);
  } catch (const ApiError&) {
    return;
  }
  render_all(req.messages, fixed_time(req.chat_template_options()));
}

void fuzz_raw(const ojson& j) {
  ChatTemplateOptions opts;
  ojson messages = j;
  if (j.is_object()) {
    messages = j.contains("messages") ? j["messages"] : ojson::array();
    if (j.contains("tools")) opts.tools = j["tools"];
    if (j.contains("chat_template_kwargs")) opts.extra = j["chat_template_kwargs"];
    if (j.contains("add_generation_prompt") && j["add_generation_prompt"].is_boolean()) {
      opts.add_generation_prompt = j["add_generation_prompt"].get<bool>();
    }
  }
  render_all(messages, fixed_time(opts));
}

}  // namespace
}  // namespace dpserve

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  dpserve::templates();  // load once, before the first input
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto j =
      nlohmann::ordered_json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  if (j.is_object()) dpserve::fuzz_request(j);
  dpserve::fuzz_raw(j);
  return 0;
}
