#pragma once
// The coordinator's wire protocol (internal to dpserve_coordinator).
//
// Transport: the coordinator binds a ROUTER socket at tcp://host:port; each client connects one
// DEALER socket. Every frame is one msgpack array: a CoordRequest from a client, a CoordReply from
// the coordinator. A reply carries the id of the request it answers; id 0 with kind kShutdown is
// the coordinator's unsolicited shutdown broadcast. Requests are flat (one struct for every op,
// unused fields empty) so the format stays one small definition.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "dpserve/distributed/coordinator_types.h"

namespace dpserve {

// Bumped on any change to the structs below; both sides reject other versions.
inline constexpr uint32_t kCoordWireVersion = 1;

// What a client asks for.
enum class CoordOp : uint8_t {
  kHello = 0,       // first message: the coordinator answers with its heartbeat settings
  kRegister = 1,    // register `rank`
  kLeave = 2,       // deregister cleanly
  kHeartbeat = 3,   // I am alive (answered, so the client knows the coordinator is too)
  kSet = 4,         // keys[0] = value
  kGet = 5,         // value of keys[0], waiting up to timeout_ms
  kAdd = 6,         // keys[0] += number (decimal text), answers the new value
  kCheck = 7,       // are all keys set (no waiting)
  kWait = 8,        // wait until all keys are set, up to timeout_ms
  kDelete = 9,      // erase keys[0]; number = 1 when it existed
  kBarrier = 10,    // barrier keys[0] of `number` participants, up to timeout_ms
  kRankStates = 11  // every registered rank's state
};

// "get", "barrier", ..., for logs and errors.
std::string_view coord_op_name(CoordOp op);

// A client's request.
struct CoordRequest {
  uint64_t id = 0;                  // echoed in the reply
  CoordOp op = CoordOp::kHello;     // what to do
  std::vector<std::string> keys{};  // key(s) or barrier name
  std::string value{};              // value for set
  int64_t number = 0;               // add delta, barrier size
  int64_t timeout_ms = 0;           // for blocking ops; negative = forever
  int64_t pid = 0;                  // the client's pid (hello)
  std::string host{};               // the client's host (hello)
  RankInfo rank{};                  // register
};

// What a reply is.
enum class CoordReplyKind : uint8_t {
  kReply = 0,     // answers request `id`
  kShutdown = 1,  // the coordinator tells every client to shut down (`error` = reason)
};

// The coordinator's answer (or broadcast).
struct CoordReply {
  CoordReplyKind kind = CoordReplyKind::kReply;  // reply or shutdown broadcast
  uint64_t id = 0;                               // request answered
  bool ok = true;                                // false: `error` says why
  std::string error{};                           // the failure, or the shutdown reason
  std::string value{};                           // get: the value
  int64_t number = 0;                            // add: new value; check/delete: 0/1
  int64_t heartbeat_interval_ms = 0;             // hello: how often to heartbeat
  int64_t heartbeat_timeout_ms = 0;              // hello: when a silent peer counts as gone
  std::vector<RankState> ranks{};                // rank_states
};

// Serializes a request / reply.
std::string encode_request(const CoordRequest& r);
std::string encode_reply(const CoordReply& r);
// Parses one; throws dpserve::Error on bytes that are not one well-formed message.
CoordRequest decode_request(std::string_view bytes);
CoordReply decode_reply(std::string_view bytes);

}  // namespace dpserve
