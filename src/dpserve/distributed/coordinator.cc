#include "dpserve/distributed/coordinator.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/distributed/coordinator_protocol.h"
#include "dpserve/ipc/zmq_socket.h"

namespace dpserve {

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// A parked blocking request (get, wait, or one barrier arrival).
struct Parked {
  std::string identity;                       // the client's routing id
  CoordRequest req;                           // what it asked
  std::optional<Clock::time_point> deadline;  // none = forever
  std::string who;                            // "rank 2 (node 1)" or "pid 123 on host"
};

// Deadline of a request's timeout (negative = forever).
std::optional<Clock::time_point> deadline_of(const CoordRequest& req, Clock::time_point now) {
  if (req.timeout_ms < 0) return std::nullopt;
  return now + Millis(req.timeout_ms);
}

}  // namespace

// Everything the service thread and the public methods share, under `mu`.
struct Coordinator::State {
  // A connected client, by routing id.
  struct Peer {
    int64_t pid = 0;
    std::string host;
    int rank = -1;      // the global rank it registered, -1 = none
    bool left = false;  // deregistered: no shutdown broadcast
  };
  // A registered rank.
  struct Rank {
    RankInfo info;
    RankLiveness state = RankLiveness::kAlive;
    Clock::time_point last_heartbeat;
    std::string identity;  // routing id of the client that registered it
  };
  struct Barrier {
    int64_t n = 0;
    std::vector<Parked> arrived;
  };

  mutable std::mutex mu;
  std::condition_variable ranks_changed;  // registrations and deaths, for wait_for_ranks
  zmq::socket_t router;
  std::map<std::string, Peer> peers;
  std::map<int, Rank> ranks;
  std::optional<std::pair<Fingerprint, int>> reference;  // first registration's fingerprint, node
  std::map<std::string, std::string> kv;
  std::vector<Parked> waiters;  // parked get / wait
  std::map<std::string, Barrier> barriers;
  std::vector<std::string> shutdown_reasons;  // broadcasts asked for by broadcast_shutdown
  bool stopping = false;
  std::vector<std::pair<std::string, std::string>> outbox;  // (identity, bytes) to send
  std::vector<RankState> newly_dead;                        // for on_rank_dead, outside the lock
  Millis heartbeat_interval{0}, heartbeat_timeout{0};

  RankState state_of(const Rank& r, Clock::time_point now) const {
    return RankState{r.info, r.state, seconds(now - r.last_heartbeat)};
  }

  std::string who(const std::string& identity) const {
    auto it = peers.find(identity);
    if (it == peers.end()) return "an unknown client";
    if (it->second.rank >= 0) {
      return rank_label(it->second.rank, ranks.at(it->second.rank).info.node_rank);
    }
    return fmt::format("pid {} on {}", it->second.pid, it->second.host);
  }

  void reply(const std::string& identity, CoordReply r) {
    outbox.emplace_back(identity, encode_reply(r));
  }
  void reply_ok(const std::string& identity, uint64_t id) { reply(identity, CoordReply{.id = id}); }
  void reply_error(const std::string& identity, uint64_t id, std::string error) {
    reply(identity, CoordReply{.id = id, .ok = false, .error = std::move(error)});
  }

  bool has_all(const std::vector<std::string>& keys) const {
    return std::all_of(keys.begin(), keys.end(), [&](const auto& k) { return kv.count(k) > 0; });
  }

  // Answers parked get / wait requests whose keys are now all set.
  void release_waiters() {
    std::erase_if(waiters, [&](const Parked& p) {
      if (!has_all(p.req.keys)) return false;
      CoordReply r{.id = p.req.id};
      if (p.req.op == CoordOp::kGet) r.value = kv.at(p.req.keys[0]);
      reply(p.identity, std::move(r));
      return true;
    });
  }

