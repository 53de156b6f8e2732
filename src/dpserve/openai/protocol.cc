// OpenAI request parsing: field dispatch, message normalization, and the mapping of OpenAI's
// sampling fields onto SGLang's sampling_params (checked by SamplingParams itself).

#include "dpserve/openai/protocol.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "dpserve/common/errors.h"

namespace dpserve {
namespace {

using ojson = nlohmann::ordered_json;

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

[[noreturn]] void unsupported(const std::string& param, const std::string& what) {
  bad(param, fmt::format("{} is not supported by dpserve", what));
}

const char* json_type(const ojson& v) {
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

bool get_bool(const ojson& v, const std::string& name) {
  if (!v.is_boolean()) bad(name, fmt::format("{} must be a boolean, got {}", name, json_type(v)));
  return v.get<bool>();
}

int64_t get_int(const ojson& v, const std::string& name) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18) {
      return static_cast<int64_t>(d);
    }
  }
  bad(name, fmt::format("{} must be an integer, got {}", name, v.dump()));
}

const std::string& get_string(const ojson& v, const std::string& name) {
  if (!v.is_string()) bad(name, fmt::format("{} must be a string, got {}", name, json_type(v)));
  return v.get_ref<const std::string&>();
}

const ojson& get_object(const ojson& v, const std::string& name) {
  if (!v.is_object()) bad(name, fmt::format("{} must be an object, got {}", name, json_type(v)));
  return v;
}

int32_t get_token_id(const ojson& v, const std::string& name, int64_t vocab_size) {
  if (!v.is_number_integer()) {
    bad(name, fmt::format("{} must hold integer token ids, got {}", name, v.dump()));
  }
  const int64_t id = v.get<int64_t>();
  const int64_t limit = vocab_size > 0 ? vocab_size : int64_t{std::numeric_limits<int32_t>::max()};
  if (id < 0 || id >= limit) {
    bad(name, fmt::format("{} holds token id {}, outside [0, {})", name, id, limit));
  }
  return static_cast<int32_t>(id);
}

// Fields of OpenAI's API that do not change generation: accepted and ignored.
bool is_ignored_field(const std::string& key, bool chat) {
  static const char* const kCommon[] = {"metadata", "store", "service_tier", "prompt_cache_key",
                                        "safety_identifier"};
  static const char* const kChat[] = {"parallel_tool_calls", "reasoning_effort", "verbosity"};
  for (const char* k : kCommon) {
    if (key == k) return true;
  }
  if (chat) {
    for (const char* k : kChat) {
      if (key == k) return true;
    }
  }
  return false;
}

// OpenAI/vLLM field -> SGLang sampling_params key, for fields that map one to one.
const std::map<std::string, std::string>& direct_sampling_fields() {
  static const std::map<std::string, std::string> m = {
      {"temperature", "temperature"},
      {"top_p", "top_p"},
      {"top_k", "top_k"},
      {"min_p", "min_p"},
      {"presence_penalty", "presence_penalty"},
      {"frequency_penalty", "frequency_penalty"},
      {"repetition_penalty", "repetition_penalty"},
      {"stop", "stop"},
      {"stop_token_ids", "stop_token_ids"},
      {"seed", "seed"},
      {"n", "n"},
      {"min_tokens", "min_new_tokens"},
      {"ignore_eos", "ignore_eos"},
      {"skip_special_tokens", "skip_special_tokens"},
      {"spaces_between_special_tokens", "spaces_between_special_tokens"},
      {"no_stop_trim", "no_stop_trim"},
  };
  return m;
}

// State shared by both endpoints while walking the body.
struct Builder {
  Builder(const ParseOptions& o, nlohmann::json defaults) : opts(o), sp(std::move(defaults)) {}

  const ParseOptions& opts;
  OpenAIRequest req;
  nlohmann::json sp;                             // SGLang sampling_params being assembled
  std::map<std::string, std::string> origin;     // SGLang key -> OpenAI field that set it
  const ojson* stream_options = nullptr;         // seen stream_options
  std::optional<int64_t> max_tokens;             // max_tokens
  std::optional<int64_t> max_completion_tokens;  // max_completion_tokens
  std::optional<int64_t> best_of;                // completions best_of
};

