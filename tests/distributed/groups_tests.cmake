# Gloo process groups, parallel_state and the DP-attention rank arithmetic.
dpserve_add_test(process_groups_test
  SOURCES gloo_group_test.cc parallel_state_test.cc dp_attention_test.cc
  LIBS dpserve_distributed)
