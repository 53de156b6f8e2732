# Failures and recovery (issue 8): ranks killed or hung under TP, DP attention and plain DP, the
# restart limit and the graceful drain, on real servers under load.
dpserve_add_test(recovery_server_test SOURCES recovery_server_test.cc
  LIBS PkgConfig::HTTPLIB nlohmann_json::nlohmann_json Threads::Threads)
target_compile_definitions(recovery_server_test PRIVATE DPSERVE_BINARY="$<TARGET_FILE:dpserve>")
add_dependencies(recovery_server_test dpserve)
