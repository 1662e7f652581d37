"""Bone and Bat (arXiv 2409.15371; HF peft `MissConfig`), as pure functions on Flax kernels.

docs/architecture.md#parameter-efficient-fine-tuning in Flax layout. A kernel is K = Wᵀ, float[in, out], and a layer computes y = x K.
Reading order: Bone (init, apply, merge, unmerge), then Bat (the same four), each next to its formula.

Bone ("block affine", peft MiSS default) trains one shared block D float[r, out], zeros at init.
The input is zero-padded to a multiple of r, cut into ⌈in/r⌉ shards of width r, and the shards are
summed:  y = x K + (Σ_j x̃_j) D.  Merged, every r-row block of K (every r-column block of the torch
W) gets D added; the last, partial block of a non-divisible `in` gets D[:in % r]. So the merged
kernel is K + tile(D)[:in], and unmerging subtracts the same tile. No scaling.

Bat trains one r×r block per output block, D float[out/r, r, r], zeros at init, and needs
in % r == out % r == 0. In torch layout every block of W becomes W'_ij = W_ij (I + D_i) + D_i
(i = output block, j = input block); in Flax layout K'_ji = (I + D_i)ᵀ K_ji + D_iᵀ. Unmerging
multiplies by (I + D_i)⁻¹, computed in float32. Bat is not linear in x ⊗ D, so its forward uses the
merged kernel (as peft does); Bone's forward never builds it.

Numerics: matmuls are `modrwkv_jax.ops.matmul` (the requested compute dtype, float32 accumulation),
the shard sum is float32, merges are computed in float32 and returned in the kernel's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from modrwkv_jax.ops.matmul import matmul


# ---------------------------------------------------------------------------------------------
# Bone.


def check_bone_shape(kernel_shape: tuple[int, ...], r: int, name: str = "kernel") -> None:
  """Raises ValueError unless a Bone block of rank r fits a kernel [in, out] (needs 1 <= r <= in)."""
  if len(kernel_shape) != 2:
    raise ValueError(f"{name}: Bone needs a 2-D kernel [in, out]; got shape {tuple(kernel_shape)}")
  if not isinstance(r, int) or not 1 <= r <= kernel_shape[0]:
    raise ValueError(f"{name}: Bone rank r={r!r} must be an int in [1, in={kernel_shape[0]}] "
                     f"for a kernel of shape {tuple(kernel_shape)}; choose a smaller r")


def bone_init(kernel: jax.Array, r: int) -> jax.Array:
  """The Bone block for `kernel` float[in, out]: zeros float32[r, out], so training starts at W."""
  check_bone_shape(kernel.shape, r)
  return jnp.zeros((r, kernel.shape[1]), jnp.float32)


def bone_shards(x: jax.Array, r: int) -> jax.Array:
  """Σ_j x̃_j: x float[..., in] zero-padded to a multiple of r, cut into shards of r, summed.

  Returns float32[..., r]. The sum is float32 (⌈in/r⌉ terms, 32 for in=2048, r=64).
  """
  n_in = x.shape[-1]
  pad = -n_in % r
  x = x.astype(jnp.float32)
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x.reshape(*x.shape[:-1], (n_in + pad) // r, r).sum(-2)


def bone_apply(x: jax.Array, kernel: jax.Array, block: jax.Array, dtype=jnp.float32) -> jax.Array:
  """y = x K + (Σ_j x̃_j) D without forming K + tile(D).

  Args:
    x: float[..., in]; kernel: float[in, out]; block: float[r, out] (D).
    dtype: compute dtype of both matmuls (float32 accumulation).
  Returns:
    float32[..., out].
  """
  return matmul(x, kernel, dtype) + matmul(bone_shards(x, block.shape[0]), block, dtype)


def _bone_tile(block: jax.Array, n_in: int) -> jax.Array:
  """D stacked ⌈in/r⌉ times along rows and cut to `in` rows: float32[in, out]."""
  r = block.shape[0]
  return jnp.tile(block.astype(jnp.float32), (-(-n_in // r), 1))[:n_in]


def bone_merge(kernel: jax.Array, block: jax.Array) -> jax.Array:
  """K' = K + tile(D)[:in]: the kernel float[in, out] that computes bone_apply in one matmul."""
  return (kernel.astype(jnp.float32) + _bone_tile(block, kernel.shape[0])).astype(kernel.dtype)


