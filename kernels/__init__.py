"""qlab.kernels: Triton GPU kernels (`triton/`) and C CPU kernels (`cpu/`)."""
