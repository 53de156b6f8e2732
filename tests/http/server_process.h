#pragma once
// Test helpers for the HTTP server tests: a real `dpserve serve` child process on a free port
// (log captured to a file), raw-socket HTTP for byte-exact requests and early disconnects, and
// the offline engine (`dpserve generate --prompts-file`) as the reference.

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

namespace dpserve_test {

inline const std::string kStories = DPSERVE_SHARED_DIR "/models/stories260K";

// A TCP port that was free a moment ago.
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `dpserve serve --model-path <model> --port <free> args...` as a child process.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& args, const std::string& model = kStories)
      : port_(free_port()) {
    static int counter = 0;
    log_path_ = ::testing::TempDir() + "/dpserve_server_" + std::to_string(::getpid()) + "_" +
                std::to_string(counter++) + ".log";
    std::vector<std::string> argv = {DPSERVE_BINARY, "serve",  "--model-path",
                                     model,          "--port", std::to_string(port_)};
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setpgid(0, 0);  // its own process group, so a test can signal the whole tree
      const int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> cargv;
      for (std::string& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
  }
  ~ServerProcess() {
    if (exit_code_) return;
    // Gracefully, so the server removes its runtime directory; forcefully if it hangs.
    ::kill(pid_, SIGTERM);
    if (!wait_exit(std::chrono::seconds(10))) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  // Polls /health until 200; false if the process exits or `timeout` passes.
  bool wait_healthy(std::chrono::seconds timeout = std::chrono::seconds(30)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (wait_exit(std::chrono::milliseconds(0))) return false;
      httplib::Client c = client();
      if (auto r = c.Get("/health"); r && r->status == 200) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // The exit code (128 + signal when killed) once the process ended within `timeout`.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    if (exit_code_) return exit_code_;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    do {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return exit_code_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } while (std::chrono::steady_clock::now() < deadline);
    return std::nullopt;
  }

  // An HTTP client for this server.
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    return c;
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string log() const { return read_file(log_path_); }

 private:
  int port_;
  pid_t pid_ = -1;
  std::string log_path_;
  std::optional<int> exit_code_;
};

// Sends raw bytes to 127.0.0.1:port and reads the answer until the server closes or
// `stop_after` bytes of answer arrived (then closes the connection early).
inline std::string raw_http(int port, const std::string& request,
                            size_t stop_after = std::string::npos) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return "";
  }
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string out;
  char buf[4096];
  while (out.size() < stop_after) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// A POST request with a JSON (or any) body, "Connection: close".
inline std::string post_request(const std::string& path, const std::string& body) {
  return "POST " + path +
         " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

struct CommandResult {
  int exit_code;
  std::string out;
};

// Runs a shell command and captures its stdout (and stderr when asked).
inline CommandResult run_command(const std::string& cmd, bool with_stderr = false) {
  FILE* p = ::popen((cmd + (with_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while (p != nullptr && (n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = p != nullptr ? ::pclose(p) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// Checks that a raw HTTP answer has status `status` and an OpenAI-style error body whose message
// contains `message` (and whose param is `param`, when given).
inline void expect_api_error(const std::string& answer, int status, const std::string& message,
                             const std::string& param = "") {
  ASSERT_THAT(answer, ::testing::HasSubstr("HTTP/1.1 " + std::to_string(status)));
  const size_t body_at = answer.find("\r\n\r\n");
  ASSERT_NE(body_at, std::string::npos);
  const nlohmann::json err = nlohmann::json::parse(answer.substr(body_at + 4), nullptr, false);
  ASSERT_TRUE(err.is_object()) << answer;
  EXPECT_EQ(err["error"]["code"], status);
  EXPECT_THAT(err["error"]["message"].get<std::string>(), ::testing::HasSubstr(message));
  EXPECT_TRUE(err["error"]["type"].is_string());
  if (!param.empty()) {
    EXPECT_EQ(err["error"]["param"], param);
  }
}

// stories260K's reference_outputs.json (the float64 reference the tests compare against).
inline nlohmann::json reference_outputs() {
  std::ifstream in(kStories + "/reference_outputs.json");
  return nlohmann::json::parse(in);
}

// Runs the offline engine (`dpserve generate --prompts-file`, with --chat when asked) on JSON
// lines {"text", "sampling_params"}; one result per output sequence. The prompts file is unique
// per process and call: CTest runs one binary's tests as parallel processes.
inline std::vector<nlohmann::json> offline_outputs(const std::vector<nlohmann::json>& lines,
                                                   bool chat = false) {
  static int calls = 0;
  const std::string path = ::testing::TempDir() + "/offline_prompts_" + std::to_string(::getpid()) +
                           "_" + std::to_string(calls++) + ".jsonl";
  {
    std::ofstream out(path);
    for (const nlohmann::json& l : lines) out << l.dump() << "\n";
  }
  const auto r = run_command(std::string(DPSERVE_BINARY) + " generate --model-path " + kStories +
                             " --prompts-file " + path + (chat ? " --chat" : ""));
  EXPECT_EQ(r.exit_code, 0);
  std::vector<nlohmann::json> out;
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

// GET /get_server_info of `server` (a test failure if it does not answer 200).
inline nlohmann::json server_info(const ServerProcess& server) {
  httplib::Client c = server.client();
  auto r = c.Get("/get_server_info");
  EXPECT_TRUE(r && r->status == 200);
  return r ? nlohmann::json::parse(r->body) : nlohmann::json::object();
}

// Waits until no request is live, checks the memory accounting and, after a cache flush, that
// every KV page is free.
inline void expect_all_pages_free(const ServerProcess& server) {
  nlohmann::json info;
  for (int i = 0; i < 500; ++i) {
    info = server_info(server);
    const nlohmann::json& s = info["internal_states"][0];
    if (info["num_live_requests"] == 0 && s["num_running_reqs"] == 0 &&
        s["num_waiting_reqs"] == 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const nlohmann::json& s = info["internal_states"][0];
  EXPECT_EQ(info["num_live_requests"], 0);
  EXPECT_EQ(s["num_running_reqs"], 0);
  EXPECT_EQ(s["memory_check"], "") << s.dump();
  httplib::Client c = server.client();
  auto f = c.Post("/flush_cache");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->status, 200) << f->body;
  const nlohmann::json after = server_info(server)["internal_states"][0];
  EXPECT_EQ(after["all_pages_free"], true) << after.dump();
  EXPECT_EQ(after["num_free_pages"], after["num_pages"]);
}

// The "data: ..." payloads of an SSE body, in order.
inline std::vector<std::string> sse_payloads(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t end = body.find("\n\n", pos);
    out.push_back(body.substr(pos + 6, end - pos - 6));
    pos = end == std::string::npos ? body.size() : end + 2;
  }
  return out;
}

}  // namespace dpserve_test