def bone_unmerge(merged: jax.Array, block: jax.Array) -> jax.Array:
  """K = K' − tile(D)[:in], the inverse of bone_merge (exact up to one float32 rounding)."""
  return (merged.astype(jnp.float32) - _bone_tile(block, merged.shape[0])).astype(merged.dtype)


# ---------------------------------------------------------------------------------------------
# Bat.


def check_bat_shape(kernel_shape: tuple[int, ...], r: int, name: str = "kernel") -> None:
  """Raises ValueError unless kernel [in, out] splits into whole r×r blocks (Bat's requirement)."""
  if len(kernel_shape) != 2:
    raise ValueError(f"{name}: Bat needs a 2-D kernel [in, out]; got shape {tuple(kernel_shape)}")
  n_in, n_out = kernel_shape
  if not isinstance(r, int) or r < 1 or n_in % r or n_out % r:
    raise ValueError(f"{name}: Bat needs in % r == out % r == 0, but kernel [in, out] = {tuple(kernel_shape)} "
                     f"and r = {r!r}; choose r dividing both, or use Bone, which accepts any in")


def bat_init(kernel: jax.Array, r: int) -> jax.Array:
  """The Bat blocks for `kernel` float[in, out]: zeros float32[out/r, r, r]."""
  check_bat_shape(kernel.shape, r)
  return jnp.zeros((kernel.shape[1] // r, r, r), jnp.float32)


def bat_merge(kernel: jax.Array, block: jax.Array) -> jax.Array:
  """K'_ji = (I + D_i)ᵀ K_ji + D_iᵀ for every r×r block (j input block, i output block).

  Args:
    kernel: float[in, out]; block: float[out/r, r, r] (D).
  Returns:
    float[in, out] in the kernel's dtype.
  """
  n_in, n_out = kernel.shape
  r = block.shape[-1]
  check_bat_shape(kernel.shape, r)
  k = kernel.astype(jnp.float32).reshape(n_in // r, r, n_out // r, r)  # [j, c, i, b] = K_ji[c, b]
  d = block.astype(jnp.float32)  # [i, c, a]
  # (D_iᵀ K_ji)[a, b] = Σ_c D_i[c, a] K_ji[c, b];  D_iᵀ[a, b] = D_i[b, a] = transpose(D, (2, 0, 1))[a, i, b].
  merged = k + jnp.einsum("jcib,ica->jaib", k, d, precision="highest") + jnp.transpose(d, (2, 0, 1))[None]
  return merged.reshape(n_in, n_out).astype(kernel.dtype)


def bat_unmerge(merged: jax.Array, block: jax.Array) -> jax.Array:
  """K_ji = (I + D_i)⁻ᵀ (K'_ji − D_iᵀ), the inverse of bat_merge; (I + D_i)⁻¹ in float32."""
  n_in, n_out = merged.shape
  r = block.shape[-1]
  check_bat_shape(merged.shape, r)
  d = block.astype(jnp.float32)
  inv = jnp.linalg.inv(jnp.eye(r, dtype=jnp.float32) + d)  # [i, c, a]
  k = merged.astype(jnp.float32).reshape(n_in // r, r, n_out // r, r) - jnp.transpose(d, (2, 0, 1))[None]
  out = jnp.einsum("jcib,ica->jaib", k, inv, precision="highest")
  return out.reshape(n_in, n_out).astype(merged.dtype)


def bat_apply(x: jax.Array, kernel: jax.Array, block: jax.Array, dtype=jnp.float32) -> jax.Array:
  """y = x K' with K' = bat_merge(K, D) (Bat mixes each block nonlinearly in D, so the kernel is built).

  x: float[..., in]; kernel: float[in, out]; block: float[out/r, r, r]. Returns float32[..., out].
  """
  return matmul(x, bat_merge(kernel, block), dtype)
