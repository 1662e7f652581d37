"""The one matmul of the library: x @ w in a compute dtype with float32 accumulation.

Every projection (RWKV-7, the encoders, the projector, the Bone / Bat / LoRA adapters) goes
through `matmul`, so the accumulation precision is decided in one place. `modrwkv_jax.layers`
re-exports it next to the layers that use it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def matmul(x: jax.Array, w: jax.Array, dtype=jnp.float32) -> jax.Array:
  """x: float[..., in] @ w: float[in, out] computed in `dtype`, accumulated and returned in float32."""
  return jnp.einsum("...i,io->...o", x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
