# Tensor parallelism end to end: real servers whose ranks meet through the coordinator and Gloo
# (one node, two nodes on loopback, two network namespaces) and the fault cases.
dpserve_add_test(tp_server_test SOURCES tp_server_test.cc
  LIBS PkgConfig::HTTPLIB nlohmann_json::nlohmann_json Threads::Threads)
target_compile_definitions(tp_server_test PRIVATE DPSERVE_BINARY="$<TARGET_FILE:dpserve>")
add_dependencies(tp_server_test dpserve)

# Plain data parallelism: the DataParallelController in front of replicas.
dpserve_add_test(dp_server_test SOURCES dp_server_test.cc
  LIBS PkgConfig::HTTPLIB nlohmann_json::nlohmann_json Threads::Threads)
target_compile_definitions(dp_server_test PRIVATE DPSERVE_BINARY="$<TARGET_FILE:dpserve>")
add_dependencies(dp_server_test dpserve)

# DP attention: one instance of --tp-size ranks in --dp-size DP groups behind the controller.
dpserve_add_test(dp_attention_server_test SOURCES dp_attention_server_test.cc
  LIBS PkgConfig::HTTPLIB PkgConfig::ZMQ cppzmq nlohmann_json::nlohmann_json Threads::Threads)
target_compile_definitions(dp_attention_server_test PRIVATE DPSERVE_BINARY="$<TARGET_FILE:dpserve>")
add_dependencies(dp_attention_server_test dpserve)
