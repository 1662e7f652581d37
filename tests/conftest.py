"""Shared fixtures. References are imported lazily by the tests that need them."""

import os

# The `rwkv` package reads these at import time: RWKV-7 code path, pure-PyTorch (no CUDA build).
os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")
os.environ.setdefault("RWKV_JIT_ON", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)