// Rewrites a SamplingParams error (naming SGLang keys) into an ApiError naming OpenAI fields.
[[noreturn]] void rethrow_sampling_error(const Error& e, const Builder& b) {
  std::string msg = e.what();
  const std::string first = msg.substr(0, msg.find_first_of(" '"));
  auto shown = [&](const std::string& key, const char* fallback) {
    auto it = b.origin.find(key);
    return it != b.origin.end() ? it->second : std::string(fallback);
  };
  const std::pair<std::string, std::string> renames[] = {
      {"max_new_tokens", shown("max_new_tokens", "max_tokens")},
      {"min_new_tokens", shown("min_new_tokens", "min_tokens")},
      {"top_logprobs_num", shown("top_logprobs_num", "top_logprobs")},
  };
  std::string param = shown(first, first.c_str());
  for (const auto& [from, to] : renames) {
    if (param == from) param = to;
    for (size_t pos = msg.find(from); pos != std::string::npos; pos = msg.find(from, pos)) {
      msg.replace(pos, from.size(), to);
      pos += to.size();
    }
  }
  throw ApiError(400, msg, "invalid_request_error", param);
}

// Handles a field both endpoints share; false if `key` is not one of them.
bool common_field(Builder& b, const std::string& key, const ojson& v) {
  const auto& direct = direct_sampling_fields();
  if (auto it = direct.find(key); it != direct.end()) {
    if (key == "n") b.req.n = get_int(v, key);
    b.sp[it->second] = nlohmann::json::parse(v.dump());
    b.origin[it->second] = key;
  } else if (key == "model") {
    b.req.model = get_string(v, key);
  } else if (key == "max_tokens") {
    b.max_tokens = get_int(v, key);
  } else if (key == "max_completion_tokens") {
    b.max_completion_tokens = get_int(v, key);
  } else if (key == "stream") {
    b.req.stream = get_bool(v, key);
  } else if (key == "stream_options") {
    b.stream_options = &get_object(v, key);
  } else if (key == "user") {
    b.req.user = get_string(v, key);
  } else if (key == "logit_bias") {
    for (const auto& [id, bias] : get_object(v, key).items()) {
      if (!bias.is_number()) {
        bad(key,
            fmt::format("logit_bias values must be numbers, got {} for \"{}\"", bias.dump(), id));
      }
      const double d = bias.get<double>();
      if (!(d >= -100.0 && d <= 100.0)) {
        bad(key, fmt::format("logit_bias values must be in [-100, 100], got {} for \"{}\"", d, id));
      }
    }
    b.sp["logit_bias"] = nlohmann::json::parse(v.dump());
    b.origin["logit_bias"] = key;
  } else if (key == "response_format") {
    const ojson& rf = get_object(v, key);
    auto type = rf.find("type");
    if (type == rf.end()) bad(key, "response_format.type is required");
    const std::string& t = get_string(*type, "response_format.type");
    if (t != "text") unsupported(key, fmt::format("response_format type '{}'", t));
  } else if (key == "regex" || key == "json_schema" || key == "ebnf" || key == "structural_tag") {
    unsupported(key, fmt::format("Constrained decoding ('{}')", key));
  } else if (is_ignored_field(key, b.req.is_chat())) {
    b.req.ignored_fields.push_back(key);
  } else {
    return false;
  }
  return true;
}

