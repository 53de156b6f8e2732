# The coordinator (node 0's rank registry, key-value store, barriers, heartbeats), its client and
# the Gloo rendezvous store on top of it.
add_library(dpserve_coordinator
  coordinator.cc coordinator_client.cc coordinator_store.cc coordinator_protocol.cc
  coordinator_types.cc)
# msgpack-cxx is used without its Boost adaptors.
target_compile_definitions(dpserve_coordinator PRIVATE MSGPACK_NO_BOOST)
target_link_libraries(dpserve_coordinator
  PUBLIC dpserve_common dpserve_ipc gloo spdlog::spdlog
  PRIVATE msgpackc-cxx)
