#pragma once
// Helpers shared by the libFuzzer targets in fuzz/: where ../shared lives, and how a target
// reports a broken property (a crash libFuzzer records, with the message on stderr).

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>

#include <fmt/format.h>

namespace dpserve::fuzz {

// The shared/ data folder: $DPSERVE_SHARED_DIR when set, else the path compiled in by CMake.
inline std::string shared_dir() {
  const char* env = std::getenv("DPSERVE_SHARED_DIR");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(DPSERVE_FUZZ_SHARED_DIR);
}

// The fixed "now" (2024-07-26) the chat-template targets give strftime_now, so that a render is
// a function of the input alone.
inline std::tm fixed_now() {
  std::tm now{};
  now.tm_year = 124;
  now.tm_mon = 6;
  now.tm_mday = 26;
  return now;
}

// Prints "FUZZ PROPERTY FAILED: <message>" and aborts, so libFuzzer saves the input as a crash.
[[noreturn]] inline void property_failed(const std::string& message) {
  std::fprintf(stderr, "FUZZ PROPERTY FAILED: %s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace dpserve::fuzz

// Checks a property of the code under test; on failure aborts with the formatted message.
#define FUZZ_CHECK(cond, ...)                                                                  \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      ::dpserve::fuzz::property_failed(                                                        \
          fmt::format("{} ({}:{}): {}", #cond, __FILE__, __LINE__, fmt::format(__VA_ARGS__))); \
    }                                                                                          \
  } while (0)