// Applies the collected sampling fields and checks them (types, ranges, cross-field rules).
void finish(Builder& b) {
  const bool chat = b.req.is_chat();
  if (b.max_completion_tokens) {
    b.sp["max_new_tokens"] = *b.max_completion_tokens;
    b.origin["max_new_tokens"] = "max_completion_tokens";
  } else if (b.max_tokens) {
    b.sp["max_new_tokens"] = *b.max_tokens;
    b.origin["max_new_tokens"] = "max_tokens";
  }
  if (b.req.n < 1 || b.req.n > b.opts.max_n) {
    bad("n", fmt::format("n must be in [1, {}], got {}", b.opts.max_n, b.req.n));
  }
  if (b.best_of && *b.best_of != b.req.n) {
    unsupported("best_of", fmt::format("best_of ({}) other than n ({})", *b.best_of, b.req.n));
  }
  if (b.req.top_logprobs < 0 || b.req.top_logprobs > b.opts.max_top_logprobs) {
    const char* name = chat ? "top_logprobs" : "logprobs";
    bad(name, fmt::format("{} must be in [0, {}], got {}", name, b.opts.max_top_logprobs,
                          b.req.top_logprobs));
  }
  if (b.req.logprobs) {
    b.sp["return_logprob"] = true;
    b.sp["top_logprobs_num"] = b.req.top_logprobs;
    b.origin["top_logprobs_num"] = chat ? "top_logprobs" : "logprobs";
  }
  if (b.stream_options) {
    if (!b.req.stream) {
      bad("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is true");
    }
    for (const auto& [k, v] : b.stream_options->items()) {
      const std::string name = "stream_options." + k;
      if (v.is_null()) continue;
      if (k == "include_usage") {
        b.req.include_usage = get_bool(v, name);
      } else if (k == "continuous_usage_stats") {
        b.req.continuous_usage_stats = get_bool(v, name);
      } else {
        bad(name, fmt::format("Unrecognized request argument supplied: {}", name));
      }
    }
  }
  try {
    b.req.params = SamplingParams::from_json(b.sp);
    b.req.params.validate(b.opts.vocab_size);
  } catch (const Error& e) {
    rethrow_sampling_error(e, b);
  }
}

Builder make_builder(const ojson& body, const ParseOptions& opts, OpenAIEndpoint endpoint) {
  if (!body.is_object()) {
    throw ApiError(400,
                   fmt::format("The request body must be a JSON object, got {}", json_type(body)));
  }
  Builder b(opts, opts.defaults.to_json());
  b.req.endpoint = endpoint;
  // OpenAI's defaults: 16 tokens for completions, up to the context for chat.
  b.sp["max_new_tokens"] =
      endpoint == OpenAIEndpoint::kCompletions ? nlohmann::json(16) : nlohmann::json(nullptr);
  b.sp["n"] = 1;
  b.sp["return_logprob"] = false;
  b.sp["top_logprobs_num"] = 0;
  return b;
}

// Completions `prompt`: a string, [string], token ids, or [[token ids]].
void parse_prompt(OpenAIRequest& req, const ojson& v, int64_t vocab_size) {
  const char* kShape = "prompt must be a string, a list of one string, or a list of token ids";
  if (v.is_string()) {
    req.prompt_text = v.get<std::string>();
  } else if (v.is_array()) {
    if (v.empty()) bad("prompt", "prompt must not be empty");
    if (v.size() > 1 && (v[0].is_string() || v[0].is_array())) {
      bad("prompt", fmt::format("Batched prompts (a list of {}) are not supported by dpserve; send "
                                "one request per prompt",
                                v.size()));
    }
    if (v[0].is_string()) {
      req.prompt_text = v[0].get<std::string>();
    } else {
      const ojson& ids = v[0].is_array() ? v[0] : v;
      std::vector<int32_t> out;
      out.reserve(ids.size());
      for (const ojson& id : ids) {
        if (!id.is_number_integer()) bad("prompt", kShape);
        out.push_back(get_token_id(id, "prompt", vocab_size));
      }
      if (out.empty()) bad("prompt", "prompt must not be empty");
      req.prompt_ids = std::move(out);
    }
  } else {
    bad("prompt", kShape);
  }
  if (req.prompt_text && req.prompt_text->empty()) bad("prompt", "prompt must not be empty");
}

