#include "dpserve/ipc/zmq_auth.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sodium.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <zmq_addon.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/ipc/zmq_socket.h"

namespace dpserve {

namespace {

using Clock = std::chrono::steady_clock;

// Argon2id's salt: fixed, so that every member derives the same keypair from the same secret.
constexpr char kSalt[crypto_pwhash_SALTBYTES + 1] = "dpserve.curve.1";
static_assert(sizeof(kSalt) == crypto_pwhash_SALTBYTES + 1);
// Argon2id's cost: OWASP's recommended minimum (19 MiB, 2 passes), a few 10 ms once per process;
// every rank derives at start-up, so the cost is paid in parallel, not per connection.
constexpr unsigned long long kArgon2Passes = 2;
constexpr size_t kArgon2Memory = size_t{19} << 20;
// Repeated refusals from one host for one reason are logged at most this often.
constexpr auto kRefusalLogInterval = std::chrono::seconds(10);

std::atomic<int64_t> g_refused{0};

void init_sodium() {
  static const int rc = sodium_init();  // thread-safe; 1 = already initialised
  if (rc < 0) throw_error("cluster secret: libsodium failed to initialise");
}

void require_curve() {
  if (!zmq_has("curve")) {
    throw_error("cluster secret: this libzmq was built without CURVE security");
  }
}

std::string to_hex(const CurveKey& key) {
  std::string out(key.size() * 2 + 1, '\0');
  sodium_bin2hex(out.data(), out.size(), key.data(), key.size());
  out.pop_back();
  return out;
}

// "1.2.3.4:5678", "[::1]:5678", "local process pid 12 (uid 1000)" or why it is unknown.
std::string peer_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return fmt::format("{}:{}", host, ntohs(a->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return fmt::format("[{}]:{}", host, ntohs(a->sin6_port));
  }
  if (ss.ss_family == AF_UNIX) {
    ucred cred{};
    socklen_t clen = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0) {
      return fmt::format("local process pid {} (uid {})", cred.pid, cred.uid);
    }
    return "a local process";
  }
  return fmt::format("an address of family {}", ss.ss_family);
}

// Peers of local TCP port `port` whose connection this side has closed (FIN_WAIT1/2, CLOSING,
// TIME_WAIT: what a refused handshake leaves for a minute), from /proc/net/tcp{,6}, as
// peer_address formats them.
std::vector<std::string> closed_peers_of_port(int port) {
  std::vector<std::string> out;
  for (const bool v6 : {false, true}) {
    std::ifstream in(v6 ? "/proc/net/tcp6" : "/proc/net/tcp");
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      if (!(fields >> slot >> local >> remote >> state)) continue;
      const int st = static_cast<int>(std::strtol(state.c_str(), nullptr, 16));
      if (st != 4 && st != 5 && st != 6 && st != 11) continue;  // FIN_WAIT1/2, TIME_WAIT, CLOSING
      const size_t lc = local.find(':'), rc = remote.find(':');
      if (lc == std::string::npos || rc == std::string::npos) continue;
      if (std::strtol(local.c_str() + lc + 1, nullptr, 16) != port) continue;
      const long rport = std::strtol(remote.c_str() + rc + 1, nullptr, 16);
      char host[INET6_ADDRSTRLEN] = {};
      if (!v6 && rc == 8) {
        in_addr a{};
        a.s_addr = static_cast<uint32_t>(std::strtoul(remote.substr(0, 8).c_str(), nullptr, 16));
        inet_ntop(AF_INET, &a, host, sizeof(host));
        out.push_back(fmt::format("{}:{}", host, rport));
      } else if (v6 && rc == 32) {
        in6_addr a{};
        for (int w = 0; w < 4; ++w) {
          const uint32_t word = static_cast<uint32_t>(
              std::strtoul(remote.substr(static_cast<size_t>(w) * 8, 8).c_str(), nullptr, 16));
          std::memcpy(&a.s6_addr[w * 4], &word, sizeof(word));
        }
        inet_ntop(AF_INET6, &a, host, sizeof(host));
        const std::string h = host;
        // A v4 peer of a dual-stack socket: show it as v4.
        out.push_back(h.starts_with("::ffff:") && h.find('.') != std::string::npos
                          ? fmt::format("{}:{}", h.substr(7), rport)
                          : fmt::format("[{}]:{}", h, rport));
      }
    }
  }
  return out;
}