  // Fails parked requests and barrier arrivals whose deadline passed.
  void expire(Clock::time_point now) {
    std::erase_if(waiters, [&](const Parked& p) {
      if (!p.deadline || *p.deadline > now) return false;
      std::vector<std::string> missing;
      for (const auto& k : p.req.keys) {
        if (!kv.count(k)) missing.push_back(k);
      }
      const double t = p.req.timeout_ms / 1000.0;
      if (p.req.op == CoordOp::kGet) {
        reply_error(p.identity, p.req.id,
                    fmt::format("coordinator get of key '{}' timed out after {:.1f} s: the key "
                                "was never set",
                                p.req.keys[0], t));
      } else {
        reply_error(p.identity, p.req.id,
                    fmt::format("coordinator wait timed out after {:.1f} s: keys not set: {}", t,
                                fmt::join(missing, ", ")));
      }
      spdlog::debug("coordinator: {} of {} by {} timed out", coord_op_name(p.req.op),
                    fmt::join(p.req.keys, ","), p.who);
      return true;
    });
    for (auto it = barriers.begin(); it != barriers.end();) {
      Barrier& b = it->second;
      std::vector<Parked> late;
      std::erase_if(b.arrived, [&](Parked& p) {
        if (!p.deadline || *p.deadline > now) return false;
        late.push_back(std::move(p));
        return true;
      });
      for (const Parked& p : late) {
        std::vector<std::string> present;
        for (const Parked& q : b.arrived) present.push_back(q.who);
        present.push_back(p.who);
        spdlog::warn("coordinator: barrier '{}' timed out for {}: {} of {} arrived", it->first,
                     p.who, b.arrived.size() + 1, b.n);
        reply_error(p.identity, p.req.id,
                    fmt::format("barrier '{}' timed out after {:.1f} s: {} of {} participants "
                                "arrived ({})",
                                it->first, p.req.timeout_ms / 1000.0, b.arrived.size() + 1, b.n,
                                fmt::join(present, ", ")));
      }
      it = b.arrived.empty() ? barriers.erase(it) : std::next(it);
    }
  }

  // Drops everything a client had parked; barriers it was in fail for the other participants
  // when `why` is set (a dead participant can never arrive again).
  void drop_client(const std::string& identity, const std::string& why) {
    std::erase_if(waiters, [&](const Parked& p) { return p.identity == identity; });
    for (auto it = barriers.begin(); it != barriers.end();) {
      Barrier& b = it->second;
      const size_t before = b.arrived.size();
      std::erase_if(b.arrived, [&](const Parked& p) { return p.identity == identity; });
      if (b.arrived.size() != before && !why.empty()) {
        for (const Parked& p : b.arrived) {
          reply_error(p.identity, p.req.id, fmt::format("barrier '{}' failed: {}", it->first, why));
        }
        b.arrived.clear();
      }
      it = b.arrived.empty() ? barriers.erase(it) : std::next(it);
    }
  }

  // Declares ranks dead whose last heartbeat is older than the timeout.
  void check_heartbeats(Clock::time_point now) {
    for (auto& [rank, r] : ranks) {
      if (r.state != RankLiveness::kAlive || now - r.last_heartbeat <= heartbeat_timeout) continue;
      r.state = RankLiveness::kDead;
      const std::string label = rank_label(rank, r.info.node_rank);
      const double age = seconds(now - r.last_heartbeat);
      spdlog::warn("coordinator: {} (host {}, pid {}) is dead: no heartbeat for {:.1f} s", label,
                   r.info.host, r.info.pid, age);
      drop_client(r.identity, fmt::format("{} is dead (no heartbeat for {:.1f} s)", label, age));
      newly_dead.push_back(state_of(r, now));
      ranks_changed.notify_all();
    }
  }

