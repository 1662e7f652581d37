"""Pallas kernels for the WKV-7 recurrence (GPU via Triton / Mosaic GPU, TPU via Mosaic, CPU interpret)."""

from pallas_kernels.wkv7.kernels import BACKENDS, default_backend, wkv7_pallas

__all__ = ["BACKENDS", "default_backend", "wkv7_pallas"]