// The host part of an address from peer_address or ZAP ("1.2.3.4:5678" -> "1.2.3.4").
std::string host_of(const std::string& address) {
  if (address.starts_with('[')) return address.substr(0, address.find(']') + 1);
  const size_t colon = address.rfind(':');
  if (colon != std::string::npos && address.find(':') == colon) return address.substr(0, colon);
  return address;
}

// A refused peer as logged: "1.2.3.4:5678", or only its host when the port is unknown.
struct Peer {
  std::string address;  // what the log shows
  std::string host;     // what repeats are grouped by
};

// Counts a refused peer and logs it, summarising repeats from one host for one reason.
void record_refusal(std::string_view name, const Peer& peer, const std::string& reason) {
  g_refused.fetch_add(1);
  struct Entry {
    Clock::time_point last_logged;
    int64_t suppressed = 0;
  };
  static std::mutex mu;
  static std::map<std::string, Entry> recent;
  const std::string key = fmt::format("{}|{}|{}", name, peer.host, reason);
  const auto now = Clock::now();
  int64_t suppressed = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (recent.size() >= 1024) {  // many hosts: forget the quiet ones
      std::erase_if(
          recent, [&](const auto& e) { return now - e.second.last_logged >= kRefusalLogInterval; });
    }
    auto [it, fresh] = recent.try_emplace(key);
    if (!fresh && now - it->second.last_logged < kRefusalLogInterval) {
      ++it->second.suppressed;
      return;
    }
    suppressed = it->second.suppressed;
    it->second = Entry{now, 0};
  }
  spdlog::warn("{}: refused a peer at {}: {}{}", name, peer.address, reason,
               suppressed > 0 ? fmt::format(" ({} more refusals from {} for this reason since the "
                                            "last report)",
                                            suppressed, peer.host)
                              : std::string());
}

std::string protocol_error_reason(uint32_t code) {
  switch (code) {
    case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
      return "its CURVE handshake does not match the cluster's key (a different "
             "--cluster-secret)";
    case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
      return "it did not use CURVE security (no --cluster-secret, or not a dpserve peer)";
    default:
      break;
  }
  if ((code & 0xf0000000u) == ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED) {
    return fmt::format("the authentication handler failed (ZAP error 0x{:x})", code);
  }
  return fmt::format("it broke the ZMTP handshake (protocol error 0x{:x})", code);
}

// The ZAP domain of a secured server socket: its name and the public key clients must present.
std::string zap_domain(std::string_view name, const ClusterSecret& secret) {
  return fmt::format("dpserve|{}|{}", name, to_hex(secret.public_key()));
}

// Answers ZAP requests (RFC 27) for every secured server socket of this process's context.
void zap_loop(zmq::socket_t socket) {
  while (true) {
    std::vector<zmq::message_t> f;
    try {
      if (!zmq::recv_multipart(socket, std::back_inserter(f))) continue;
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      return;  // the context is going away
    }
    // version, request id, domain, address, routing id, mechanism, credentials...
    std::string status = "400", text, name = "zmq server", address = "an unknown address";
    if (f.size() >= 6 && f[0].to_string_view() == "1.0") {
      const std::string domain = f[2].to_string();
      address = f[3].to_string();
      const std::string mechanism = f[5].to_string();
      const size_t bar1 = domain.find('|'), bar2 = domain.rfind('|');
      std::string want;
      if (domain.starts_with("dpserve|") && bar2 > bar1) {
        name = domain.substr(bar1 + 1, bar2 - bar1 - 1);
        want = domain.substr(bar2 + 1);
      }
      if (mechanism != "CURVE") {
        text = fmt::format("it used the {} mechanism, not CURVE", mechanism);
      } else if (f.size() < 7 || f[6].size() != crypto_box_PUBLICKEYBYTES || want.empty()) {
        text = "it presented no CURVE key";
      } else {
        CurveKey key{};
        std::memcpy(key.data(), f[6].data(), key.size());
        if (to_hex(key) == want) {
          status = "200";
        } else {
          text =
              "its CURVE key is not the cluster's (it knows the server's key but not the "
              "--cluster-secret)";
        }
      }
    } else {
      text = "a malformed ZAP request";
    }
    if (status != "200") record_refusal(name, Peer{address, address}, text);
    std::vector<zmq::const_buffer> reply = {
        zmq::str_buffer("1.0"),
        f.size() >= 2 ? zmq::buffer(f[1].data(), f[1].size()) : zmq::const_buffer(),
        zmq::buffer(status),
        zmq::buffer(status == "200" ? std::string_view("OK") : std::string_view(text)),
        zmq::const_buffer(),
        zmq::const_buffer()};
    try {
      (void)zmq::send_multipart(socket, reply);
    } catch (const zmq::error_t&) {
      return;
    }
  }
}

