# The cluster secret (issue 8): CURVE-secured sockets and the coordinator refusing strangers
# (in-process, real tcp sockets), and real servers refusing them (system tests).
dpserve_add_test(cluster_secret_test SOURCES cluster_secret_test.cc
  LIBS dpserve_coordinator dpserve_ipc)

dpserve_add_test(cluster_secret_server_test SOURCES cluster_secret_server_test.cc
  LIBS dpserve_coordinator dpserve_ipc PkgConfig::HTTPLIB nlohmann_json::nlohmann_json
       Threads::Threads)
target_compile_definitions(cluster_secret_server_test PRIVATE DPSERVE_BINARY="$<TARGET_FILE:dpserve>")
add_dependencies(cluster_secret_server_test dpserve)
