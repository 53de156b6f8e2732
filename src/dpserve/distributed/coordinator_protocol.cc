#include "dpserve/distributed/coordinator_protocol.h"

#include <tuple>

#include <msgpack.hpp>

#include "dpserve/common/errors.h"

namespace dpserve {

namespace {

// Each struct travels as a msgpack array of its fields in declaration order (a std::tuple on both
// sides), nested inside the envelope [kCoordWireVersion, kind, fields].

auto rank_tuple(const RankInfo& r) {
  return std::tie(r.node_rank, r.global_rank, r.host, r.pid, r.endpoints, r.fingerprint);
}

using RankTuple = std::tuple<int, int, std::string, int64_t, std::map<std::string, std::string>,
                             std::vector<std::pair<std::string, std::string>>>;

// The array `o` with exactly `n` elements, or an error naming `what`.
void expect_array(const msgpack::object& o, uint32_t n, const char* what) {
  if (o.type != msgpack::type::ARRAY || o.via.array.size != n) {
    throw_error("malformed coordinator message: {} is not an array of {} fields", what, n);
  }
}

template <typename Tuple>
Tuple convert_tuple(const msgpack::object& o, const char* what) {
  expect_array(o, std::tuple_size_v<Tuple>, what);
  Tuple t;
  o.convert(t);
  return t;
}

RankInfo rank_from(const msgpack::object& o) {
  auto [node, global, host, pid, endpoints, fingerprint] = convert_tuple<RankTuple>(o, "rank");
  return RankInfo{node, global, std::move(host), pid, std::move(endpoints), std::move(fingerprint)};
}

template <typename T>
T enum_from(uint32_t v, uint32_t max, const char* what) {
  if (v > max) throw_error("malformed coordinator message: {} {} is out of range", what, v);
  return static_cast<T>(v);
}

// Unpacks `bytes` as the envelope [version, kind, fields] and returns the fields object; `zone`
// keeps it alive.
const msgpack::object& open_envelope(std::string_view bytes, msgpack::object_handle& handle,
                                     uint32_t kind) {
  try {
    std::size_t offset = 0;
    handle = msgpack::unpack(bytes.data(), bytes.size(), offset);
    if (offset != bytes.size()) throw_error("malformed coordinator message: trailing bytes");
  } catch (const msgpack::unpack_error& e) {
    throw_error("malformed coordinator message: {}", e.what());
  }
  const msgpack::object& env = handle.get();
  expect_array(env, 3, "envelope");
  uint32_t version = 0, got_kind = 0;
  try {
    env.via.array.ptr[0].convert(version);
    env.via.array.ptr[1].convert(got_kind);
  } catch (const msgpack::type_error&) {
    throw_error("malformed coordinator message: bad envelope header");
  }
  if (version != kCoordWireVersion) {
    throw_error("coordinator message of wire version {} (this build speaks {})", version,
                kCoordWireVersion);
  }
  if (got_kind != kind) {
    throw_error("malformed coordinator message: envelope kind {} where {} was expected", got_kind,
                kind);
  }
  return env.via.array.ptr[2];
}

constexpr uint32_t kRequestEnvelope = 1;
constexpr uint32_t kReplyEnvelope = 2;

}  // namespace

std::string_view coord_op_name(CoordOp op) {
  switch (op) {
    case CoordOp::kHello:
      return "hello";
    case CoordOp::kRegister:
      return "register";
    case CoordOp::kLeave:
      return "leave";
    case CoordOp::kHeartbeat:
      return "heartbeat";
    case CoordOp::kSet:
      return "set";
    case CoordOp::kGet:
      return "get";
    case CoordOp::kAdd:
      return "add";
    case CoordOp::kCheck:
      return "check";
    case CoordOp::kWait:
      return "wait";
    case CoordOp::kDelete:
      return "delete";
    case CoordOp::kBarrier:
      return "barrier";
    case CoordOp::kRankStates:
      return "rank_states";
  }
  return "unknown";
}

std::string encode_request(const CoordRequest& r) {
  msgpack::sbuffer buf;
  const auto fields =
      std::make_tuple(r.id, static_cast<uint32_t>(r.op), std::cref(r.keys), std::cref(r.value),
                      r.number, r.timeout_ms, r.pid, std::cref(r.host), rank_tuple(r.rank));
  msgpack::pack(buf, std::make_tuple(kCoordWireVersion, kRequestEnvelope, fields));
  return std::string(buf.data(), buf.size());
}

CoordRequest decode_request(std::string_view bytes) {
  msgpack::object_handle handle;
  const msgpack::object& o = open_envelope(bytes, handle, kRequestEnvelope);
  expect_array(o, 9, "request");
  try {
    const msgpack::object* f = o.via.array.ptr;
    CoordRequest r;
    f[0].convert(r.id);
    r.op =
        enum_from<CoordOp>(f[1].as<uint32_t>(), static_cast<uint32_t>(CoordOp::kRankStates), "op");
    f[2].convert(r.keys);
    f[3].convert(r.value);
    f[4].convert(r.number);
    f[5].convert(r.timeout_ms);
    f[6].convert(r.pid);
    f[7].convert(r.host);
    r.rank = rank_from(f[8]);
    return r;
  } catch (const msgpack::type_error&) {
    throw_error("malformed coordinator message: a request field has the wrong type");
  }
}

std::string encode_reply(const CoordReply& r) {
  msgpack::sbuffer buf;
  using StateTuple = std::tuple<decltype(rank_tuple(RankInfo{})), uint32_t, double>;
  std::vector<StateTuple> ranks;
  ranks.reserve(r.ranks.size());
  for (const RankState& s : r.ranks) {
    ranks.emplace_back(rank_tuple(s.info), static_cast<uint32_t>(s.state), s.last_heartbeat_age_s);
  }
  const auto fields = std::make_tuple(static_cast<uint32_t>(r.kind), r.id, r.ok, std::cref(r.error),
                                      std::cref(r.value), r.number, r.heartbeat_interval_ms,
                                      r.heartbeat_timeout_ms, ranks);
  msgpack::pack(buf, std::make_tuple(kCoordWireVersion, kReplyEnvelope, fields));
  return std::string(buf.data(), buf.size());
}

CoordReply decode_reply(std::string_view bytes) {
  msgpack::object_handle handle;
  const msgpack::object& o = open_envelope(bytes, handle, kReplyEnvelope);
  expect_array(o, 9, "reply");
  try {
    const msgpack::object* f = o.via.array.ptr;
    CoordReply r;
    r.kind = enum_from<CoordReplyKind>(f[0].as<uint32_t>(), 1, "reply kind");
    f[1].convert(r.id);
    f[2].convert(r.ok);
    f[3].convert(r.error);
    f[4].convert(r.value);
    f[5].convert(r.number);
    f[6].convert(r.heartbeat_interval_ms);
    f[7].convert(r.heartbeat_timeout_ms);
    if (f[8].type != msgpack::type::ARRAY) throw msgpack::type_error();
    for (uint32_t i = 0; i < f[8].via.array.size; ++i) {
      const msgpack::object& s = f[8].via.array.ptr[i];
      expect_array(s, 3, "rank state");
      RankState st;
      st.info = rank_from(s.via.array.ptr[0]);
      st.state = enum_from<RankLiveness>(s.via.array.ptr[1].as<uint32_t>(), 2, "rank state");
      s.via.array.ptr[2].convert(st.last_heartbeat_age_s);
      r.ranks.push_back(std::move(st));
    }
    return r;
  } catch (const msgpack::type_error&) {
    throw_error("malformed coordinator message: a reply field has the wrong type");
  }
}

}  // namespace dpserve