  void handle_register(const std::string& identity, Peer& peer, const CoordRequest& req,
                       Clock::time_point now) {
    const RankInfo& info = req.rank;
    const std::string label = rank_label(info.global_rank, info.node_rank);
    auto refuse = [&](const std::string& why) {
      spdlog::error("coordinator: refused {} (host {}, pid {}): {}", label, info.host, info.pid,
                    why);
      reply_error(identity, req.id, why);
    };
    if (info.global_rank < 0) return refuse(fmt::format("{}: negative global rank", label));
    if (peer.rank >= 0 && peer.rank != info.global_rank) {
      return refuse(fmt::format("{}: this client already registered rank {}", label, peer.rank));
    }
    if (auto it = ranks.find(info.global_rank);
        it != ranks.end() && it->second.state == RankLiveness::kAlive) {
      const RankInfo& old = it->second.info;
      return refuse(fmt::format("{} is already registered (host {}, pid {}) and alive", label,
                                old.host, old.pid));
    }
    if (reference) {
      const std::string diff =
          fingerprint_diff(reference->first, reference->second, info.fingerprint);
      if (!diff.empty()) return refuse(fmt::format("{} differs: {}", label, diff));
    } else {
      reference.emplace(info.fingerprint, info.node_rank);
    }
    ranks[info.global_rank] = Rank{info, RankLiveness::kAlive, now, identity};
    peer.rank = info.global_rank;
    peer.left = false;
    std::vector<std::string> eps;
    for (const auto& [name, ep] : info.endpoints) eps.push_back(name + "=" + ep);
    spdlog::info("coordinator: {} registered (host {}, pid {}, endpoints {{{}}})", label, info.host,
                 info.pid, fmt::join(eps, ", "));
    reply_ok(identity, req.id);
    ranks_changed.notify_all();
  }

  void handle(const std::string& identity, const CoordRequest& req, Clock::time_point now) {
    Peer& peer = peers[identity];
    Rank* rank = nullptr;
    if (peer.rank >= 0) {
      rank = &ranks.at(peer.rank);
      if (rank->identity != identity) rank = nullptr;  // re-registered by another client
    }
    if (rank != nullptr && rank->state == RankLiveness::kAlive) rank->last_heartbeat = now;
    if (rank != nullptr && rank->state == RankLiveness::kDead && req.op != CoordOp::kRegister) {
      return reply_error(identity, req.id,
                         fmt::format("the coordinator declared {} dead (no heartbeat within "
                                     "{:.1f} s)",
                                     rank_label(peer.rank, rank->info.node_rank),
                                     heartbeat_timeout.count() / 1000.0));
    }
    const bool needs_key = req.op == CoordOp::kSet || req.op == CoordOp::kGet ||
                           req.op == CoordOp::kAdd || req.op == CoordOp::kDelete ||
                           req.op == CoordOp::kBarrier;
    if (needs_key && (req.keys.size() != 1 || req.keys[0].empty())) {
      return reply_error(
          identity, req.id,
          fmt::format("coordinator {}: needs exactly one non-empty key", coord_op_name(req.op)));
    }
    switch (req.op) {
      case CoordOp::kHello:
        peer.pid = req.pid;
        peer.host = req.host;
        spdlog::debug("coordinator: client pid {} on {} connected", req.pid, req.host);
        return reply(identity, CoordReply{.id = req.id,
                                          .heartbeat_interval_ms = heartbeat_interval.count(),
                                          .heartbeat_timeout_ms = heartbeat_timeout.count()});
      case CoordOp::kRegister:
        return handle_register(identity, peer, req, now);
      case CoordOp::kLeave:
        if (rank != nullptr) {
          rank->state = RankLiveness::kLeft;
          spdlog::info("coordinator: {} (host {}, pid {}) left", who(identity), rank->info.host,
                       rank->info.pid);
          ranks_changed.notify_all();
        }
        peer.left = true;
        drop_client(identity, "");
        return reply_ok(identity, req.id);
      case CoordOp::kHeartbeat:
        return reply_ok(identity, req.id);
      case CoordOp::kSet:
        kv[req.keys[0]] = req.value;
        reply_ok(identity, req.id);
        return release_waiters();
      case CoordOp::kGet:
      case CoordOp::kWait:
        if (has_all(req.keys)) {
          CoordReply r{.id = req.id};
          if (req.op == CoordOp::kGet) r.value = kv.at(req.keys[0]);
          return reply(identity, std::move(r));
        }
        waiters.push_back(Parked{identity, req, deadline_of(req, now), who(identity)});
        return expire(now);  // a zero timeout fails at once
      case CoordOp::kAdd: {
        int64_t value = 0;
        if (auto it = kv.find(req.keys[0]); it != kv.end()) {
          const std::string& s = it->second;
          auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
          if (ec != std::errc() || end != s.data() + s.size()) {
            return reply_error(identity, req.id,
                               fmt::format("coordinator add: key '{}' holds '{}', not an integer",
                                           req.keys[0], s));
          }
        }
        value += req.number;
        kv[req.keys[0]] = std::to_string(value);
        reply(identity, CoordReply{.id = req.id, .number = value});
        return release_waiters();
      }
      case CoordOp::kCheck:
        return reply(identity, CoordReply{.id = req.id, .number = has_all(req.keys) ? 1 : 0});
      case CoordOp::kDelete:
        return reply(identity, CoordReply{.id = req.id, .number = kv.erase(req.keys[0]) ? 1 : 0});
      case CoordOp::kBarrier:
        return handle_barrier(identity, req, now);
      case CoordOp::kRankStates: {
        CoordReply r{.id = req.id};
        for (const auto& [_, rk] : ranks) r.ranks.push_back(state_of(rk, now));
        return reply(identity, std::move(r));
      }
    }
  }