// Content of a message: a string, or text parts joined with "\n".
std::string message_content(const ojson& content, const std::string& where) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) {
    bad(where, fmt::format("{} must be a string or a list of content parts, got {}", where,
                           json_type(content)));
  }
  std::string text;
  for (size_t j = 0; j < content.size(); ++j) {
    const std::string part_name = fmt::format("{}[{}]", where, j);
    const ojson& part = get_object(content[j], part_name);
    auto type = part.find("type");
    if (type == part.end()) bad(part_name, fmt::format("{}.type is required", part_name));
    const std::string& t = get_string(*type, part_name + ".type");
    if (t == "text") {
      auto it = part.find("text");
      if (it == part.end()) bad(part_name, fmt::format("{}.text is required", part_name));
      if (j > 0) text += '\n';
      text += get_string(*it, part_name + ".text");
    } else if (t == "image_url" || t == "input_image" || t == "input_audio" || t == "file" ||
               t == "video_url" || t == "audio_url") {
      unsupported(part_name, fmt::format("Content part type '{}' (this model reads text only)", t));
    } else {
      bad(part_name, fmt::format("{}.type '{}' is unknown; expected 'text'", part_name, t));
    }
  }
  return text;
}

// One chat message, normalized for the template.
ojson parse_message(const ojson& m, size_t i) {
  const std::string where = fmt::format("messages[{}]", i);
  get_object(m, where);
  auto role_it = m.find("role");
  if (role_it == m.end()) bad(where + ".role", fmt::format("{}.role is required", where));
  std::string role = get_string(*role_it, where + ".role");
  if (role == "developer") role = "system";  // OpenAI's newer name; templates know "system"
  if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
    bad(where + ".role",
        fmt::format("{}.role '{}' is unknown; expected system, developer, user, assistant or tool",
                    where, role));
  }
  ojson out = ojson::object();
  out["role"] = role;
  const bool assistant = role == "assistant";
  auto content = m.find("content");
  if (content == m.end() || content->is_null()) {
    if (!assistant) bad(where + ".content", fmt::format("{}.content is required", where));
    out["content"] = "";
  } else {
    out["content"] = message_content(*content, where + ".content");
  }
  for (const auto& [key, v] : m.items()) {
    if (key == "role" || key == "content") continue;
    if (key == "name" || key == "tool_call_id") {
      out[key] = get_string(v, fmt::format("{}.{}", where, key));
    } else if (key == "tool_calls" && !v.is_null()) {
      const std::string tc_name = where + ".tool_calls";
      if (!assistant)
        bad(tc_name, fmt::format("{} is only allowed on assistant messages", tc_name));
      if (!v.is_array()) bad(tc_name, fmt::format("{} must be a list", tc_name));
      ojson calls = ojson::array();
      for (size_t j = 0; j < v.size(); ++j) {
        const std::string cn = fmt::format("{}[{}]", tc_name, j);
        ojson call = get_object(v[j], cn);
        auto fn = call.find("function");
        if (fn == call.end()) bad(cn, fmt::format("{}.function is required", cn));
        get_object(*fn, cn + ".function");
        auto name = fn->find("name");
        if (name == fn->end()) bad(cn, fmt::format("{}.function.name is required", cn));
        get_string(*name, cn + ".function.name");
        auto args = fn->find("arguments");
        if (args != fn->end() && args->is_string()) {
          // Templates read arguments as a mapping; OpenAI sends them as a JSON string.
          ojson parsed = ojson::parse(args->get<std::string>(), nullptr, false);
          if (parsed.is_discarded() || !parsed.is_object()) {
            bad(cn + ".function.arguments",
                fmt::format("{}.function.arguments must be a JSON object or a string holding one",
                            cn));
          }
          *args = std::move(parsed);
        }
        calls.push_back(std::move(call));
      }
      out["tool_calls"] = std::move(calls);
    } else if (!v.is_null()) {
      out[key] = v;  // e.g. reasoning_content; templates may read it
    }
  }
  return out;
}

