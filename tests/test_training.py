"""The trainer's pieces on one device: parameter groups, the optimizer, the train step (gradient
accumulation, non-finite skips), phases (frozen leaves stay bit-identical and get no optimizer state)
and checkpoint round trips.

References: a plain optax Adam on the whole batch (accumulation), closed-form parameter counts, and the
state before the step (frozen leaves). One small text+image model, compiled once per module.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from modrwkv_jax import peft
from modrwkv_jax.models import modrwkv, projector, rwkv7
from modrwkv_jax.models.encoders import siglip
from modrwkv_jax.training import config as config_lib
from modrwkv_jax.training import optimizer as optim_lib
from modrwkv_jax.training import step as step_lib
from modrwkv_jax.training import trainer
from tests.helpers import rel_rms_err

V, D, L, F = 256, 32, 2, 64
R = 8  # Bone block size


def tiny_config(trainable=("adapter", "rwkv"), peft_method=None, **optim):
  c = config_lib.base_config()
  c.model.rwkv = dict(vocab_size=V, n_layer=L, n_embd=D, head_size=16, dim_w=8, dim_a=8, dim_v=8, dim_g=8,
                      dim_ffn=F, scan_layers=True)
  c.model.max_length = 64
  c.model.modalities = dict(image=dict(
      encoder="siglip", encoder_config=dict(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                            patch_size=8, image_size=16),
      projector=dict(kind="vision", hidden_mult=2)))
  c.model.peft.method = peft_method
  c.model.peft.r = R
  c.train.trainable = trainable
  c.train.steps = 10
  c.train.batch_size = 8
  c.optim.warmup = 0
  c.optim.schedule = "constant"
  for k, v in optim.items():
    c.optim[k] = v
  c.mesh.data = 1
  return c


def make_batch(seed=0, B=8, T=24, n_img=4, labels_per_row=None):
  rs = np.random.RandomState(seed)
  tokens = rs.randint(1, V, size=(B, T)).astype(np.int32)
  tokens[:, :n_img] = 0
  pos = np.full((B, T), -1, np.int32)
  pos[:, :n_img] = np.arange(n_img)
  labels = np.full((B, T), -100, np.int32)
  for b in range(B):
    n = labels_per_row[b] if labels_per_row is not None else 8
    labels[b, T - 1 - n:T - 1] = tokens[b, T - n:T]
  return {"tokens": tokens, "labels": labels, "mask": np.ones((B, T), bool),
          "image": rs.randn(B, 1, 16, 16, 3).astype(np.float32), "image_pos": pos,
          "image_count": np.ones((B,), np.int32)}


@pytest.fixture(scope="module")
def mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


_PARAMS = {}


def setup_for(config, mesh):
  """(Setup, params): zero-initialised leaves (Bone blocks, output projections) made random so every path
  has a gradient. Numpy leaves drawn once per model (no init compile per test)."""
  s = trainer.Setup(config, mesh)
  key = (s.model, s.peft)
  if key not in _PARAMS:
    rs = np.random.RandomState(0)
    _PARAMS[key] = jax.tree.map(lambda a: (0.1 * rs.randn(*a.shape)).astype(a.dtype), s.abstract)
  return s, _PARAMS[key]


# ---------------------------------------------------------------------------------------------
# Parameter groups.

def test_groups_select_parts_and_typos_fail(mesh):
  s = trainer.Setup(tiny_config(peft_method="bone"), mesh)
  params = s.abstract
  paths = lambda mask: {optim_lib.path_str(kp) for kp, v in jax.tree_util.tree_leaves_with_path(mask) if v}
  adapter = paths(optim_lib.trainable_mask(params, ("adapter",)))
  assert adapter and all(p.startswith("projectors/") for p in adapter)
  bone = paths(optim_lib.trainable_mask(params, ("peft",)))
  assert bone and all(p.endswith("/bone") for p in bone)
  rwkv = paths(optim_lib.trainable_mask(params, ("rwkv",)))
  assert not rwkv & bone and any(p.endswith("receptance/kernel") for p in rwkv)
  regex = paths(optim_lib.trainable_mask(params, (r"att/w0$",)))
  assert regex == {"rwkv/blocks/att/w0"}
  with pytest.raises(ValueError, match="selects no parameter"):
    optim_lib.trainable_mask(params, ("rwkv/blocks/attn/nothing",))
  with pytest.raises(ValueError, match="'encoder' selects no parameter: every modality has train_encoder False"):
    optim_lib.trainable_mask(params, ("encoder",), s.model)  # with a model, "encoder" means encoders that train
  with pytest.raises(ValueError, match="selects encoders/image but model.modalities.image.train_encoder is False"):
    optim_lib.trainable_mask(params, ("^encoders/image/",), s.model)
  assert paths(optim_lib.trainable_mask(params, ("encoder",)))  # without a model: every encoder leaf


def test_trainable_counts_match_the_closed_form(mesh):
  # Phase I: the vision adapter h = W2 relu(W1 x + b1) + b2 (C -> m·D -> D), out = h + LayerNorm(h).
  C, m = 16, 2
  s1 = trainer.Setup(tiny_config(("adapter",)), mesh)
  counts = s1.counts()
  assert counts["projectors"][1] == C * m * D + m * D + m * D * D + D + 2 * D
  assert counts["rwkv"][1] == 0 and counts["encoders/image"][1] == 0
  # Bone phase II: r × out per target; att receptance/key/value/output (out D) and ffn key (out F), value (out D).
  s2 = trainer.Setup(tiny_config(("adapter", "peft"), "bone"), mesh)
  counts = s2.counts()
  assert counts["rwkv"][1] == L * R * (4 * D + F + D)


# ---------------------------------------------------------------------------------------------
# The step.

@pytest.fixture(scope="module")
def phase2(mesh):
  s, params = setup_for(tiny_config(), mesh)
  return s, params, jax.jit(s.step_fn)


def test_phase1_changes_only_adapters_and_keeps_no_state_for_frozen(mesh):
  s, params = setup_for(tiny_config(("adapter",)), mesh)
  state = s.init_state(params)
  n_trainable = optim_lib.count(state["trainable"])
  moments = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0)
  assert moments == 2 * n_trainable  # Adam's mu and nu for trainable leaves only
  before = jax.device_get(state)
  after, metrics = jax.jit(s.step_fn)(state, make_batch())
  after = jax.device_get(after)
  assert bool(metrics["finite"])
  for a, b in zip(jax.tree.leaves(before["frozen"]), jax.tree.leaves(after["frozen"])):
    np.testing.assert_array_equal(a, b)
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["trainable"]),
                                                     jax.tree.leaves(after["trainable"]))]
  assert all(changed)
  assert set(after["frozen"]) == {"rwkv", "encoders"} and set(after["trainable"]) == {"projectors"}


def test_bone_phase2_leaves_base_weights_bit_identical(mesh):
  s, params = setup_for(tiny_config(("adapter", "peft"), "bone"), mesh)
  state = s.init_state(params)
  before = jax.device_get(state)
  after, metrics = jax.jit(s.step_fn)(state, make_batch(1))
  after = jax.device_get(after)
  base = before["frozen"]["rwkv"]["blocks"]["att"]["receptance"]["kernel"]
  np.testing.assert_array_equal(base, after["frozen"]["rwkv"]["blocks"]["att"]["receptance"]["kernel"])
  for a, b in zip(jax.tree.leaves(before["frozen"]), jax.tree.leaves(after["frozen"])):
    np.testing.assert_array_equal(a, b)
  bone = after["trainable"]["rwkv"]["blocks"]["att"]["receptance"]["bone"]
  assert not np.array_equal(bone, before["trainable"]["rwkv"]["blocks"]["att"]["receptance"]["bone"])


def test_one_step_equals_plain_adam_on_the_token_mean_loss(phase2):
  """Reference: optax clip + Adam + constant lr on modrwkv.loss (token mean), written independently."""
  s, params, step = phase2
  batch = make_batch(2)
  state = s.init_state(params)
  new, metrics = step(state, batch)
  c = tiny_config()
  full = peft.combine(jax.device_get(state["trainable"]), jax.device_get(state["frozen"]))
  trainable, frozen = optim_lib.split(full, s.mask)
  loss_fn = lambda t: modrwkv.loss(s.model, peft.combine(t, frozen), batch)[0]
  value, grads = jax.jit(jax.value_and_grad(loss_fn))(trainable)
  factors = optim_lib.lr_factors(trainable, dict(c.optim.lr_multipliers))
  ref_opt = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(0.9, 0.99, 1e-8))
  updates, _ = ref_opt.update(grads, ref_opt.init(trainable), trainable)
  ref = jax.tree.map(lambda p, u, f: p - c.optim.lr * f * u, trainable, updates, factors)
  assert rel_rms_err(float(metrics["loss"]), float(value)) < 1e-6
  for a, b in zip(jax.tree.leaves(jax.device_get(new["trainable"])), jax.tree.leaves(ref)):
    assert rel_rms_err(a, b) < 1e-5
  w0 = lambda t: np.asarray(t["rwkv"]["blocks"]["att"]["w0"])
  delta = w0(jax.device_get(new["trainable"])) - w0(trainable)
  assert np.abs(delta).max() > 1.5 * c.optim.lr  # the ×2 multiplier: Adam's first step moves by ≈ lr·2


def test_grad_accumulation_equals_one_batch_with_unequal_token_counts(phase2, mesh):
  s, params, step = phase2
  # Micro-batch j holds rows j, j + 2, ...: rows 0, 2, 4, 6 have 2 label tokens, rows 1, 3, 5, 7 have 12.
  batch = make_batch(3, labels_per_row=[2, 12, 2, 12, 2, 12, 2, 12])
  c = tiny_config()
  c.train.grad_accum = 2
  s2 = trainer.Setup(c, mesh)
  one, m1 = step(s.init_state(params), batch)
  two, m2 = jax.jit(s2.step_fn)(s2.init_state(params), batch)
  assert int(m1["tokens"]) == int(m2["tokens"]) == 56
  assert rel_rms_err(float(m2["loss"]), float(m1["loss"])) < 1e-5
  assert rel_rms_err(float(m2["grad_norm"]), float(m1["grad_norm"])) < 1e-5
  for a, b in zip(jax.tree.leaves(jax.device_get(two["trainable"])), jax.tree.leaves(jax.device_get(one["trainable"]))):
    assert rel_rms_err(a, b) < 1e-5
  # The naive average of micro-batch means differs (the test can fail): (mean_a + mean_b) / 2 != token mean.
  half = lambda j: jax.tree.map(lambda x: x[j::2], batch)
  means = [float(modrwkv.loss(s.model, peft.combine(*optim_lib.split(params, s.mask)), half(j))[0]) for j in (0, 1)]
  assert abs(np.mean(means) - float(m1["loss"])) > 1e-3


def test_non_finite_step_is_skipped_and_counted(phase2):
  s, params, step = phase2
  batch = make_batch(4)
  batch["labels"][0, 5] = V + 3  # a label outside the vocabulary: the loss is NaN, loudly
  state = s.init_state(params)
  before = jax.device_get(state)
  new, metrics = step(state, batch)
  assert not bool(metrics["finite"]) and not np.isfinite(float(metrics["loss"]))
  assert int(new["skipped"]) == 1 and int(new["skipped_in_a_row"]) == 1 and int(new["step"]) == 1
  for a, b in zip(jax.tree.leaves(before["trainable"]), jax.tree.leaves(jax.device_get(new["trainable"]))):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(before["opt_state"]), jax.tree.leaves(jax.device_get(new["opt_state"]))):
    np.testing.assert_array_equal(a, b)
  again, _ = step(new, make_batch(5))
  assert int(again["skipped_in_a_row"]) == 0 and int(again["skipped"]) == 1


# ---------------------------------------------------------------------------------------------
# Schedules.

def test_schedules_warmup_cosine_wsd():
  c = config_lib.base_config().optim
  c.lr, c.warmup, c.end_lr_ratio = 1.0, 10, 0.0
  cos = optim_lib.schedule(c, 110)
  assert float(cos(0)) == 0.0 and abs(float(cos(5)) - 0.5) < 1e-6 and abs(float(cos(10)) - 1.0) < 1e-6
  assert abs(float(cos(60)) - 0.5 * (1 + math.cos(math.pi * 0.5))) < 1e-6 and abs(float(cos(110))) < 1e-6
  c.schedule, c.decay_fraction = "wsd", 0.2
  wsd = optim_lib.schedule(c, 100)
  assert abs(float(wsd(50)) - 1.0) < 1e-6 and abs(float(wsd(90)) - 0.5) < 1e-6 and abs(float(wsd(100))) < 1e-6
  c.schedule = "bogus"
  with pytest.raises(ValueError, match="optim.schedule"):
    optim_lib.schedule(c, 100)


def test_weight_decay_masks_matrices_only(mesh):
  s = trainer.Setup(tiny_config(), mesh)
  trainable, _ = optim_lib.split(s.abstract, s.mask)
  mask = optim_lib.decay_mask(trainable, trainer._select(s.axes, s.mask))
  assert mask["rwkv"]["blocks"]["att"]["receptance"]["kernel"] is True  # [layers, D, D]: a matrix per layer
  assert mask["rwkv"]["blocks"]["att"]["w0"] is False  # [layers, D]: a vector per layer
  assert mask["rwkv"]["emb"]["embedding"] is True


# ---------------------------------------------------------------------------------------------
# What is checked before compiling.

def test_mesh_batch_and_files_are_checked_before_compiling(mesh, tmp_path):
  from modrwkv_jax.training import data as data_lib
  c = tiny_config()
  c.mesh.data = len(jax.devices()) + 1
  with pytest.raises(ValueError, match=f"needs {len(jax.devices()) + 1} devices"):
    trainer.make_mesh(c)
  c = tiny_config()
  c.train.batch_size, c.train.grad_accum = 6, 4
  with pytest.raises(ValueError, match="not divisible by train.grad_accum"):
    data_lib.check_batch(c, mesh)
  c.train.batch_size, c.train.grad_accum = 8, 1
  big = jax.sharding.Mesh(np.array(jax.devices()[:1] * 1).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  assert data_lib.check_batch(c, big) == (8, 8)
  c.init.rwkv_pth = str(tmp_path / "missing.pth")
  with pytest.raises(FileNotFoundError, match="init.rwkv_pth="):
    config_lib.check_files(c)
  c = tiny_config(("rwkv/blocks/att/no_such_leaf",))
  with pytest.raises(ValueError, match="selects no parameter"):
    trainer.Setup(c, mesh)


def test_phase2_starts_from_a_phase1_checkpoint_with_fresh_optimizer_and_bone(mesh, tmp_path):
  """init.from_checkpoint: params of a phase-I run, Bone adapters added, new optimizer state."""
  from modrwkv_jax.training import checkpoint as ckpt
  p1 = tiny_config(("adapter",))
  s1, params = setup_for(p1, mesh)
  state = s1.init_state(params)
  work = tmp_path / "phase1"
  work.mkdir()
  (work / "config.json").write_text(config_lib.to_json(p1))
  mngr = ckpt.manager(str(work), keep=2)
  ckpt.save(mngr, 7, state, {"epoch": 0, "next_index": 7}, {"name": "p1"})
  mngr.wait_until_finished()
  mngr.close()

  p2 = tiny_config(("adapter", "peft"), "bone")
  p2.init.from_checkpoint = str(work / "checkpoints")
  s2 = trainer.Setup(p2, mesh)
  new, source = trainer._from_checkpoint(p2, s2)
  assert "fresh optimizer" in source and int(new["step"]) == 0
  base = np.asarray(new["frozen"]["rwkv"]["blocks"]["att"]["receptance"]["kernel"])
  np.testing.assert_array_equal(base, params["rwkv"]["blocks"]["att"]["receptance"]["kernel"])
  np.testing.assert_array_equal(np.asarray(new["trainable"]["projectors"]["image"]["fc1"]["kernel"]),
                                params["projectors"]["image"]["fc1"]["kernel"])
  assert not np.any(np.asarray(new["trainable"]["rwkv"]["blocks"]["att"]["receptance"]["bone"]))  # fresh Bone: zeros
  # Another model is refused, naming the path.
  p3 = tiny_config()
  p3.model.rwkv["n_layer"] = 3
  p3.init.from_checkpoint = str(work)
  with pytest.raises(ValueError, match="another model"):
    trainer._from_checkpoint(p3, trainer.Setup(p3, mesh))
