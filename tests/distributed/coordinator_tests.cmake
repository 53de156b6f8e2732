# A helper binary the coordinator tests spawn: it plays a rank, a waiter, a Gloo peer or a
# standalone coordinator.
add_executable(coordinator_test_child coordinator_test_child.cc)
target_link_libraries(coordinator_test_child PRIVATE dpserve_coordinator dpserve_ipc)

dpserve_add_test(coordinator_test SOURCES coordinator_test.cc LIBS dpserve_coordinator dpserve_ipc)
target_compile_definitions(coordinator_test PRIVATE
  COORDINATOR_TEST_CHILD="$<TARGET_FILE:coordinator_test_child>")
add_dependencies(coordinator_test coordinator_test_child)
