"""WaveNet-style and Timer-style time-series encoders: shapes, causality, masks, RevIN, bad input.

References are properties, not another implementation: causality (perturbing step t changes no
output before t — WaveNet — or before t's patch — Timer; exact equality), padding invariance
(a left- or right-padded series gives the unpadded series' outputs, max |diff| < 1e-5), RevIN
statistics equal numpy's mean / biased std over the observed steps (< 1e-5 relative), and
normalise -> denormalise returns the input (< 1e-5 relative, with a random affine). The scanned
Timer (one `layers` stack, rematerialised) against the unrolled one: outputs and gradients agree to
rel-RMS < 1e-5 (a different XLA program sums in another order; float32 ε·√K is ~1e-6 here).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modrwkv_jax import sharding
from modrwkv_jax.models.encoders import timeseries as ts
from modrwkv_jax.models.encoders import transformer

WAVENET = ts.WaveNetConfig(in_channels=2, residual_channels=8, skip_channels=8, out_channels=16,
                           dilations=(1, 2, 4), num_stacks=2)
TIMER = ts.TimerConfig(in_channels=2, patch_len=8, width=16, num_layers=2, num_heads=4, mlp_dim=32,
                       revin_affine=True)
L = 48

_forward = jax.jit(ts.forward, static_argnums=0, static_argnames="normalize")
_encode = jax.jit(ts.encode, static_argnums=0)
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


def rel_rms(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.sqrt(np.mean((x - ref) ** 2) / np.mean(ref ** 2)))


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
  # The encoder interface: encode = forward without the statistics; num_tokens(n observed steps) is the
  # count of real outputs of a window of n steps.
  ts.check_inputs(config, x, mask)
  feats, token_mask = _encode(config, params, jnp.asarray(x), jnp.asarray(mask))
  assert rel_rms(feats, out) < 1e-6
  np.testing.assert_array_equal(token_mask, out_mask)
  assert ts.num_tokens(config, L) == np.asarray(out_mask)[0].sum()
  assert ts.num_tokens(config, L - 13) == (L - 13 if isinstance(config, ts.WaveNetConfig) else 5)
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


def test_bad_series_raise_clear_errors():
  """Shapes are checked by forward (statically); values by check_inputs, on numpy inputs at the boundary."""
  params = _noisy(ts.init_params(TIMER, jax.random.key(0)), 1)  # the same shapes: cached compilations
  x = _series()
  x[1, 17, 0] = np.nan
  with pytest.raises(ValueError, match=r"sample 1 has a non-finite value \(NaN or inf\) at step 17"):
    ts.check_inputs(TIMER, x)
  mask = np.ones((3, L), bool)
  mask[1, 17] = False  # the same NaN, masked out: fine
  ts.check_inputs(TIMER, x, mask)
  assert np.isfinite(np.asarray(_forward(TIMER, params, jnp.asarray(x), jnp.asarray(mask))[0])).all()
  short = np.ones((2, L), bool)
  short[0, :-5] = False
  with pytest.raises(ValueError, match=r"sample 0 has 5 observed steps, fewer than one patch \(8 steps\)"):
    ts.check_inputs(TIMER, _series(batch=2), short)
  with pytest.raises(ValueError, match="fewer than one patch"):  # a shape error: forward raises too
    ts.forward(TIMER, params, jnp.zeros((1, 5, 2)))
  wavenet_params = {}  # the checks run before the parameters are touched
  with pytest.raises(ValueError, match="sample 0 has 0 observed steps, fewer than one step"):
    ts.check_inputs(WAVENET, np.zeros((1, 6, 2)), np.zeros((1, 6), bool))
  with pytest.raises(ValueError, match=r"float\[B, L, V=2\]"):
    ts.forward(WAVENET, wavenet_params, jnp.zeros((1, 6, 3)))
  with pytest.raises(ValueError, match="positive int"):
    ts.TimerConfig(patch_len=0)


@pytest.mark.parametrize("config", [WAVENET, TIMER], ids=["wavenet", "timer"])
def test_every_parameter_resolves_to_a_sharding(config):
  """Every leaf of param_logical_axes uses the encoder vocabulary of modrwkv_jax.sharding and resolves
  with logical_to_mesh (which raises on a name without a rule or a name used twice)."""
  configs = [config] + ([dataclasses.replace(config, scan_layers=True)] if isinstance(config, ts.TimerConfig) else [])
  for cfg in configs:
    axes = ts.param_logical_axes(cfg)
    shardings = sharding.logical_to_mesh(axes, sharding.make_mesh())
    specs = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    shapes = [x.shape for x in jax.tree.leaves(jax.eval_shape(lambda c=cfg: ts.init_params(c, jax.random.key(0))))]
    assert len(specs) == len(shapes) == len(jax.tree.leaves(shardings))
    for spec, shape in zip(specs, shapes):
      assert len(spec) == len(shape) and set(spec) <= sharding.rule_names() | {None}, (spec, shape)


def test_scanned_timer_with_remat_equals_unrolled():
  """One scanned `layers` stack (nn.scan) with remat == the unrolled layers_i: outputs and gradients
  (rel-RMS < 1e-5), the same params converted with stack_layers (and back exactly with unstack_layers).
  Left padding leaves Timer's first queries with no visible key: the gradients must stay finite."""
  scanned_config = dataclasses.replace(TIMER, scan_layers=True, remat="dots_with_no_batch_dims_saveable")
  params = jax.tree.map(np.asarray, _noisy(ts.init_params(TIMER, jax.random.key(0)), 1))
  stacked = transformer.stack_layers(params)  # numpy in, numpy out
  assert "layers_0" not in stacked["encoder"]
  assert stacked["encoder"]["layers"]["self_attn"]["q_proj"]["kernel"].shape == (2, 16, 16)
  assert jax.tree.structure(stacked) == jax.tree.structure(
      jax.eval_shape(lambda: ts.init_params(scanned_config, jax.random.key(0))))
  jax.tree.map(np.testing.assert_array_equal, transformer.unstack_layers(stacked), params)
  x = jnp.asarray(_series())
  mask = np.ones((3, L), bool)
  mask[0, :21] = False

  def loss(config, p):
    out = ts.forward(config, p, x, jnp.asarray(mask))[0]
    return jnp.sum(jnp.tanh(out)), out

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True), static_argnums=0)
  (want, want_out), want_grads = value_and_grad(TIMER, params)
  (got, got_out), got_grads = value_and_grad(scanned_config, stacked)
  out_err = rel_rms(got_out, want_out)
  # Over all gradients at once: some are exactly 0 in exact arithmetic (k_proj's bias: softmax ignores
  # a shift shared by all keys), so their own relative error is rounding noise over noise.
  flat = lambda tree: np.concatenate([np.ravel(g) for g in jax.tree.leaves(tree)])
  grad_err = rel_rms(flat(transformer.unstack_layers(got_grads)), flat(want_grads))
  print(f"scanned + remat Timer vs unrolled: output rel-RMS {out_err:.2e}, gradient rel-RMS {grad_err:.2e}")
  assert np.isfinite(flat(want_grads)).all() and np.isfinite(flat(got_grads)).all()
  assert out_err < 1e-5 and grad_err < 1e-5 and abs(float(got) - float(want)) <= 1e-5 * abs(float(want))
  with pytest.raises(ValueError, match="remat='everything'; choose 'none', 'block'"):
    dataclasses.replace(TIMER, remat="everything")