  void handle_barrier(const std::string& identity, const CoordRequest& req, Clock::time_point now) {
    const std::string& name = req.keys[0];
    if (req.number < 1) {
      return reply_error(identity, req.id,
                         fmt::format("barrier '{}': {} participants", name, req.number));
    }
    Barrier& b = barriers[name];
    if (!b.arrived.empty() && b.n != req.number) {
      return reply_error(identity, req.id,
                         fmt::format("barrier '{}' has {} participants but {} says {}", name, b.n,
                                     who(identity), req.number));
    }
    b.n = req.number;
    b.arrived.push_back(Parked{identity, req, deadline_of(req, now), who(identity)});
    if (static_cast<int64_t>(b.arrived.size()) == b.n) {
      for (const Parked& p : b.arrived) reply_ok(p.identity, p.req.id);
      spdlog::debug("coordinator: barrier '{}' passed by {} participants", name, b.n);
      barriers.erase(name);
      return;
    }
    expire(now);
  }

  // When the service thread must wake next (a parked deadline or the heartbeat check).
  Clock::time_point next_wakeup(Clock::time_point now) const {
    const Millis check = std::clamp(heartbeat_timeout / 10, Millis(10), Millis(200));
    Clock::time_point t = now + check;
    for (const Parked& p : waiters) {
      if (p.deadline) t = std::min(t, *p.deadline);
    }
    for (const auto& [_, b] : barriers) {
      for (const Parked& p : b.arrived) {
        if (p.deadline) t = std::min(t, *p.deadline);
      }
    }
    return t;
  }
};

