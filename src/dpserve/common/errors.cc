#include "dpserve/common/errors.h"

#include <cstdlib>

#include <spdlog/spdlog.h>

namespace dpserve {

void check_failed(const char* expr, const char* file, int line, const std::string& msg) {
  spdlog::critical("CHECK failed: {} ({}) at {}:{}", expr, msg, file, line);
  spdlog::default_logger()->flush();
  std::abort();
}

}  // namespace dpserve
