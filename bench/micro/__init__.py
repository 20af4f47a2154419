"""pytest-benchmark microbenchmarks of the control plane and (as they land) per-program costs."""