// Starts this process's ZAP handler on zmq_context() unless it runs already.
void ensure_zap_handler() {
  static std::mutex mu;
  static pid_t started_in = 0;  // a forked child needs its own (its context is new)
  std::lock_guard<std::mutex> lock(mu);
  if (started_in == getpid()) return;
  zmq::socket_t socket(zmq_context(), zmq::socket_type::rep);
  socket.set(zmq::sockopt::linger, 0);
  try {
    socket.bind("inproc://zeromq.zap.01");
  } catch (const zmq::error_t& e) {
    throw_error("cluster secret: cannot start the ZAP handler: {}", e.what());
  }
  std::thread(zap_loop, std::move(socket)).detach();
  started_in = getpid();
}

// Reads the monitor events of one secured server socket and records refused peers, until the
// socket closes.
void watch_loop(std::string name, zmq::socket_t monitor) {
  struct Accepted {
    int fd;
    std::string address;  // empty when the connection was gone before it could be read
  };
  std::deque<Accepted> handshaking;  // accepted connections whose handshake has not ended
  std::deque<std::string> reported;  // recently reported addresses (for the fallback below)
  int port = 0;                      // the listening port, from the events' endpoint
  Clock::time_point last_scan;       // when the table of closed connections was last read
  // The refused peer: its address read at accept time when the connection was still open, else
  // (ZeroMQ may close a refused connection before this thread sees it accepted) the peers of the
  // port whose connections just closed and were not reported before: the one, or their host(s).
  auto peer_of = [&](std::string address) -> Peer {
    auto remember = [&](const std::string& a) {
      reported.push_back(a);
      while (reported.size() > 4096) reported.pop_front();
    };
    if (!address.empty()) {
      remember(address);
      return {address, host_of(address)};
    }
    std::vector<std::string> fresh, hosts;
    // The table can be long under a flood of connections: look at most every 50 ms.
    const auto now = Clock::now();
    if (port > 0 && now - last_scan >= std::chrono::milliseconds(50)) {
      last_scan = now;
      for (std::string& a : closed_peers_of_port(port)) {
        if (std::find(reported.begin(), reported.end(), a) != reported.end()) continue;
        if (std::find(fresh.begin(), fresh.end(), a) == fresh.end()) fresh.push_back(a);
        const std::string h = host_of(a);
        if (std::find(hosts.begin(), hosts.end(), h) == hosts.end()) hosts.push_back(h);
      }
    }
    if (fresh.size() == 1) {
      remember(fresh[0]);
      return {fresh[0], hosts[0]};
    }
    if (hosts.size() == 1) return {hosts[0], hosts[0]};
    if (!hosts.empty() && hosts.size() <= 4) {
      const std::string all = fmt::format("{}", fmt::join(hosts, ", "));
      return {"one of " + all, all};
    }
    return {"an unknown address (the connection was gone)", "unknown"};
  };
  auto pop = [&]() {
    if (handshaking.empty()) return peer_of("");
    std::string a = std::move(handshaking.front().address);
    handshaking.pop_front();
    return peer_of(std::move(a));
  };
  while (true) {
    zmq::message_t event, endpoint;
    try {
      if (!monitor.recv(event) || !event.more() || !monitor.recv(endpoint)) continue;
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      return;
    }
    if (event.size() < 6) continue;
    uint16_t id = 0;
    uint32_t value = 0;
    std::memcpy(&id, event.data(), sizeof(id));
    std::memcpy(&value, static_cast<const char*>(event.data()) + 2, sizeof(value));
    if (port == 0) {
      const std::string ep = endpoint.to_string();
      const size_t colon = ep.rfind(':');
      if (ep.starts_with("tcp://") && colon != std::string::npos) {
        port = static_cast<int>(std::strtol(ep.c_str() + colon + 1, nullptr, 10));
      }
    }
    switch (id) {
      case ZMQ_EVENT_ACCEPTED:
        if (handshaking.size() >= 4096) handshaking.pop_front();
        handshaking.push_back({static_cast<int>(value), peer_address(static_cast<int>(value))});
        break;
      case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
      case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:  // the ZAP handler recorded it
        if (!handshaking.empty()) handshaking.pop_front();
        break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        record_refusal(name, pop(), protocol_error_reason(value));
        break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        record_refusal(name, pop(),
                       fmt::format("the connection ended during the handshake ({})",
                                   value != 0 ? std::strerror(static_cast<int>(value))
                                              : "closed by the peer"));
        break;
      case ZMQ_EVENT_DISCONNECTED: {
        // A connection that ends with no handshake event spoke no ZMTP 3 at all (ZeroMQ drops
        // such peers silently once security is on).
        const int fd = static_cast<int>(value);
        for (auto it = handshaking.begin(); it != handshaking.end(); ++it) {
          if (it->fd != fd) continue;
          const Peer peer = peer_of(std::move(it->address));
          handshaking.erase(it);
          record_refusal(name, peer,
                         "it did not speak the ZeroMQ protocol (ZMTP 3) with CURVE security");
          break;
        }
        break;
      }
      case ZMQ_EVENT_MONITOR_STOPPED:
        return;
      default:
        break;
    }
  }
}

