#include "dpserve/managers/req.h"

#include <fmt/format.h>

namespace dpserve {

Req::Req(std::string rid_, int64_t index_, uint64_t arrival_, std::vector<int32_t> input_ids,
         SamplingParams params, RequestSamplingState state, std::unique_ptr<StopChecker> stop)
    : rid(std::move(rid_)),
      index(index_),
      arrival(arrival_),
      origin_input_ids(std::move(input_ids)),
      sampling_params(std::move(params)),
      sampling_state(std::move(state)),
      stop_checker(std::move(stop)) {
  cache.token_ids = origin_input_ids;
  pending.rid = rid;
  pending.index = index;
}

std::string Req::log_name() const { return index == 0 ? rid : fmt::format("{}#{}", rid, index); }

RequestOutput Req::take_output() {
  RequestOutput out = std::move(pending);
  out.rid = rid;
  out.index = index;
  out.prompt_tokens = static_cast<int64_t>(origin_input_ids.size());
  out.completion_tokens = static_cast<int64_t>(output_ids.size());
  out.cached_tokens = cached_tokens;
  out.finished = finished();
  out.finish_reason = finished_reason;
  pending = RequestOutput{};
  pending.rid = rid;
  pending.index = index;
  return out;
}

}  // namespace dpserve
