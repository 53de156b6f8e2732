#pragma once
// Types shared by the coordinator (node 0) and its clients (every scheduler rank): who a rank is,
// and what the coordinator knows about it.

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dpserve {

// A timeout in milliseconds; negative waits forever.
using Millis = std::chrono::milliseconds;

// The model and parallel flags every rank must agree on, in a fixed order: key -> value, e.g.
// {"model_path", "/models/x"}, {"tp_size", "4"}. Keys are ServerArgs field names or flags.
using Fingerprint = std::vector<std::pair<std::string, std::string>>;

// What a scheduler rank tells the coordinator when it registers.
struct RankInfo {
  int node_rank = 0;                               // the machine's index in [0, nnodes)
  int global_rank = 0;                             // the rank's index in the whole world
  std::string host{};                              // the machine's host name or address
  int64_t pid = 0;                                 // the rank process's pid
  std::map<std::string, std::string> endpoints{};  // its ZeroMQ endpoints by name
  Fingerprint fingerprint{};                       // flags that must match across ranks
};

// Where a registered rank stands.
enum class RankLiveness : uint8_t {
  kAlive = 0,  // registered and heartbeating
  kDead = 1,   // missed the heartbeat timeout
  kLeft = 2,   // deregistered cleanly
};

// "alive", "dead" or "left".
std::string_view liveness_name(RankLiveness s);

// One rank as the coordinator sees it.
struct RankState {
  RankInfo info{};                            // what it registered with
  RankLiveness state = RankLiveness::kAlive;  // alive, dead or left
  double last_heartbeat_age_s = 0.0;          // seconds since its last message
};

// "rank 2 (node 1)", for logs and errors.
std::string rank_label(int global_rank, int node_rank);

// The difference between two fingerprints as "--flag is A on node N but B here" clauses joined by
// "; " (empty when they agree). `reference_node` names where the reference came from.
std::string fingerprint_diff(const Fingerprint& reference, int reference_node,
                             const Fingerprint& mine);

// "tcp://host:port" (IPv6 literals bracketed), the coordinator's address from launcher flags.
std::string coordinator_address(std::string_view host, int port);

}  // namespace dpserve
