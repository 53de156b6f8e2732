#include "dpserve/ipc/io_struct.h"

#include <concepts>
#include <limits>
#include <new>
#include <type_traits>

#include <msgpack.hpp>

#include "dpserve/common/errors.h"

namespace dpserve {

namespace {

// ---- Field lists: one visit per struct, shared by packing and unpacking. ----

template <typename V>
void fields(TokenizedGenerateReq& m, V&& v) {
  v("rid", m.rid);
  v("input_text", m.input_text);
  v("input_ids", m.input_ids);
  v("sampling_params_json", m.sampling_params_json);
  v("stream", m.stream);
  v("return_logprob", m.return_logprob);
  v("top_logprobs_num", m.top_logprobs_num);
  v("logprob_start_len", m.logprob_start_len);
  v("data_parallel_rank", m.data_parallel_rank);
}

template <typename V>
void fields(AbortReq& m, V&& v) {
  v("rid", m.rid);
  v("abort_all", m.abort_all);
}

template <typename V>
void fields(TopLogprob& m, V&& v) {
  v("token", m.token);
  v("logprob", m.logprob);
}

template <typename V>
void fields(TokenIdOut& m, V&& v) {
  v("rid", m.rid);
  v("index", m.index);
  v("new_token_ids", m.new_token_ids);
  v("new_text", m.new_text);
  v("finished", m.finished);
  v("finish_reason_json", m.finish_reason_json);
  v("prompt_tokens", m.prompt_tokens);
  v("completion_tokens", m.completion_tokens);
  v("cached_tokens", m.cached_tokens);
  v("output_logprobs", m.output_logprobs);
  v("output_top_logprobs", m.output_top_logprobs);
}

template <typename V>
void fields(BatchTokenIdOut& m, V&& v) {
  v("outputs", m.outputs);
}

template <typename V>
void fields(FlushCacheReq&, V&&) {}

template <typename V>
void fields(FlushCacheResp& m, V&& v) {
  v("success", m.success);
  v("message", m.message);
  v("dp_rank", m.dp_rank);
}

template <typename V>
void fields(GetServerInfoReq&, V&&) {}

template <typename V>
void fields(GetServerInfoResp& m, V&& v) {
  v("info_json", m.info_json);
  v("dp_rank", m.dp_rank);
}

template <typename V>
void fields(LoadReport& m, V&& v) {
  v("dp_rank", m.dp_rank);
  v("num_running_reqs", m.num_running_reqs);
  v("num_waiting_reqs", m.num_waiting_reqs);
  v("num_used_tokens", m.num_used_tokens);
  v("num_queued_tokens", m.num_queued_tokens);
  v("max_total_tokens", m.max_total_tokens);
  v("timestamp", m.timestamp);
}

template <typename V>
void fields(DpGroupState& m, V&& v) {
  v("dp_rank", m.dp_rank);
  v("up", m.up);
  v("reason", m.reason);
}

template <typename V>
void fields(DpDispatchNotice& m, V&& v) {
  v("rids", m.rids);
  v("dp_ranks", m.dp_ranks);
}

constexpr std::string_view kNames[] = {"TokenizedGenerateReq", "AbortReq",       "BatchTokenIdOut",
                                       "FlushCacheReq",        "FlushCacheResp", "GetServerInfoReq",
                                       "GetServerInfoResp",    "LoadReport",     "DpGroupState",
                                       "DpDispatchNotice"};
static_assert(std::size(kNames) == std::variant_size_v<Message>);

// A struct with a field list.
template <typename T>
concept Record = requires(T& t) {
  fields(t, [](const char*, auto&) {});
};

template <Record T>
uint32_t field_count() {
  T probe{};
  uint32_t n = 0;
  fields(probe, [&](const char*, auto&) { ++n; });
  return n;
}

// ---- Packing. ----

using Packer = msgpack::packer<msgpack::sbuffer>;

void pack_value(Packer& pk, const std::string& s) {
  pk.pack_str(static_cast<uint32_t>(s.size()))
      .pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}
void pack_value(Packer& pk, bool b) { b ? pk.pack_true() : pk.pack_false(); }
void pack_value(Packer& pk, float f) { pk.pack_float(f); }
void pack_value(Packer& pk, double d) { pk.pack_double(d); }
template <std::integral T>
requires(!std::same_as<T, bool>) void pack_value(Packer& pk, T v) {
  if constexpr (std::is_signed_v<T>) {
    pk.pack_int64(static_cast<int64_t>(v));
  } else {
    pk.pack_uint64(static_cast<uint64_t>(v));
  }
}
template <typename T>
void pack_value(Packer& pk, const std::vector<T>& v);
template <Record T>
void pack_value(Packer& pk, const T& m) {
  pk.pack_array(field_count<T>());
  fields(const_cast<T&>(m), [&](const char*, const auto& f) { pack_value(pk, f); });
}
template <typename T>
void pack_value(Packer& pk, const std::vector<T>& v) {
  pk.pack_array(static_cast<uint32_t>(v.size()));
  for (const T& x : v) pack_value(pk, x);
}

// ---- Unpacking, with the path of the offending field in errors. ----

// Where a value sits in the message ("BatchTokenIdOut.outputs[2].rid"); formatted only on error.
struct Path {
  const Path* parent = nullptr;  // enclosing value, null at the root
  const char* field = nullptr;   // field name, or null for a vector element
  size_t index = 0;              // vector element index when field is null
};

std::string to_string(const Path* p) {
  if (p == nullptr) return "";
  std::string s = to_string(p->parent);
  if (p->field != nullptr) {
    if (!s.empty()) s += '.';
    s += p->field;
  } else {
    s += fmt::format("[{}]", p->index);
  }
  return s;
}

[[noreturn]] void wrong_type(const Path& p, std::string_view expected) {
  throw_error("{}: expected {}", to_string(&p), expected);
}

void read_value(const msgpack::object& o, std::string& s, const Path& p) {
  if (o.type != msgpack::type::STR) wrong_type(p, "a string");
  s.assign(o.via.str.ptr, o.via.str.size);
}
void read_value(const msgpack::object& o, bool& b, const Path& p) {
  if (o.type != msgpack::type::BOOLEAN) wrong_type(p, "a boolean");
  b = o.via.boolean;
}
template <std::floating_point T>
void read_value(const msgpack::object& o, T& x, const Path& p) {
  if (o.type == msgpack::type::FLOAT32 || o.type == msgpack::type::FLOAT64) {
    x = static_cast<T>(o.via.f64);
  } else if (o.type == msgpack::type::POSITIVE_INTEGER) {
    x = static_cast<T>(o.via.u64);
  } else if (o.type == msgpack::type::NEGATIVE_INTEGER) {
    x = static_cast<T>(o.via.i64);
  } else {
    wrong_type(p, "a number");
  }
}
template <std::integral T>
requires(!std::same_as<T, bool>) void read_value(const msgpack::object& o, T& x, const Path& p) {
  if (o.type == msgpack::type::POSITIVE_INTEGER) {
    if (o.via.u64 > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
      wrong_type(p, "an integer in range");
    }
    x = static_cast<T>(o.via.u64);
  } else if (o.type == msgpack::type::NEGATIVE_INTEGER) {
    if constexpr (std::is_signed_v<T>) {
      if (o.via.i64 < static_cast<int64_t>(std::numeric_limits<T>::min())) {
        wrong_type(p, "an integer in range");
      }
      x = static_cast<T>(o.via.i64);
    } else {
      wrong_type(p, "a non-negative integer");
    }
  } else {
    wrong_type(p, "an integer");
  }
}
template <typename T>
void read_value(const msgpack::object& o, std::vector<T>& v, const Path& p);
template <Record T>
void read_value(const msgpack::object& o, T& m, const Path& p) {
  const uint32_t n = field_count<T>();
  if (o.type != msgpack::type::ARRAY || o.via.array.size != n) {
    wrong_type(p, fmt::format("an array of {} fields", n));
  }
  uint32_t i = 0;
  fields(m, [&](const char* name, auto& f) {
    read_value(o.via.array.ptr[i++], f, Path{&p, name, 0});
  });
}
template <typename T>
void read_value(const msgpack::object& o, std::vector<T>& v, const Path& p) {
  if (o.type != msgpack::type::ARRAY) wrong_type(p, "an array");
  v.resize(o.via.array.size);
  for (uint32_t i = 0; i < o.via.array.size; ++i) {
    read_value(o.via.array.ptr[i], v[i], Path{&p, nullptr, i});
  }
}

// Reads alternative `I` of Message if it is the tag, recursing to the next otherwise.
template <size_t I = 0>
Message read_tagged(uint64_t tag, const msgpack::object& payload) {
  if constexpr (I == std::variant_size_v<Message>) {
    throw_error("unknown message tag {}", tag);
  } else {
    if (tag != I) return read_tagged<I + 1>(tag, payload);
    std::variant_alternative_t<I, Message> m{};
    const Path root{nullptr, kNames[I].data(), 0};
    read_value(payload, m, root);
    return Message{std::in_place_index<I>, std::move(m)};
  }
}

}  // namespace

std::string encode(const Message& msg) {
  msgpack::sbuffer buf;
  Packer pk(buf);
  pk.pack_array(3);
  pk.pack_uint32(kWireVersion);
  pk.pack_uint32(static_cast<uint32_t>(msg.index()));
  std::visit([&](const auto& m) { pack_value(pk, m); }, msg);
  return std::string(buf.data(), buf.size());
}

Message decode(std::string_view bytes) {
  try {
    // Bound every container by the input size, so that garbage cannot claim a huge array
    // (each element takes at least one byte), and bound the nesting depth.
    const size_t n = bytes.size();
    const msgpack::unpack_limit limit(n, n, n, n, n, 16);
    size_t offset = 0;
    msgpack::object_handle oh =
        msgpack::unpack(bytes.data(), bytes.size(), offset, nullptr, nullptr, limit);
    if (offset != bytes.size()) {
      throw_error("{} trailing bytes after the message", bytes.size() - offset);
    }
    const msgpack::object& o = oh.get();
    if (o.type != msgpack::type::ARRAY || o.via.array.size != 3) {
      throw_error("not an envelope [version, tag, payload]");
    }
    const msgpack::object& version = o.via.array.ptr[0];
    const msgpack::object& tag = o.via.array.ptr[1];
    if (version.type != msgpack::type::POSITIVE_INTEGER || version.via.u64 != kWireVersion) {
      throw_error("wire version is not {}", kWireVersion);
    }
    if (tag.type != msgpack::type::POSITIVE_INTEGER) throw_error("message tag is not an integer");
    return read_tagged(tag.via.u64, o.via.array.ptr[2]);
  } catch (const Error& e) {
    throw Error(fmt::format("ipc: malformed message ({} bytes): {}", bytes.size(), e.what()));
  } catch (const msgpack::unpack_error& e) {
    throw Error(fmt::format("ipc: malformed message ({} bytes): {}", bytes.size(), e.what()));
  } catch (const msgpack::type_error& e) {
    throw Error(fmt::format("ipc: malformed message ({} bytes): {}", bytes.size(), e.what()));
  } catch (const std::bad_alloc&) {
    throw Error(fmt::format("ipc: malformed message ({} bytes): too large", bytes.size()));
  }
}

std::string_view message_name(const Message& msg) { return kNames[msg.index()]; }

}  // namespace dpserve