// The derived keys of `secret`, memoised (Argon2id takes a while on purpose).
std::pair<CurveKey, CurveKey> derive(const std::string& secret) {
  static std::mutex mu;
  static std::map<std::string, std::pair<CurveKey, CurveKey>> cache;  // secret -> (public, secret)
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(secret); it != cache.end()) return it->second;
  init_sodium();
  CurveKey pk{}, sk{};
  if (crypto_pwhash(sk.data(), sk.size(), secret.data(), secret.size(),
                    reinterpret_cast<const unsigned char*>(kSalt), kArgon2Passes, kArgon2Memory,
                    crypto_pwhash_ALG_ARGON2ID13) != 0) {
    throw_error("cluster secret: deriving the key failed (out of memory?)");
  }
  if (crypto_scalarmult_base(pk.data(), sk.data()) != 0) {
    throw_error("cluster secret: deriving the public key failed");
  }
  return cache.emplace(secret, std::make_pair(pk, sk)).first->second;
}

}  // namespace

ClusterSecret::ClusterSecret(std::string secret) : secret_(std::move(secret)) {
  if (secret_.empty()) throw_error("--cluster-secret must not be empty");
  require_curve();
  std::tie(public_key_, secret_key_) = derive(secret_);
}

ClusterSecret ClusterSecret::generate() {
  init_sodium();
  CurveKey bytes{};
  randombytes_buf(bytes.data(), bytes.size());  // getrandom(2), i.e. /dev/urandom
  return ClusterSecret(to_hex(bytes));
}

void secure_server_socket(zmq::socket_t& socket, const ClusterSecret& secret,
                          std::string_view name) {
  if (secret.empty()) throw_error("{}: securing a server socket needs a cluster secret", name);
  require_curve();
  ensure_zap_handler();
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey,
             zmq::buffer(secret.secret_key().data(), secret.secret_key().size()));
  socket.set(zmq::sockopt::zap_domain, zap_domain(name, secret));

  static std::atomic<uint64_t> counter{0};
  const std::string endpoint =
      fmt::format("inproc://dpserve-auth-monitor-{}-{}", getpid(), counter.fetch_add(1));
  const int events = ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_MONITOR_STOPPED |
                     ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
  if (zmq_socket_monitor(socket.handle(), endpoint.c_str(), events) != 0) {
    throw_error("{}: cannot watch the socket for refused peers: {}", name,
                zmq_strerror(zmq_errno()));
  }
  zmq::socket_t monitor(zmq_context(), zmq::socket_type::pair);
  monitor.set(zmq::sockopt::linger, 0);
  // ZeroMQ's I/O thread blocks while the monitor's queue is full: never let it fill (events are
  // small, and this thread drains them quickly).
  monitor.set(zmq::sockopt::rcvhwm, 0);
  monitor.connect(endpoint);  // before bind, so no event of a connection is missed
  std::thread(watch_loop, std::string(name), std::move(monitor)).detach();
}

void secure_client_socket(zmq::socket_t& socket, const ClusterSecret& secret) {
  if (secret.empty()) throw_error("securing a client socket needs a cluster secret");
  require_curve();
  const auto key = [](const CurveKey& k) { return zmq::buffer(k.data(), k.size()); };
  socket.set(zmq::sockopt::curve_serverkey, key(secret.public_key()));
  socket.set(zmq::sockopt::curve_publickey, key(secret.public_key()));
  socket.set(zmq::sockopt::curve_secretkey, key(secret.secret_key()));
}

int64_t refused_peer_count() { return g_refused.load(); }

}  // namespace dpserve