Coordinator::Coordinator(CoordinatorOptions options)
    : options_(std::move(options)), state_(std::make_unique<State>()) {
  DPSERVE_CHECK(options_.heartbeat_interval.count() > 0 &&
                    options_.heartbeat_timeout > options_.heartbeat_interval,
                "heartbeat_timeout must exceed heartbeat_interval");
  state_->heartbeat_interval = options_.heartbeat_interval;
  state_->heartbeat_timeout = options_.heartbeat_timeout;
  state_->router = zmq::socket_t(zmq_context(), zmq::socket_type::router);
  state_->router.set(zmq::sockopt::linger, 0);
  state_->router.set(zmq::sockopt::sndhwm, 0);
  state_->router.set(zmq::sockopt::rcvhwm, 0);
  if (options_.host.find(':') != std::string::npos) state_->router.set(zmq::sockopt::ipv6, 1);
  if (!options_.secret.empty()) {
    secure_server_socket(state_->router, options_.secret, "coordinator");
  } else {
    spdlog::warn("coordinator: no cluster secret: any peer that reaches the port can join");
  }
  const std::string requested = coordinator_address(options_.host, options_.port);
  const std::string bind_to =
      options_.port == 0 ? requested.substr(0, requested.rfind(':')) + ":*" : requested;
  try {
    state_->router.bind(bind_to);
  } catch (const zmq::error_t& e) {
    throw_error("cannot start the coordinator on {}: {}", requested, e.what());
  }
  endpoint_ = state_->router.get(zmq::sockopt::last_endpoint);
  port_ = std::stoi(endpoint_.substr(endpoint_.rfind(':') + 1));
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) throw_error("coordinator: eventfd failed: {}", strerror(errno));
  spdlog::info("coordinator: serving on {} (heartbeat every {} ms, dead after {} ms, {})",
               endpoint_, options_.heartbeat_interval.count(), options_.heartbeat_timeout.count(),
               options_.secret.empty() ? "no authentication" : "cluster secret required");
  thread_ = std::thread([this] { serve(); });
}

Coordinator::~Coordinator() { stop(); }

void Coordinator::wake() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
}

void Coordinator::stop() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->stopping && !thread_.joinable()) return;
    state_->stopping = true;
    state_->ranks_changed.notify_all();
  }
  if (thread_.joinable()) {
    wake();
    thread_.join();
    state_->router.close();
    ::close(wake_fd_);
    wake_fd_ = -1;
    spdlog::info("coordinator: stopped ({})", endpoint_);
  }
}

void Coordinator::serve() {
  State& s = *state_;
  while (true) {
    Clock::time_point now = Clock::now();
    long timeout_ms = 0;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      if (s.stopping) return;
      timeout_ms = std::max<long>(0, std::chrono::ceil<Millis>(s.next_wakeup(now) - now).count());
    }
    zmq_pollitem_t items[2] = {{s.router.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, wake_fd_, ZMQ_POLLIN, 0}};
    if (zmq_poll(items, 2, timeout_ms) < 0 && zmq_errno() != EINTR) {
      spdlog::error("coordinator: poll failed: {}", zmq_strerror(zmq_errno()));
      return;
    }
    if (items[1].revents & ZMQ_POLLIN) {
      uint64_t n;
      [[maybe_unused]] ssize_t r = ::read(wake_fd_, &n, sizeof(n));
    }
    // Read every waiting frame pair (identity, payload) before taking the lock.
    std::vector<std::pair<std::string, std::string>> inbox;
    while (true) {
      zmq::message_t identity, payload;
      if (!s.router.recv(identity, zmq::recv_flags::dontwait)) break;
      if (!identity.more() || !s.router.recv(payload, zmq::recv_flags::none)) continue;
      while (payload.more()) (void)s.router.recv(payload, zmq::recv_flags::none);  // stray frames
      inbox.emplace_back(identity.to_string(), payload.to_string());
    }
    std::vector<std::pair<std::string, std::string>> outbox;
    std::vector<RankState> dead;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      now = Clock::now();
      for (const auto& [identity, bytes] : inbox) {
        try {
          s.handle(identity, decode_request(bytes), now);
        } catch (const Error& e) {
          spdlog::warn("coordinator: dropped a message from {}: {}", s.who(identity), e.what());
        }
      }
      s.expire(now);
      s.check_heartbeats(now);
      for (const std::string& reason : s.shutdown_reasons) {
        int sent = 0;
        for (const auto& [identity, peer] : s.peers) {
          if (peer.left) continue;
          s.reply(identity, CoordReply{.kind = CoordReplyKind::kShutdown, .error = reason});
          ++sent;
        }
        spdlog::info("coordinator: shutdown broadcast to {} clients: {}", sent, reason);
      }
      s.shutdown_reasons.clear();
      outbox.swap(s.outbox);
      dead.swap(s.newly_dead);
    }
    for (const auto& [identity, bytes] : outbox) {
      try {
        s.router.send(zmq::buffer(identity), zmq::send_flags::sndmore);
        s.router.send(zmq::buffer(bytes), zmq::send_flags::dontwait);
      } catch (const zmq::error_t& e) {
        spdlog::warn("coordinator: send failed: {}", e.what());
      }
    }
    if (options_.on_rank_dead) {
      for (const RankState& st : dead) options_.on_rank_dead(st);
    }
  }
}

