#pragma once
// Cluster authentication for ZeroMQ tcp sockets: only peers that know the cluster's secret get
// through (issue 8). It uses ZeroMQ's own security, CurveZMQ plus a ZAP handler (RFC 26, RFC 27):
//
//   - ClusterSecret derives one CURVE keypair from the secret string (Argon2id through libsodium,
//     a fixed salt, so every member derives the same pair). Every cluster member shares it.
//   - A server socket (secure_server_socket) is a CURVE server with that secret key: a client
//     that does not know the key cannot even finish the handshake. The process's ZAP handler
//     (a thread with a REP socket on inproc://zeromq.zap.01, one per process) then accepts only
//     clients whose CURVE public key is the cluster's.
//   - A client socket (secure_client_socket) presents the keypair and expects the server's key.
//   - Every refused peer is logged (warning, with its address and why; repeats from one host are
//     summarised at most every 10 s) and counted (refused_peer_count). Nothing a refused peer
//     sends reaches the application: ZeroMQ drops the connection during the handshake.
//
// The server side watches the socket with zmq_socket_monitor. Handshake failures carry no peer
// address, so it pairs them with the accepted connections (whose address it reads at accept
// time, or, when ZeroMQ closed the connection first, from the kernel's table of just-closed
// connections of the port: that one, or only the host when several could be it); under
// concurrent handshakes the address logged may be a neighbour's. A secured server socket must
// therefore not be given another monitor, and must live on zmq_context() (the ZAP handler serves
// that context).

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include <zmq.hpp>

namespace dpserve {

// A CURVE key (Curve25519), 32 bytes.
using CurveKey = std::array<uint8_t, 32>;

// The cluster's shared secret and the CURVE keypair derived from it. Empty = no authentication.
class ClusterSecret {
 public:
  // No secret: sockets stay plaintext (tests and single-process use only).
  ClusterSecret() = default;
  // Derives the keypair from `secret` (deterministic: the same string gives the same keys in
  // every process); throws dpserve::Error when it is empty or CURVE is unavailable.
  explicit ClusterSecret(std::string secret);

  // A fresh random secret: 32 bytes from the OS's random source, as 64 hex digits.
  static ClusterSecret generate();

  // True when there is no secret.
  bool empty() const { return secret_.empty(); }
  // The secret itself (to hand to child processes through kClusterSecretEnv; never log it).
  const std::string& value() const { return secret_; }
  // The derived CURVE public key (shared by every member; never sent in clear by CurveZMQ).
  const CurveKey& public_key() const { return public_key_; }
  // The derived CURVE secret key.
  const CurveKey& secret_key() const { return secret_key_; }

 private:
  std::string secret_;
  CurveKey public_key_{};
  CurveKey secret_key_{};
};

// Makes `socket` (created on zmq_context(), before bind) a CURVE server that accepts only
// clients with the cluster's keypair, starts the process's ZAP handler if needed and watches
// the socket for refused peers, logged as "<name>: refused a peer ...". Throws dpserve::Error
// when `secret` is empty.
void secure_server_socket(zmq::socket_t& socket, const ClusterSecret& secret,
                          std::string_view name);

// Makes `socket` (before connect) a CURVE client presenting the cluster's keypair and expecting
// a server with the cluster's key. Throws dpserve::Error when `secret` is empty.
void secure_client_socket(zmq::socket_t& socket, const ClusterSecret& secret);

// How many peers this process's secured server sockets refused so far (every refused handshake,
// logged or summarised).
int64_t refused_peer_count();

}  // namespace dpserve
