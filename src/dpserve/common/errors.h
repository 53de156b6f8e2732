#pragma once
// Errors: user-facing problems are exceptions of type dpserve::Error caught at the boundary
// (CLI, HTTP); broken invariants are bugs and abort through DPSERVE_CHECK with the invariant named.

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace dpserve {

// A problem caused by input (flags, files, requests): the message is shown to the user as is.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws dpserve::Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void throw_error(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

// Logs the failed invariant with its location and aborts the process.
[[noreturn]] void check_failed(const char* expr, const char* file, int line,
                               const std::string& msg);

}  // namespace dpserve

// Checks an invariant; on failure logs "CHECK failed: <expr> (<message>)" and aborts.
#define DPSERVE_CHECK(cond, ...)                                                         \
  do {                                                                                   \
    if (!(cond)) [[unlikely]] {                                                          \
      ::dpserve::check_failed(#cond, __FILE__, __LINE__, ::fmt::format("" __VA_ARGS__)); \
    }                                                                                    \
  } while (0)