std::vector<RankState> Coordinator::wait_for_ranks(int n, Millis timeout) {
  State& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  auto all_alive = [&] {
    for (int r = 0; r < n; ++r) {
      auto it = s.ranks.find(r);
      if (it == s.ranks.end() || it->second.state != RankLiveness::kAlive) return false;
    }
    return true;
  };
  const auto deadline = Clock::now() + timeout;
  while (!all_alive()) {
    if (s.stopping) throw_error("the coordinator at {} stopped while waiting for ranks", endpoint_);
    if (s.ranks_changed.wait_until(lock, deadline) == std::cv_status::timeout && !all_alive()) {
      std::vector<std::string> missing, gone;
      int alive = 0;
      for (int r = 0; r < n; ++r) {
        auto it = s.ranks.find(r);
        if (it == s.ranks.end()) {
          missing.push_back(std::to_string(r));
        } else if (it->second.state != RankLiveness::kAlive) {
          gone.push_back(fmt::format("{} {}", rank_label(r, it->second.info.node_rank),
                                     liveness_name(it->second.state)));
        } else {
          ++alive;
        }
      }
      throw_error(
          "only {} of {} ranks registered with the coordinator at {} after {:.1f} s{}{}", alive, n,
          endpoint_, timeout.count() / 1000.0,
          missing.empty() ? "" : fmt::format("; missing ranks: {}", fmt::join(missing, ", ")),
          gone.empty() ? "" : fmt::format("; {}", fmt::join(gone, ", ")));
    }
  }
  std::vector<RankState> out;
  const auto now = Clock::now();
  for (int r = 0; r < n; ++r) out.push_back(s.state_of(s.ranks.at(r), now));
  return out;
}

std::vector<RankState> Coordinator::rank_states() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  std::vector<RankState> out;
  const auto now = Clock::now();
  for (const auto& [_, r] : state_->ranks) out.push_back(state_->state_of(r, now));
  return out;
}

bool Coordinator::declare_dead(int global_rank, const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = state_->ranks.find(global_rank);
    if (it == state_->ranks.end() || it->second.state != RankLiveness::kAlive) return false;
    State::Rank& r = it->second;
    r.state = RankLiveness::kDead;
    spdlog::info("coordinator: {} (host {}, pid {}) declared dead: {}",
                 rank_label(global_rank, r.info.node_rank), r.info.host, r.info.pid, why);
    state_->drop_client(
        r.identity, fmt::format("{} is dead: {}", rank_label(global_rank, r.info.node_rank), why));
    state_->ranks_changed.notify_all();
  }
  wake();  // the service thread sends the failed barriers' answers
  return true;
}

int Coordinator::broadcast_shutdown(const std::string& reason) {
  int n = 0;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    for (const auto& [_, peer] : state_->peers) n += peer.left ? 0 : 1;
    state_->shutdown_reasons.push_back(reason);
  }
  wake();
  return n;
}

void Coordinator::set(const std::string& key, const std::string& value) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->kv[key] = value;
    state_->release_waiters();
  }
  wake();  // the service thread sends the answers release_waiters queued
}

std::optional<std::string> Coordinator::value(const std::string& key) const {
  std::lock_guard<std::mutex> lock(state_->mu);
  auto it = state_->kv.find(key);
  if (it == state_->kv.end()) return std::nullopt;
  return it->second;
}

}  // namespace dpserve
