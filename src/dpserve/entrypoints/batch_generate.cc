#include "dpserve/entrypoints/batch_generate.h"

#include <cstdio>
#include <fstream>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {

namespace {

bool is_blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

// The line's object: {"text": str, "sampling_params": {...}}.
BatchPrompt parse_json_line(const std::string& line, const nlohmann::json& defaults) {
  const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw_error("not a valid JSON object");
  if (!j.is_object()) throw_error("expected a JSON object");
  BatchPrompt p;
  bool has_text = false;
  nlohmann::json params = defaults;
  for (const auto& [key, value] : j.items()) {
    if (key == "text") {
      if (!value.is_string()) throw_error("\"text\" must be a string");
      p.text = value.get<std::string>();
      has_text = true;
    } else if (key == "sampling_params") {
      if (!value.is_object()) throw_error("\"sampling_params\" must be an object");
      for (const auto& [k, v] : value.items()) params[k] = v;
    } else {
      throw_error("unknown key \"{}\" (expected \"text\" and \"sampling_params\")", key);
    }
  }
  if (!has_text) throw_error("missing \"text\"");
  p.sampling_params = SamplingParams::from_json(params);
  return p;
}

}  // namespace

std::vector<BatchPrompt> read_prompts_file(const std::string& path, const SamplingParams& defaults,
                                           int64_t vocab_size) {
  std::ifstream in(path);
  if (!in) throw_error("--prompts-file {}: cannot open", path);
  const nlohmann::json default_json = defaults.to_json();
  std::vector<BatchPrompt> prompts;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (is_blank(line)) continue;
    try {
      BatchPrompt p;
      const size_t first = line.find_first_not_of(" \t");
      if (line[first] == '{') {
        p = parse_json_line(line, default_json);
      } else {
        p.text = line;
        p.sampling_params = defaults;
      }
      p.line = n;
      p.sampling_params.validate(vocab_size);
      prompts.push_back(std::move(p));
    } catch (const Error& e) {
      throw_error("--prompts-file {} line {}: {}", path, n, e.what());
    }
  }
  if (prompts.empty()) throw_error("--prompts-file {}: no prompts", path);
  return prompts;
}

SchedulerConfig scheduler_config_from_args(const GenerateArgs& args) {
  SchedulerConfig c;
  c.page_size = args.page_size;
  c.chunked_prefill_size = args.chunked_prefill_size;
  c.max_total_tokens = args.max_total_tokens;
  c.kv_cache_memory = args.kv_cache_memory;
  c.max_running_requests = args.max_running_requests;
  c.max_prefill_tokens = args.max_prefill_tokens;
  c.schedule_policy = args.schedule_policy;
  c.disable_radix_cache = args.disable_radix_cache;
  c.watchdog_timeout = args.watchdog_timeout;
  c.random_seed = args.seed;
  c.num_threads = args.num_threads;
  c.attention_backend = args.attention_backend;
  return c;
}

int run_batch_generate(const GenerateArgs& args) {
  const std::string tok_dir = args.tokenizer_path.empty() ? args.model_path : args.tokenizer_path;
  const ModelConfig model_config = ModelConfig::from_dir(args.model_path);
  const SchedulerConfig config = scheduler_config_from_args(args);
  config.validate();
  SchedulePolicy check_policy(config.schedule_policy);

  SamplingParams defaults;
  defaults.max_new_tokens = args.max_new_tokens;
  defaults.temperature = args.temperature;
  defaults.ignore_eos = args.ignore_eos;
  if (args.seed_given) defaults.seed = args.seed;
  const std::vector<BatchPrompt> prompts =
      read_prompts_file(args.prompts_file, defaults, model_config.vocab_size);

  std::shared_ptr<const Tokenizer> tokenizer(load_tokenizer(tok_dir));
  std::vector<GenerateRequest> requests;
  for (const BatchPrompt& p : prompts) {
    GenerateRequest r;
    r.rid = fmt::format("line-{}", p.line);
    r.input_ids = encode_prompt(*tokenizer, tok_dir, p.text, args.chat);
    if (r.input_ids.empty()) {
      throw_error("--prompts-file {} line {}: the prompt encodes to no tokens", args.prompts_file,
                  p.line);
    }
    if (static_cast<int64_t>(r.input_ids.size()) >= model_config.max_position_embeddings) {
      throw_error(
          "--prompts-file {} line {}: {} tokens do not fit the model's context length of {}",
          args.prompts_file, p.line, r.input_ids.size(), model_config.max_position_embeddings);
    }
    r.sampling_params = p.sampling_params;
    requests.push_back(std::move(r));
  }

  Scheduler scheduler(config, make_model(args.model_path, config), tokenizer);
  const std::vector<CompletedRequest> done = scheduler.generate(requests);

  size_t k = 0;
  for (const BatchPrompt& p : prompts) {
    for (int64_t i = 0; i < p.sampling_params.n; ++i, ++k) {
      const CompletedRequest& c = done.at(k);
      nlohmann::ordered_json j;
      j["prompt"] = p.text;
      if (p.sampling_params.n > 1) j["index"] = c.index;
      j["text"] = c.text;
      j["prompt_tokens"] = c.prompt_tokens;
      j["completion_tokens"] = c.completion_tokens;
      j["cached_tokens"] = c.cached_tokens;
      j["finish_reason"] = c.finish_reason.to_json();
      const std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fputc('\n', stdout);
    }
  }
  std::fflush(stdout);
  const SchedulerStats st = scheduler.stats();
  spdlog::info(
      "{} prompts: {} prefill tokens computed, {} served from the cache, {} decode tokens, {} "
      "retractions",
      prompts.size(), st.num_prefill_tokens, st.num_cached_tokens, st.num_decode_tokens,
      st.num_retractions);
  return 0;
}

}  // namespace dpserve
