#pragma once
// Runs the real `dpserve` binary for the CLI tests.

#include <sys/wait.h>

#include <cstdio>
#include <string>

#include <gtest/gtest.h>

namespace dpserve::testing {

struct RunResult {
  int exit_code;       // the process's exit status (-1 if it did not exit normally)
  std::string output;  // stdout, or stdout + stderr when requested
};

// Runs `dpserve <args>` through the shell and captures its output.
inline RunResult run_dpserve(const std::string& args, bool with_stderr = false) {
  const std::string cmd =
      std::string(DPSERVE_BINARY) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// The stories260K model folder in ../shared.
inline const std::string kStories = DPSERVE_SHARED_DIR "/models/stories260K";

}  // namespace dpserve::testing
