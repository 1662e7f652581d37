"""Parameter groups and the optimizer (docs/architecture.md): what trains, at which learning rate, with which decay.

Parameter groups are config: `train.trainable` lists named groups and/or regular expressions searched in
the "/"-joined parameter path (e.g. "rwkv/blocks/att/receptance/kernel", "projectors/image/fc1/kernel"):

  adapter   projectors/…          the compressors and MLP adapters of every modality
  rwkv      rwkv/…                the language model's own weights (not PEFT adapters)
  encoder   encoders/…            the modality encoders (needs model.modalities.<m>.train_encoder)
  peft      rwkv/…/{bone,bat,lora_a,lora_b}   the PEFT adapters
  head      forecast_head/…       the time-series forecasting head

Phase I is `("adapter",)`, phase II `("adapter", "rwkv")`, Bone/LoRA phase II `("adapter", "peft")`. The
trainable leaves are split off (`split`) and are the only tree the optimizer and `jax.grad` see: frozen
leaves get no optimizer state, no accumulation buffer and no weight gradient.

The optimizer: clip by global norm first, Adam(b1, b2, eps), decoupled weight decay on matrices only
(leaves with two or more non-`layers` logical axes, as RWKV-LM decays 2-D weights only), the schedule
(linear warmup, then cosine to end_lr_ratio·lr, or warmup-stable-decay, or constant), and per-parameter
learning-rate multipliers by regex (`optim.lr_multipliers`, default att/w0 ×2 as RWKV-LM's lr_2x group).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from modrwkv_jax import peft

GROUPS = {
    "adapter": lambda path: path.startswith("projectors/"),
    "rwkv": lambda path: path.startswith("rwkv/") and path.rsplit("/", 1)[-1] not in peft.adapters.ADAPTER_LEAVES,
    "encoder": lambda path: path.startswith("encoders/"),
    "peft": lambda path: path.startswith("rwkv/") and path.rsplit("/", 1)[-1] in peft.adapters.TRAINABLE_LEAVES,
    "head": lambda path: path.startswith("forecast_head/"),
}


def path_str(kp) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)


def trainable_mask(params: Mapping, selectors: Sequence[str], model=None) -> dict:
  """bool tree shaped like `params`: True where a named group or a regex of `selectors` selects the leaf.

  With `model`, the group "encoder" means the encoders that train (`train_encoder` True), so one config
  can train some encoders and keep a pretrained one frozen (configs/demo.py).
  Raises ValueError for a selector that selects nothing (a typo never silently freezes everything), and
  for encoder leaves a regex selects while the modality's `train_encoder` is False (its gradient would be cut).
  """
  if isinstance(selectors, str):
    selectors = (selectors,)
  paths = [path_str(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(params)]
  tests = []
  for s in selectors:
    if s == "encoder" and model is not None:
      training = tuple(f"encoders/{name}/" for name, m in model.modalities if m.train_encoder)
      tests.append((s, lambda p, training=training: p.startswith(training)))
    elif s in GROUPS:
      tests.append((s, GROUPS[s]))
    else:
      try:
        pattern = re.compile(s)
      except re.error as e:
        raise ValueError(f"train.trainable: {s!r} is neither a group {sorted(GROUPS)} nor a regular expression ({e})")
      tests.append((s, lambda p, pattern=pattern: bool(pattern.search(p))))
  for name, test in tests:
    if name == "encoder" and model is not None and not any(test(p) for p in paths):
      raise ValueError("train.trainable: 'encoder' selects no parameter: every modality has train_encoder False "
                       "(set model.modalities.<name>.train_encoder=True for the encoders that should train)")
    if not any(test(p) for p in paths):
      raise ValueError(f"train.trainable: {name!r} selects no parameter (groups: {sorted(GROUPS)}; paths look like "
                       f"{paths[0]!r}, {paths[-1]!r})")
  selected = {p for p in paths if any(test(p) for _, test in tests)}
  if model is not None:
    for name, m in model.modalities:
      if not m.train_encoder and any(p.startswith(f"encoders/{name}/") for p in selected):
        raise ValueError(f"train.trainable selects encoders/{name} but model.modalities.{name}.train_encoder is False "
                         "(the encoder's output is cut from the gradient); set it True or drop the encoder group")
  return jax.tree_util.tree_map_with_path(lambda kp, _: path_str(kp) in selected, params)


def split(params: Mapping, mask: Mapping) -> tuple[dict, dict]:
  """(trainable, frozen) nested dicts; `peft.combine(trainable, frozen)` is the inverse."""
  return peft.partition(params, mask)


def count(tree) -> int:
  return peft.count_params(tree)


# ---------------------------------------------------------------------------------------------
# Schedule and optimizer.

def schedule(optim, steps: int) -> optax.Schedule:
  """The learning rate by update count: linear warmup from 0 over `optim.warmup` updates, then
  cosine | wsd | constant down to `end_lr_ratio`·lr at `steps` (warmup counts toward `steps`)."""
  lr, warmup, end = optim.lr, min(optim.warmup, steps), optim.lr * optim.end_lr_ratio
  if optim.schedule == "cosine":
    if steps <= warmup:
      return optax.linear_schedule(0.0, lr, max(warmup, 1))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, end_value=end)
  if optim.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
                                [warmup])
  if optim.schedule == "wsd":
    decay = max(1, int(round(steps * optim.decay_fraction)))
    stable = max(0, steps - warmup - decay)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr),
                                 optax.linear_schedule(lr, end, decay)], [warmup, warmup + stable])
  raise ValueError(f"optim.schedule must be 'cosine', 'wsd' or 'constant'; got {optim.schedule!r}")


def _matrix(spec) -> bool:
  return sum(1 for name in spec if name is not None and name != "layers") >= 2


def decay_mask(trainable: Mapping, logical_axes: Mapping) -> dict:
  """True at matrices: leaves with two or more logical axes besides the scanned `layers` axis."""
  from jax.sharding import PartitionSpec as P
  axes = {path_str(kp): spec for kp, spec in
          jax.tree_util.tree_leaves_with_path(logical_axes, is_leaf=lambda x: isinstance(x, P))}
  return jax.tree_util.tree_map_with_path(lambda kp, x: _matrix(axes.get(path_str(kp), P())) and x.ndim >= 2,
                                          trainable)


def lr_factors(trainable: Mapping, multipliers: Mapping[str, float]) -> dict:
  """Per-leaf learning-rate factor: the product of the `multipliers` whose regex matches the path."""
  compiled = [(re.compile(k), float(v)) for k, v in multipliers.items()]
  def factor(kp, _):
    f, path = 1.0, path_str(kp)
    for pattern, v in compiled:
      if pattern.search(path):
        f *= v
    return f
  return jax.tree_util.tree_map_with_path(factor, trainable)


def _scale_by_tree(factors: Mapping) -> optax.GradientTransformation:
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u if f == 1.0 else u * jnp.asarray(f, u.dtype), updates, factors), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(optim, steps: int, trainable: Mapping, logical_axes: Mapping) -> optax.GradientTransformation:
  """clip → Adam → decoupled weight decay (matrices) → −lr(schedule) → per-leaf lr multipliers."""
  parts = []
  if optim.clip and optim.clip > 0:
    parts.append(optax.clip_by_global_norm(optim.clip))
  parts.append(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
  if optim.weight_decay:
    parts.append(optax.add_decayed_weights(optim.weight_decay, mask=decay_mask(trainable, logical_axes)))
  parts.append(optax.scale_by_learning_rate(schedule(optim, steps)))
  factors = lr_factors(trainable, dict(optim.lr_multipliers))
  if any(f != 1.0 for f in jax.tree.leaves(factors)):
    parts.append(_scale_by_tree(factors))
  return optax.chain(*parts)
