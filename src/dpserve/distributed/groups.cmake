# Gloo process groups (GlooProcessGroup) and parallel_state (the world / tp / attn_tp / dp groups).
add_library(dpserve_distributed gloo_group.cc parallel_state.cc)
# dpserve_layers for the DP-attention rank arithmetic (layers/dp_attention.h); layers itself must
# depend only on dpserve_distributed_api, never on this target.
target_link_libraries(dpserve_distributed PUBLIC dpserve_distributed_api dpserve_layers gloo)
