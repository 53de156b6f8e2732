// A child process for the ipc tests, spawned through ChildProcess. Its role says what it does:
//   ready            report ready with a payload, then wait for a signal
//   fail <msg>       report an error and exit with status 3
//   exit <code>      exit with <code> without reporting
//   crash            abort() without reporting
//   hang             never report, wait for a signal
//   ignore-term      ignore SIGTERM, report ready, wait (only SIGKILL ends it)
//   spawner          spawn a "ready" grandchild (itself, via /proc/self/exe), report its pid
//   runtime-dir      create a RuntimeDir with a socket in it, install the signal cleanup,
//                    report its path, wait for a signal
//   runtime-dir-exit create a RuntimeDir, report its path, then exit(0) without destructors
//   list-fds         report the open file descriptors (/proc/self/fd), then wait
//   zmq-echo <in> <out>  answer messages from <in> on <out> until an AbortReq with abort_all

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "dpserve/common/errors.h"
#include "dpserve/ipc/io_struct.h"
#include "dpserve/ipc/process.h"
#include "dpserve/ipc/zmq_socket.h"

namespace {

using namespace dpserve;

[[noreturn]] void wait_forever() {
  for (;;) pause();
}

// Streams <count> BatchTokenIdOut rows (index 0, 1, ...) to <up>, then waits for an abort-all on
// <down>: exit 0, 2 when a send failed, 3 when no abort came.
int zmq_stream(ChildContext& child) {
  const auto& args = child.args();
  if (args.size() != 3) throw Error("zmq-stream needs <up> <down> <count>");
  MessageSocket up(zmq::socket_type::push), down(zmq::socket_type::pull);
  up.connect(args[0]);
  down.connect(args[1]);
  child.signal_ready({{"pid", getpid()}});
  const int count = std::stoi(args[2]);
  for (int i = 0; i < count; ++i) {
    BatchTokenIdOut out;
    TokenIdOut row;
    row.rid = "r";
    row.index = i;
    row.new_token_ids = {i};
    out.outputs.push_back(row);
    if (!up.send(out, Millis(10000))) return 2;
  }
  std::optional<Message> ack = down.recv(Millis(10000));
  return ack && std::holds_alternative<AbortReq>(*ack) ? 0 : 3;
}

int zmq_echo(ChildContext& child) {
  const auto& args = child.args();
  if (args.size() != 2) throw Error("zmq-echo needs <in> <out>");
  MessageSocket in(zmq::socket_type::pull);
  in.connect(args[0]);
  MessageSocket out(zmq::socket_type::push);
  out.connect(args[1]);
  child.signal_ready({{"pid", getpid()}});
  while (true) {
    std::optional<std::string> bytes = in.recv_bytes(Millis(20000));
    if (!bytes) return 2;  // the test went away
    Message reply;
    try {
      Message msg = decode(*bytes);
      if (auto* req = std::get_if<TokenizedGenerateReq>(&msg)) {
        TokenIdOut row;
        row.rid = req->rid;
        row.new_token_ids.assign(req->input_ids.rbegin(), req->input_ids.rend());
        row.new_text = req->input_text;
        row.finished = true;
        row.finish_reason_json = R"({"type":"length","length":1})";
        row.prompt_tokens = static_cast<int64_t>(req->input_ids.size());
        row.completion_tokens = 1;
        reply = BatchTokenIdOut{{row}};
      } else if (std::holds_alternative<FlushCacheReq>(msg)) {
        reply = FlushCacheResp{true, ""};
      } else if (std::holds_alternative<GetServerInfoReq>(msg)) {
        reply = GetServerInfoResp{"{\"role\":\"zmq-echo\"}"};
      } else if (auto* abort = std::get_if<AbortReq>(&msg); abort && abort->abort_all) {
        return 0;
      } else {
        reply = FlushCacheResp{false, std::string("unexpected ") + std::string(message_name(msg))};
      }
    } catch (const Error& e) {
      reply = FlushCacheResp{false, e.what()};
    }
    out.send(reply);
  }
}

int run(ChildContext& child) {
  const std::string& role = child.role();
  if (role == "ready") {
    child.signal_ready({{"kv_tokens", 4096}, {"args", child.args()}});
    wait_forever();
  }
  if (role == "fail") {
    child.signal_error(child.args().empty() ? "failed" : child.args()[0]);
    return 3;
  }
  if (role == "exit") return child.args().empty() ? 0 : std::atoi(child.args()[0].c_str());
  if (role == "crash") std::abort();
  if (role == "hang") wait_forever();
  if (role == "ignore-term") {
    signal(SIGTERM, SIG_IGN);
    child.signal_ready();
    wait_forever();
  }
  if (role == "spawner") {
    // Deliberately leaked: the grandchild must outlive this scope until SIGKILL ends us.
    auto* grandchild = new ChildProcess({.role = "ready", .name = "grandchild"});
    grandchild->wait_ready(Millis(10000));
    child.signal_ready({{"grandchild_pid", grandchild->pid()}});
    wait_forever();
  }
  if (role == "runtime-dir") {
    auto* dir = new RuntimeDir("dpserve-test");
    auto* sock = new MessageSocket(zmq::socket_type::pull);
    sock->bind(dir->endpoint("sock"));
    install_cleanup_signal_handlers();
    child.signal_ready({{"path", dir->path()}});
    wait_forever();
  }
  if (role == "runtime-dir-exit") {
    // Never destroyed: the directory must go through the exit hook, not ~RuntimeDir. Held by a
    // static so that LeakSanitizer sees it reachable at exit.
    static auto* dir = new RuntimeDir("dpserve-test");
    std::ofstream(dir->path() + "/file") << "x";
    child.signal_ready({{"path", dir->path()}});
    std::exit(0);
  }
  if (role == "list-fds") {
    std::vector<int> fds;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
      fds.push_back(std::stoi(e.path().filename().string()));
    }
    child.signal_ready({{"fds", fds}});
    wait_forever();
  }
  if (role == "zmq-echo") return zmq_echo(child);
  if (role == "zmq-stream") return zmq_stream(child);
  child.signal_error("unknown role " + role);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<ChildContext> child;
  try {
    child = ChildContext::from_argv(argc, argv);
    if (!child) {
      std::fprintf(stderr, "ipc_test_child: run by the ipc tests only\n");
      return 2;
    }
    return run(*child);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ipc_test_child: %s\n", e.what());
    if (child) child->signal_error(e.what());
    return 4;
  }
}
