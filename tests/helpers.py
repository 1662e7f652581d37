"""Test helpers: random RWKV-7 checkpoints with realistic scales, and error metrics."""

import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax.models import rwkv7


def rel_max_err(x, ref):
  """max |x - ref| / rms(ref)."""
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(x - ref).max() / np.sqrt(np.mean(ref**2)))


def rel_rms_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.sqrt(np.mean((x - ref) ** 2)) / np.sqrt(np.mean(ref**2)))


def noisy_params(config: rwkv7.RWKV7Config, seed: int):
  """The from-scratch init plus Gaussian noise, so no matrix is zero and every path matters.

  Noise std per tensor = 0.5·std(init) + 0.05: zero-initialised matrices (att.output, ffn.value,
  the *1 LoRA halves) become ~0.05-scale random matrices, like trained ones.
  """
  params = rwkv7.init_params(config, jax.random.key(seed))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))
  leaves = [x + (0.5 * jnp.std(x) + 0.05) * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves)


def torch_save_state_dict(sd, path, dtype=None):
  """Writes a state dict with torch itself (independent of our writer)."""
  import torch
  tensors = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()}
  if dtype is not None:
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
  torch.save(tensors, path)
