"""Test helpers: error metrics and the fp32 tolerance they are held to (tests/README.md), WKV-7 inputs
drawn like RWKV-7 draws them, and random RWKV-7 checkpoints with realistic scales."""

import jax
import jax.numpy as jnp
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2⁻²³ ≈ 1.19e-7: the spacing of float32 numbers at 1


def rel_rms_err(x, ref):
  """rms(x − ref) / rms(ref), in float64: the error metric of the test suite (tests/README.md)."""
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.sqrt(np.mean((x - ref) ** 2)) / np.sqrt(np.mean(ref**2)))


def rel_max_err(x, ref):
  """max |x − ref| / rms(ref). For coarse bounds only (≥ 1e-4): the largest of many fp32 roundings
  moves with the CPU's summation order, so it is no metric for a 1e-6-level check (tests/README.md)."""
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(x - ref).max() / np.sqrt(np.mean(ref**2)))


def fp32_sum_tol(n_terms: int, c: float = 8.0) -> float:
  """c·ε·√K: the relative RMS error a float32 result built from K-term sums may carry.

  Rounding errors of a K-term sum add up like a random walk (≈ ε·√K), whichever order a CPU
  sums in; c leaves room for a few more roundings around the sum (casts, a bias, a second matmul).
  """
  return c * EPS32 * float(np.sqrt(n_terms))


def check(name: str, value, ref, tol: float) -> float:
  """Asserts rel_rms_err(value, ref) < tol, printing the number either way; returns it."""
  err = rel_rms_err(value, ref)
  print(f"\n{name}: rms(Δ)/rms(ref) = {err:.2e} (tolerance {tol:.1e})")
  assert err < tol, f"{name}: relative RMS error {err:.3e} >= tolerance {tol:.1e}"
  return err


def wkv7_inputs(key, B, T, H, N):
  """WKV-7 inputs float32[B, T, H, N] drawn like RWKV-7 makes them (docs/rwkv7.md#the-wkv-7-operator), and a state.

  log_w = −0.6065·σ(2·N(0, 1)), κ̂ L2-normalised per head, a = −κ̂, b = κ̂·σ(N(0, 1)); r, k, v ~ N(0, 1).
  Returns ((r, log_w, k, v, a, b), h0 float32[B, H, N, N] ~ 0.3·N(0, 1)).
  """
  ks = jax.random.split(key, 7)
  r, k, v = (jax.random.normal(kk, (B, T, H, N)) for kk in ks[:3])
  log_w = -0.6065306597 * jax.nn.sigmoid(2 * jax.random.normal(ks[3], (B, T, H, N)))
  kappa = jax.random.normal(ks[4], (B, T, H, N))
  kappa = kappa / jnp.linalg.norm(kappa, axis=-1, keepdims=True)
  alpha = jax.nn.sigmoid(jax.random.normal(ks[5], (B, T, H, N)))
  h0 = 0.3 * jax.random.normal(ks[6], (B, H, N, N))
  return (r, log_w, k, v, -kappa, kappa * alpha), h0


def noisy_params(config, seed: int):
  """The from-scratch RWKV-7 init (config: rwkv7.RWKV7Config) plus Gaussian noise, so no matrix is
  zero and every path matters.

  Noise std per tensor = 0.5·std(init) + 0.05: zero-initialised matrices (att.output, ffn.value,
  the *1 LoRA halves) become ~0.05-scale random matrices, like trained ones.
  """
  from modrwkv_jax.models import rwkv7  # here, so the op tests that import this file need no model

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


def forbid_random_init(monkeypatch, targets):
  """Makes every (module, function name) in `targets` raise when it runs for real, while shape-only
  traces under `jax.eval_shape` (how param_logical_axes / abstract_params read names and shapes)
  stay allowed: a loader that builds params from files must never compute a random initialisation."""
  import jax
  depth = [0]
  real_eval_shape = jax.eval_shape

  def eval_shape(*args, **kwargs):
    depth[0] += 1
    try:
      return real_eval_shape(*args, **kwargs)
    finally:
      depth[0] -= 1

  monkeypatch.setattr(jax, "eval_shape", eval_shape)
  for module, name in targets:
    real = getattr(module, name)

    def guarded(*args, _real=real, _name=f"{module.__name__}.{name}", **kwargs):
      if depth[0] == 0:
        raise AssertionError(f"{_name} computed a random initialisation while loading from files")
      return _real(*args, **kwargs)

    monkeypatch.setattr(module, name, guarded)
