// Fuzz target: request bodies of POST /generate (SGLang's native API), POST /v1/completions and
// POST /v1/chat/completions, from raw bytes through JSON parsing and validation exactly as the
// HTTP handlers run them (http/native_api.h, openai/protocol.h, sampling/sampling_params.h).
//
// Every input is tried as all three bodies. Properties:
// - a refusal is an ApiError with a 4xx status or a dpserve::Error (both become 400s); no other
//   exception, crash, UB or leak;
// - an accepted OpenAI request carries validated SamplingParams (validate() passes again), its
//   n matches params.n, a completion has exactly one non-empty prompt form, chat messages are
//   normalized ({role in system/user/assistant/tool, content string});
// - SamplingParams survive to_json -> from_json unchanged (how they cross to the scheduler);
// - check_prompt_length on an accepted request refuses only with an ApiError.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dpserve/common/errors.h"
#include "dpserve/http/http_server.h"
#include "dpserve/http/native_api.h"
#include "dpserve/openai/protocol.h"
#include "dpserve/sampling/sampling_params.h"
#include "fuzz_common.h"

namespace dpserve {
namespace {

// The vocabulary size the server would pass (Qwen3's padded embedding size).
constexpr int64_t kVocab = 151936;
// The context length check_prompt_length is called with.
constexpr int64_t kContext = 4096;

void check_api_error(const ApiError& e) {
  FUZZ_CHECK(e.status() >= 400 && e.status() < 500, "ApiError status {}: {}", e.status(), e.what());
  FUZZ_CHECK(std::string_view(e.what()).size() > 0, "ApiError without a message");
}

// SamplingParams -> JSON -> SamplingParams keeps every field.
void check_round_trip(const SamplingParams& p) {
  const nlohmann::json j = p.to_json();
  SamplingParams back;
  try {
    back = SamplingParams::from_json(j);
  } catch (const Error& e) {
    fuzz::property_failed(fmt::format("from_json(to_json()) refused {}: {}", j.dump(), e.what()));
  }
  FUZZ_CHECK(back.to_json() == j, "round trip changed {} into {}", j.dump(), back.to_json().dump());
}

void fuzz_generate(const std::string& body) {
  try {
    const nlohmann::json j = parse_json_body(body);
    NativeGenerateRequest req = parse_generate_request(j, /*dp_size=*/2);
    FUZZ_CHECK(!req.inputs.empty(), "accepted /generate request without prompts");
    for (GenerateReqInput& in : req.inputs) {
      FUZZ_CHECK(!in.text.has_value() || in.input_ids.empty(), "a prompt with text and ids");
      FUZZ_CHECK(in.data_parallel_rank >= -1 && in.data_parallel_rank < 2, "dp rank {}",
                 in.data_parallel_rank);
      check_round_trip(in.sampling_params);
      // What TokenizerManager::validate runs next.
      try {
        in.sampling_params.validate(kVocab);
      } catch (const Error&) {
        continue;
      }
    }
  } catch (const ApiError& e) {
    check_api_error(e);
  } catch (const Error&) {
  }
}

void check_openai_request(const OpenAIRequest& req, OpenAIEndpoint endpoint) {
  FUZZ_CHECK(req.endpoint == endpoint, "endpoint changed");
  try {
    req.params.validate(kVocab);
  } catch (const Error& e) {
    fuzz::property_failed(fmt::format("accepted request has invalid params: {}", e.what()));
  }
  FUZZ_CHECK(req.n == req.params.n, "n {} but params.n {}", req.n, req.params.n);
  FUZZ_CHECK(req.top_logprobs >= 0, "top_logprobs {}", req.top_logprobs);
  check_round_trip(req.params);
  std::vector<int32_t> ids;
  if (endpoint == OpenAIEndpoint::kCompletions) {
    FUZZ_CHECK(req.prompt_text.has_value() != req.prompt_ids.has_value(),
               "completion needs exactly one prompt form");
    if (req.prompt_text) {
      FUZZ_CHECK(!req.prompt_text->empty(), "empty prompt accepted");
      ids.assign(std::min<size_t>(req.prompt_text->size(), 2 * kContext), 1);
    } else {
      FUZZ_CHECK(!req.prompt_ids->empty(), "empty prompt ids accepted");
      for (int32_t id : *req.prompt_ids) FUZZ_CHECK(id >= 0 && id < kVocab, "token id {}", id);
      ids = *req.prompt_ids;
    }
  } else {
    FUZZ_CHECK(req.messages.is_array() && !req.messages.empty(), "no messages");
    for (const auto& m : req.messages) {
      FUZZ_CHECK(m.is_object() && m.contains("role") && m["role"].is_string(), "message {}",
                 m.dump());
      const std::string role = m["role"].get<std::string>();
      FUZZ_CHECK(role == "system" || role == "user" || role == "assistant" || role == "tool",
                 "role {}", role);
      FUZZ_CHECK(m.contains("content") && m["content"].is_string(), "content of {}", m.dump());
      ids.push_back(1);
    }
    const ChatTemplateOptions o = req.chat_template_options();
    FUZZ_CHECK(o.extra.is_object(), "chat_template_kwargs not an object");
  }
  try {
    check_prompt_length(req, ids, kContext, kVocab);
  } catch (const ApiError& e) {
    check_api_error(e);
  }
}

void fuzz_openai(std::string_view body, OpenAIEndpoint endpoint) {
  try {
    const nlohmann::ordered_json j = parse_json_body(body);
    ParseOptions opts;
    opts.vocab_size = kVocab;
    const OpenAIRequest req = endpoint == OpenAIEndpoint::kChatCompletions
                                  ? parse_chat_request(j, opts)
                                  : parse_completion_request(j, opts);
    check_openai_request(req, endpoint);
  } catch (const ApiError& e) {
    check_api_error(e);
  }
}

}  // namespace
}  // namespace dpserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  dpserve::fuzz_generate(body);
  dpserve::fuzz_openai(body, dpserve::OpenAIEndpoint::kCompletions);
  dpserve::fuzz_openai(body, dpserve::OpenAIEndpoint::kChatCompletions);
  return 0;
}
