// Fuzz target: the chat-template engine on arbitrary template sources (chat_template/). The
// input is the template text; it is parsed and, when it parses, rendered with a conversation,
// tools, special tokens, add_generation_prompt and a fixed strftime_now time.
//
// Properties: parse and render refuse only with dpserve::Error (no jinja::Failure, nlohmann or
// std exception escapes); no crash, UB, leak, stack overflow, hang or huge allocation
// (libFuzzer's -timeout and -rss_limit_mb / -malloc_limit_mb catch the last two); rendering is
// deterministic (a second render gives the same text).

#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "dpserve/chat_template/chat_template.h"
#include "dpserve/common/errors.h"
#include "fuzz_common.h"

namespace dpserve {
namespace {

using ojson = nlohmann::ordered_json;

const ojson& messages() {
  static const ojson* m = new ojson(ojson::parse(R"([
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi <b>there</b> \u00e9\u4e2d\ud83d\ude00"},
    {"role": "assistant", "content": "<think>hmm</think>Hello!",
     "tool_calls": [{"type": "function", "id": "c1",
                     "function": {"name": "get", "arguments": {"x": 1, "y": [true, null]}}}]},
    {"role": "tool", "content": "{\"ok\": 1}", "tool_call_id": "c1"},
    {"role": "user", "content": ""}
  ])"));
  return *m;
}

ChatTemplateOptions options() {
  ChatTemplateOptions o;
  o.add_generation_prompt = true;
  o.tools = ojson::parse(R"([{"type": "function", "function": {"name": "get",
    "description": "d", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}])");
  o.bos_token = "<s>";
  o.eos_token = "</s>";
  o.extra = ojson{{"enable_thinking", false}, {"n", 3}, {"items", ojson::array({1, "a", 2.5})}};
  o.now = fuzz::fixed_now();
  return o;
}

}  // namespace
}  // namespace dpserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  static const dpserve::ChatTemplateOptions opts = dpserve::options();
  try {
    const dpserve::ChatTemplate t(source);
    const std::string first = t.render(dpserve::messages(), opts);
    const std::string second = t.render(dpserve::messages(), opts);
    FUZZ_CHECK(first == second, "rendering is not deterministic");
  } catch (const dpserve::Error&) {
  }
  return 0;
}
