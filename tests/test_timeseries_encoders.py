"""WaveNet-style and Timer-style time-series encoders: shapes, causality, masks, RevIN, bad input.

References are properties, not another implementation: causality (perturbing step t changes no
output before t — WaveNet — or before t's patch — Timer; exact equality), padding invariance
(a left- or right-padded series gives the unpadded series' outputs, max |diff| < 1e-5), RevIN
statistics equal numpy's mean / biased std over the observed steps (< 1e-5 relative), and
normalise -> denormalise returns the input (< 1e-5 relative, with a random affine).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modrwkv_jax.models.encoders import timeseries as ts

WAVENET = ts.WaveNetConfig(in_channels=2, residual_channels=8, skip_channels=8, out_channels=16,
                           dilations=(1, 2, 4), num_stacks=2)
TIMER = ts.TimerConfig(in_channels=2, patch_len=8, width=16, num_layers=2, num_heads=4, mlp_dim=32,
                       revin_affine=True)
L = 48

_forward = jax.jit(ts.forward, static_argnums=0, static_argnames="normalize")
_normalize = jax.jit(ts.normalize, static_argnums=0)
_denormalize = jax.jit(ts.denormalize, static_argnums=0)


def _noisy(params, seed):
  """Init params plus noise, so the RevIN affine and every bias matter (numpy noise: nothing to compile)."""
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda x: x + 0.2 * rs.randn(*x.shape).astype(np.float32), params)


@pytest.fixture(scope="module", params=["wavenet", "timer"])
def encoder(request):
  config = WAVENET if request.param == "wavenet" else TIMER
  return config, _noisy(ts.init_params(config, jax.random.key(0)), 1)


def _series(batch=3, length=L, seed=0):
  rs = np.random.RandomState(seed)
  t = np.arange(length)[None, :, None]
  return (5.0 + 3.0 * np.sin(t / 5.0 + rs.rand(batch, 1, 2)) + rs.randn(batch, length, 2)).astype(np.float32)


def test_shapes_and_output_masks(encoder):
  config, params = encoder
  x = _series()
  mask = np.ones((3, L), bool)
  mask[1, :13] = False  # a short look-back, left-padded
  out, out_mask, stats = _forward(config, params, jnp.asarray(x), jnp.asarray(mask))
  if isinstance(config, ts.WaveNetConfig):
    assert out.shape == (3, L, 16) and config.receptive_field == 1 + 2 * 7
    np.testing.assert_array_equal(out_mask, mask)
  else:
    assert out.shape == (3, L // 8, 16)
    assert list(np.asarray(out_mask).sum(1)) == [6, 5, 6]  # steps 13..47 touch patches 1..5
  assert stats.mean.shape == stats.std.shape == (3, 1, 2)
  assert np.isfinite(np.asarray(out)).all()
  assert (np.asarray(out)[~np.asarray(out_mask)] == 0).all()
  # A univariate float[B, L] series is float[B, L, 1] for a V = 1 config.
  config1 = dataclasses.replace(config, in_channels=1, revin_affine=False)
  xn, stats1 = ts.normalize(config1, {}, jnp.asarray(x[..., 0]))
  assert xn.shape == (3, L, 1) and stats1.mean.shape == (3, 1, 1)


def test_causality(encoder):
  """Changing step t never changes an output before t (WaveNet) or before t's patch (Timer)."""
  config, params = encoder
  x = _series(batch=1)
  mask = jnp.ones((1, L), bool)
  _, _, stats = _forward(config, params, jnp.asarray(x), mask)
  for t in (20, 33, L - 1):
    y = x.copy()
    y[0, t] += 10.0
    # With the RevIN statistics held fixed (computed once from x); without them, the statistics of the
    # whole window (all in the past of a forecast) would carry step t to every output.
    a = np.asarray(_forward(config, params, jnp.asarray(x), mask, stats=stats)[0])
    b = np.asarray(_forward(config, params, jnp.asarray(y), mask, stats=stats)[0])
    first = t if isinstance(config, ts.WaveNetConfig) else t // config.patch_len  # patches end-aligned, L % 8 == 0
    np.testing.assert_array_equal(a[:, :first], b[:, :first])
    assert np.abs(a[:, first] - b[:, first]).max() > 1e-4, t


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_real_outputs(encoder, side):
  config, params = encoder
  n = 29
  if isinstance(config, ts.TimerConfig) and side == "right":
    n = 32  # patches are aligned to the window's end: right padding must be whole patches to keep them
  pad = L - n
  x = _series(batch=1)
  alone, _, alone_stats = ts.forward(config, params, jnp.asarray(x[:, -n:]))
  padded = np.full((1, L, 2), np.nan, np.float32)  # padded steps may hold anything, NaN included
  mask = np.zeros((1, L), bool)
  real = slice(pad, L) if side == "left" else slice(0, n)
  padded[:, real], mask[:, real] = x[:, -n:], True
  out, out_mask, stats = _forward(config, params, jnp.asarray(padded), jnp.asarray(mask))
  np.testing.assert_allclose(stats.mean, alone_stats.mean, rtol=1e-6)
  np.testing.assert_allclose(stats.std, alone_stats.std, rtol=1e-6)
  out, alone = np.asarray(out), np.asarray(alone)
  if isinstance(config, ts.WaveNetConfig):
    got = out[:, real]
  else:
    got = out[:, -alone.shape[1]:] if side == "left" else out[:, :alone.shape[1]]
    assert np.asarray(out_mask).sum() == alone.shape[1] == 4
  err = float(np.abs(got - alone).max())
  print(f"{type(config).__name__} {side}-padded vs alone: max |diff| {err:.2e}")
  assert err < 1e-5
  assert np.isfinite(out).all() and (out[~np.asarray(out_mask)] == 0).all()


