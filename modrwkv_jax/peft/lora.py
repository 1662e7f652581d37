"""LoRA and its PiSSA initialisation, as pure functions on Flax kernels (docs/architecture.md#parameter-efficient-fine-tuning; HF peft `LoraConfig`).

A kernel is K = Wᵀ, float[in, out]. LoRA adds a rank-r update in the same "x @ A" layout as the
kernel: a = lora_Aᵀ float[in, r], b = lora_Bᵀ float[r, out], and

    y = x K + s · (x a) b,        s = α / r   (peft `lora_alpha / r`),

so the merged kernel is K + s · a b. Plain LoRA draws a like torch's `kaiming_uniform_(a=√5)` on
lora_A [r, in], i.e. U(±1/√in), and sets b = 0, so training starts at W. PiSSA (peft
`init_lora_weights="pissa"`) instead puts the top-r singular triplets of K into a and b and
freezes the residual K − s · a b, so training starts at W too but moves along its principal
directions.

Numerics: matmuls are `modrwkv_jax.ops.matmul` (the requested compute dtype, float32 accumulation);
the SVD, merges and the residual in float32, returned in the kernel's dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from modrwkv_jax.ops.matmul import matmul


def check_lora_shape(kernel_shape: tuple[int, ...], r: int, name: str = "kernel") -> None:
  """Raises ValueError unless a rank-r LoRA fits kernel [in, out] (needs 1 <= r <= min(in, out))."""
  if len(kernel_shape) != 2:
    raise ValueError(f"{name}: LoRA needs a 2-D kernel [in, out]; got shape {tuple(kernel_shape)}")
  if not isinstance(r, int) or not 1 <= r <= min(kernel_shape):
    raise ValueError(f"{name}: LoRA rank r={r!r} must be an int in [1, min(in, out)={min(kernel_shape)}] "
                     f"for a kernel of shape {tuple(kernel_shape)}")


def lora_init(key: jax.Array, kernel: jax.Array, r: int) -> tuple[jax.Array, jax.Array]:
  """(a float32[in, r] ~ U(±1/√in), b zeros float32[r, out]): torch kaiming_uniform_(a=√5) on lora_A.

  kaiming_uniform_ bound = gain·√(3 / fan_in) with gain = √(2 / (1 + 5)), i.e. 1/√in.
  """
  check_lora_shape(kernel.shape, r)
  n_in, n_out = kernel.shape
  bound = 1.0 / math.sqrt(n_in)
  a = jax.random.uniform(key, (n_in, r), jnp.float32, -bound, bound)
  return a, jnp.zeros((r, n_out), jnp.float32)


def pissa_init(kernel: jax.Array, r: int, scale: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """PiSSA: (residual kernel, a, b) with residual + scale · a b = kernel.

  With K = U S Vᵀ (so W = V S Uᵀ, as peft factors it) and S_r the top-r singular values divided
  by `scale`: a = U_r √S_r float32[in, r], b = √S_r V_rᵀ float32[r, out], residual = K − scale · a b
  (in the kernel's dtype). Singular vectors are defined up to a joint sign per component; a b
  and the residual are not.
  """
  check_lora_shape(kernel.shape, r)
  u, s, vt = jnp.linalg.svd(kernel.astype(jnp.float32), full_matrices=False)
  root = jnp.sqrt(s[:r] / scale)
  a = u[:, :r] * root
  b = root[:, None] * vt[:r]
  residual = kernel.astype(jnp.float32) - scale * jnp.matmul(a, b, precision="highest")
  return residual.astype(kernel.dtype), a, b


def lora_apply(x: jax.Array, kernel: jax.Array, a: jax.Array, b: jax.Array, scale, dtype=jnp.float32):
  """y = x K + scale · (x a) b.

  Args:
    x: float[..., in]; kernel: float[in, out]; a: float[in, r]; b: float[r, out]; scale: α / r.
    dtype: compute dtype of the matmuls (float32 accumulation).
  Returns:
    float32[..., out].
  """
  low = matmul(x, a, dtype)  # float32[..., r]
  return matmul(x, kernel, dtype) + jnp.asarray(scale, jnp.float32) * matmul(low, b, dtype)


def lora_merge(kernel: jax.Array, a: jax.Array, b: jax.Array, scale) -> jax.Array:
  """K + scale · a b, float[in, out] in the kernel's dtype."""
  delta = jnp.asarray(scale, jnp.float32) * jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32),
                                                      precision="highest")
  return (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)


def lora_unmerge(merged: jax.Array, a: jax.Array, b: jax.Array, scale) -> jax.Array:
  """K' − scale · a b, the inverse of lora_merge (exact up to float32 rounding)."""
  return lora_merge(merged, a, b, -jnp.asarray(scale, jnp.float32))