void parse_tools(OpenAIRequest& req, const ojson& v) {
  if (!v.is_array()) bad("tools", fmt::format("tools must be a list, got {}", json_type(v)));
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string where = fmt::format("tools[{}]", i);
    const ojson& tool = get_object(v[i], where);
    auto type = tool.find("type");
    if (type == tool.end() || !type->is_string() || *type != "function") {
      bad(where + ".type", fmt::format("{}.type must be \"function\"", where));
    }
    auto fn = tool.find("function");
    if (fn == tool.end()) bad(where + ".function", fmt::format("{}.function is required", where));
    get_object(*fn, where + ".function");
    auto name = fn->find("name");
    if (name == fn->end()) {
      bad(where + ".function.name", fmt::format("{}.function.name is required", where));
    }
    get_string(*name, where + ".function.name");
    auto params = fn->find("parameters");
    if (params != fn->end() && !params->is_null())
      get_object(*params, where + ".function.parameters");
  }
  req.tools = v;
}

void parse_tool_choice(OpenAIRequest& req, const ojson& v) {
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (s == "auto" || s == "none") {
      req.tool_choice = s;
      return;
    }
    if (s == "required") unsupported("tool_choice", "tool_choice \"required\"");
    bad("tool_choice",
        fmt::format("tool_choice must be \"none\", \"auto\", \"required\" or an object, got \"{}\"",
                    s));
  }
  if (v.is_object()) unsupported("tool_choice", "tool_choice naming a function");
  bad("tool_choice",
      fmt::format("tool_choice must be a string or an object, got {}", json_type(v)));
}

}  // namespace

ChatTemplateOptions OpenAIRequest::chat_template_options() const {
  ChatTemplateOptions o;
  o.add_generation_prompt = add_generation_prompt;
  o.tools = tool_choice == "none" ? ojson(nullptr) : tools;
  o.extra = chat_template_kwargs;
  return o;
}

nlohmann::ordered_json parse_json_body(std::string_view body) {
  // Copying and dumping JSON values recurse per nesting level, so a deeply nested body (a few
  // hundred KB of '[') would overflow the handler thread's stack: refuse it while parsing.
  static constexpr int kMaxDepth = 256;
  auto depth_limit = [](int depth, nlohmann::json::parse_event_t, ojson&) {
    if (depth > kMaxDepth) {
      throw ApiError(400,
                     fmt::format("Invalid JSON body: nested deeper than {} levels", kMaxDepth));
    }
    return true;
  };
  ojson j;
  try {
    j = ojson::parse(body.begin(), body.end(), depth_limit);
  } catch (const nlohmann::json::exception& e) {  // parse_error, out_of_range (1e999), ...
    // nlohmann's message: "[json.exception.parse_error.101] parse error at line 1, column 2: ..."
    std::string what = e.what();
    const size_t pos = what.find("] ");
    throw ApiError(
        400, "Invalid JSON body: " + (pos == std::string::npos ? what : what.substr(pos + 2)));
  }
  if (!j.is_object()) {
    throw ApiError(400,
                   fmt::format("The request body must be a JSON object, got {}", json_type(j)));
  }
  return j;
}

OpenAIRequest parse_completion_request(const nlohmann::ordered_json& body,
                                       const ParseOptions& opts) {
  Builder b = make_builder(body, opts, OpenAIEndpoint::kCompletions);
  bool has_prompt = false;
  for (const auto& [key, v] : body.items()) {
    if (v.is_null()) continue;
    if (common_field(b, key, v)) continue;
    if (key == "prompt") {
      parse_prompt(b.req, v, opts.vocab_size);
      has_prompt = true;
    } else if (key == "echo") {
      b.req.echo = get_bool(v, key);
    } else if (key == "logprobs") {
      // OpenAI completions: an integer count of top alternatives (0 = the chosen token only).
      if (v.is_boolean()) {
        bad(key, "logprobs must be an integer (the number of top logprobs) for /v1/completions");
      }
      b.req.logprobs = true;
      b.req.top_logprobs = get_int(v, key);
    } else if (key == "suffix") {
      if (!get_string(v, key).empty()) unsupported(key, "suffix");
    } else if (key == "best_of") {
      b.best_of = get_int(v, key);
    } else {
      bad(key, fmt::format("Unrecognized request argument supplied: {}", key));
    }
  }
  if (!has_prompt) bad("prompt", "prompt is required");
  if (b.req.echo && b.req.logprobs) unsupported("echo", "echo together with logprobs");
  finish(b);
  return std::move(b.req);
}