def test_revin_statistics_and_round_trip(encoder):
  config, params = encoder
  x = _series() * np.array([1.0, 100.0], np.float32)  # two variables on very different scales
  mask = np.ones((3, L), bool)
  mask[2, 30:] = False
  xn, stats = _normalize(config, params, jnp.asarray(x), jnp.asarray(mask))
  for b in range(3):
    obs = x[b][mask[b]]
    np.testing.assert_allclose(stats.mean[b, 0], obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.std[b, 0], np.sqrt(obs.var(0) + ts.REVIN_EPS), rtol=1e-5)
  assert (np.asarray(xn)[~mask] == 0).all()
  back = np.asarray(_denormalize(config, params, xn, stats))
  err = float(np.abs(back[mask] - x[mask]).max() / np.abs(x).max())
  print(f"{type(config).__name__} RevIN round trip: max rel err {err:.2e}")
  assert err < 1e-5
  # The plain functions, without affine, and a constant series (std = sqrt(eps), no inf).
  const = jnp.full((1, 10, 2), 7.0)
  cn, cstats = ts.revin_normalize(const)
  assert np.isfinite(np.asarray(cn)).all() and float(jnp.abs(cn).max()) == 0.0
  np.testing.assert_allclose(ts.revin_denormalize(cn, cstats), const)


def test_timer_gradients_are_finite_with_padding():
  """Left padding leaves Timer's first queries with no visible key: the softmax must stay finite."""
  config, params = TIMER, _noisy(ts.init_params(TIMER, jax.random.key(0)), 1)  # init compiled once per config
  x = jnp.asarray(_series())
  mask = np.ones((3, L), bool)
  mask[0, :21] = False
  loss = lambda p: jnp.sum(ts.forward(config, p, x, jnp.asarray(mask))[0] ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_bad_series_raise_clear_errors():
  params = _noisy(ts.init_params(TIMER, jax.random.key(0)), 1)  # the same shapes: cached compilations
  x = _series()
  x[1, 17, 0] = np.nan
  with pytest.raises(ValueError, match=r"sample 1 has a non-finite value \(NaN or inf\) at step 17"):
    ts.forward(TIMER, params, jnp.asarray(x))
  mask = np.ones((3, L), bool)
  mask[1, 17] = False  # the same NaN, masked out: fine
  assert np.isfinite(np.asarray(_forward(TIMER, params, jnp.asarray(x), jnp.asarray(mask))[0])).all()
  short = np.ones((2, L), bool)
  short[0, :-5] = False
  with pytest.raises(ValueError, match=r"sample 0 has 5 observed steps, fewer than one patch \(8 steps\)"):
    ts.forward(TIMER, params, jnp.asarray(_series(batch=2)), jnp.asarray(short))
  with pytest.raises(ValueError, match="fewer than one patch"):
    ts.forward(TIMER, params, jnp.zeros((1, 5, 2)))
  wavenet_params = {}  # the checks run before the parameters are touched
  with pytest.raises(ValueError, match="sample 0 has 0 observed steps, fewer than one step"):
    ts.forward(WAVENET, wavenet_params, jnp.zeros((1, 6, 2)), jnp.zeros((1, 6), bool))
  with pytest.raises(ValueError, match=r"float\[B, L, V=2\]"):
    ts.forward(WAVENET, wavenet_params, jnp.zeros((1, 6, 3)))
  with pytest.raises(ValueError, match="positive int"):
    ts.TimerConfig(patch_len=0)
