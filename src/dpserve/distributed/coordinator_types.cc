#include "dpserve/distributed/coordinator_types.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace dpserve {

namespace {

// "model_path" -> "--model-path"; a key that already is a flag stays as is.
std::string flag_name(const std::string& key) {
  if (key.starts_with("--")) return key;
  std::string flag = "--" + key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

std::string shown(const std::string& value) { return value.empty() ? "''" : value; }

const std::string* find_value(const Fingerprint& fp, const std::string& key) {
  for (const auto& [k, v] : fp) {
    if (k == key) return &v;
  }
  return nullptr;
}

}  // namespace

std::string_view liveness_name(RankLiveness s) {
  switch (s) {
    case RankLiveness::kAlive:
      return "alive";
    case RankLiveness::kDead:
      return "dead";
    case RankLiveness::kLeft:
      return "left";
  }
  return "unknown";
}

std::string rank_label(int global_rank, int node_rank) {
  return fmt::format("rank {} (node {})", global_rank, node_rank);
}

std::string fingerprint_diff(const Fingerprint& reference, int reference_node,
                             const Fingerprint& mine) {
  std::vector<std::string> clauses;
  for (const auto& [key, ref_value] : reference) {
    const std::string* my_value = find_value(mine, key);
    if (my_value == nullptr) {
      clauses.push_back(fmt::format("{} is {} on node {} but not set here", flag_name(key),
                                    shown(ref_value), reference_node));
    } else if (*my_value != ref_value) {
      clauses.push_back(fmt::format("{} is {} on node {} but {} here", flag_name(key),
                                    shown(ref_value), reference_node, shown(*my_value)));
    }
  }
  for (const auto& [key, my_value] : mine) {
    if (find_value(reference, key) == nullptr) {
      clauses.push_back(fmt::format("{} is not set on node {} but {} here", flag_name(key),
                                    reference_node, shown(my_value)));
    }
  }
  return fmt::format("{}", fmt::join(clauses, "; "));
}

std::string coordinator_address(std::string_view host, int port) {
  if (host.find(':') != std::string_view::npos && !host.starts_with("[")) {
    return fmt::format("tcp://[{}]:{}", host, port);
  }
  return fmt::format("tcp://{}:{}", host, port);
}

}  // namespace dpserve