OpenAIRequest parse_chat_request(const nlohmann::ordered_json& body, const ParseOptions& opts) {
  Builder b = make_builder(body, opts, OpenAIEndpoint::kChatCompletions);
  bool has_messages = false;
  std::optional<int64_t> top_logprobs;
  for (const auto& [key, v] : body.items()) {
    if (v.is_null()) continue;
    if (common_field(b, key, v)) continue;
    if (key == "messages") {
      if (!v.is_array()) bad(key, fmt::format("messages must be a list, got {}", json_type(v)));
      if (v.empty()) bad(key, "messages must not be empty");
      for (size_t i = 0; i < v.size(); ++i) b.req.messages.push_back(parse_message(v[i], i));
      has_messages = true;
    } else if (key == "logprobs") {
      b.req.logprobs = get_bool(v, key);
    } else if (key == "top_logprobs") {
      top_logprobs = get_int(v, key);
    } else if (key == "tools") {
      parse_tools(b.req, v);
    } else if (key == "tool_choice") {
      parse_tool_choice(b.req, v);
    } else if (key == "chat_template_kwargs") {
      b.req.chat_template_kwargs = get_object(v, key);
    } else if (key == "add_generation_prompt") {
      b.req.add_generation_prompt = get_bool(v, key);
    } else if (key == "separate_reasoning") {
      b.req.separate_reasoning = get_bool(v, key);
    } else if (key == "modalities") {
      if (!v.is_array()) bad(key, "modalities must be a list");
      for (const ojson& m : v) {
        if (m != "text") unsupported(key, fmt::format("Output modality {}", m.dump()));
      }
    } else if (key == "audio" || key == "prediction" || key == "web_search_options" ||
               key == "functions" || key == "function_call") {
      unsupported(key, fmt::format("'{}'", key));
    } else {
      bad(key, fmt::format("Unrecognized request argument supplied: {}", key));
    }
  }
  if (!has_messages) bad("messages", "messages is required");
  if (top_logprobs) {
    if (*top_logprobs > 0 && !b.req.logprobs) {
      bad("top_logprobs", "top_logprobs requires logprobs to be true");
    }
    b.req.top_logprobs = *top_logprobs;
  }
  finish(b);
  return std::move(b.req);
}

void check_model(const std::string& requested, const std::string& served) {
  if (requested.empty() || requested == served) return;
  throw ApiError(404, fmt::format("The model `{}` does not exist.", requested), "model_not_found",
                 "model");
}

void check_prompt_length(const OpenAIRequest& req, const std::vector<int32_t>& prompt_ids,
                         int64_t context_len, int64_t vocab_size) {
  const char* param = req.is_chat() ? "messages" : "prompt";
  const int64_t n = static_cast<int64_t>(prompt_ids.size());
  if (n == 0) bad(param, "The prompt is empty (0 tokens)");
  if (vocab_size > 0) {
    for (int32_t id : prompt_ids) {
      if (id < 0 || id >= vocab_size) {
        bad(param, fmt::format("Token id {} is out of vocabulary [0, {})", id, vocab_size));
      }
    }
  }
  if (n >= context_len) {
    bad(param, fmt::format("This model's maximum context length is {} tokens. However, your "
                           "prompt has {} tokens, which leaves no room for the completion.",
                           context_len, n));
  }
  const int64_t max_new = req.params.max_new_tokens;
  // max_new > context_len - n, not n + max_new > context_len: max_new may be near INT64_MAX.
  if (max_new != SamplingParams::kNoMaxNewTokens && max_new > context_len - n) {
    bad(param, fmt::format("This model's maximum context length is {} tokens. However, you "
                           "requested {} tokens ({} in the {}, {} in the completion). Please "
                           "reduce the length of the {} or completion.",
                           context_len, static_cast<uint64_t>(n) + static_cast<uint64_t>(max_new),
                           n, param, max_new, param));
  }
}

}  // namespace dpserve
