"""The pre-LayerNorm transformer encoder shared by the SigLIP, CLIP, Whisper and Timer-style encoders,
and the layer-stack machinery (unrolled or scanned, optionally rematerialised) every encoder uses.

One block is `x = x + attn(layer_norm1(x), mask); x = x + mlp(layer_norm2(x))`, the layout of
Hugging Face's `SiglipEncoderLayer` / `CLIPEncoderLayer` / `WhisperEncoderLayer`. Reading order:
activations, the building blocks (`Attention`, `MLP`; Dense and LayerNorm come from
`modrwkv_jax.layers`), `EncoderLayer`, the layer stack (`run_layers`, `stack_layers`,
`unstack_layers`), `Encoder`, and last the conversion of one Hugging Face (torch layout) layer into
our params.

Param tree of one layer (kernels are the torch `[out, in]` weights transposed to `[in, out]`), with
the logical axis names of `modrwkv_jax.sharding`:
```
layer_norm1 {scale, bias} [C]            ("enc_embed",)
self_attn   q_proj|k_proj|v_proj {kernel [C, C] ("enc_embed", "enc_qkv"), bias [C] ("enc_qkv",)}
            out_proj {kernel [C, C] ("enc_qkv", "enc_embed"), bias [C] ("enc_embed",)}
layer_norm2 {scale, bias} [C]            ("enc_embed",)
mlp         fc1 {kernel [C, F] ("enc_embed", "enc_mlp"), bias [F] ("enc_mlp",)}
            fc2 {kernel [F, C] ("enc_mlp", "enc_embed"), bias [C] ("enc_embed",)}
```
`k_proj` has no bias when `key_bias=False` (Whisper). "enc_qkv" names the flattened H·N output of
the attention projections (tensor-parallel).

Two layouts of a stack of n layers, chosen by the config's `scan_layers`:
  unrolled (default)  {"layers_0": layer, ..., "layers_{n-1}": layer}: one traced copy per layer;
  scanned             {"layers": layer with every leaf stacked on a leading axis of size n, logical
                      name "layers"}: `flax.linen.scan`, one traced layer, compile time independent of n.
`stack_layers` / `unstack_layers` convert a param tree between them (the numbers are the same).
`remat` ("none", "block" or a `jax.checkpoint_policies` name) wraps each layer in `nn.remat`.

Numerics: matmuls in `dtype` with float32 accumulation; LayerNorm statistics, attention logits
and softmax in float32; the residual stream is kept in `dtype`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax import layers
from modrwkv_jax.layers import Dense, layer_norm

EMBED = ("enc_embed",)  # the logical name of LayerNorm params and biases of width C
ACT = ("batch", "length", "act_embed")  # the residual stream float[B, L, C]

ACTIVATIONS: dict[str, Callable] = {
    # HF "gelu_pytorch_tanh" / "gelu_new": 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    # HF "gelu": the exact erf form.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    # HF "quick_gelu" (OpenAI CLIP): x·σ(1.702·x).
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}

# Hugging Face `hidden_act` strings -> our activation names.
HF_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
                  "gelu": "gelu", "quick_gelu": "quick_gelu"}


def activation_from_hf(hidden_act: str, source: str = "config.json") -> str:
  """Our activation name for an HF `hidden_act`; raises naming `source` for one we do not support."""
  if hidden_act not in HF_ACTIVATIONS:
    raise ValueError(f"{source}: hidden_act={hidden_act!r} is not supported; expected one of "
                     f"{sorted(HF_ACTIVATIONS)}")
  return HF_ACTIVATIONS[hidden_act]


@flax.struct.dataclass
class EncoderOutput:
  """Everything an encoder computes, like HF's `BaseModelOutputWithPooling(output_hidden_states=True)`.

  last_hidden_state: float[B, L, C] the encoder's feature output (model-specific: after the final
    LayerNorm for SigLIP, before it for CLIP).
  hidden_states: tuple of num_layers + 1 arrays float[B, L, C]: the encoder input, then each layer's output.
  pooler_output: float[B, C] or None (SigLIP attention-pooling head, CLIP post-LN CLS token).
  """
  last_hidden_state: jax.Array
  hidden_states: tuple
  pooler_output: jax.Array | None = None


def attention_bias(mask: jax.Array | None, length: int, causal: bool) -> jax.Array | None:
  """Which keys each query may see, as bool[B or 1, 1, L or 1, S] (True = visible), or None for all.

  mask: bool[B, S] True at real keys; padded keys are hidden from every query (padded queries
  still attend to the real keys, as in Hugging Face, so their outputs are finite but meaningless).
  causal: query t sees keys <= t (self-attention, S = L = length).
  """
  allowed = None
  if mask is not None:
    allowed = mask.astype(bool)[:, None, None, :]
  if causal:
    tri = jnp.tril(jnp.ones((length, length), bool))[None, None]
    allowed = tri if allowed is None else allowed & tri
  return allowed


class Attention(nn.Module):
  """Multi-head attention with biased q/k/v/out projections (HF `*Attention`, torch `MultiheadAttention`).

  Self-attention over x: float[B, L, C] -> float[B, L, C]; with `context` float[B, S, C] the keys and
  values come from the context (attention pooling) and `mask` is bool[B, S]. softmax(q kᵀ / √N) v
  per head, logits and softmax in float32.
  """
  num_heads: int
  key_bias: bool = True
  causal: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, context=None):
    B, L, C = x.shape
    context = x if context is None else context
    S = context.shape[1]
    H = self.num_heads
    N = C // H
    if self.causal and S != L:
      raise ValueError(f"Attention: causal attention needs keys from x itself; got {L} queries and {S} keys")
    proj = lambda name, bias=True: Dense(C, ("enc_embed", "enc_qkv"), bias, self.dtype, name=name)
    q = proj("q_proj")(x).reshape(B, L, H, N)
    k = proj("k_proj", self.key_bias)(context).reshape(B, S, H, N)
    v = proj("v_proj")(context).reshape(B, S, H, N)
    logits = jnp.einsum("bqhn,bkhn->bhqk", q, k, preferred_element_type=jnp.float32) * (N ** -0.5)
    allowed = attention_bias(mask, L, self.causal)
    if allowed is not None:
      # finfo.min instead of -inf: a row with every key hidden (an all-padding item) gives a uniform
      # softmax instead of NaN.
      logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhn->bqhn", weights, v, preferred_element_type=jnp.float32).astype(self.dtype)
    return Dense(C, ("enc_qkv", "enc_embed"), True, self.dtype, name="out_proj")(out.reshape(B, L, C))


class MLP(nn.Module):
  """fc2(act(fc1(x))): float[B, L, C] -> float[B, L, C] with hidden width mlp_dim."""
  mlp_dim: int
  activation: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    C = x.shape[-1]
    h = Dense(self.mlp_dim, ("enc_embed", "enc_mlp"), True, self.dtype, name="fc1")(x)
    h = ACTIVATIONS[self.activation](h.astype(jnp.float32)).astype(self.dtype)
    return Dense(C, ("enc_mlp", "enc_embed"), True, self.dtype, name="fc2")(h)


class EncoderLayer(nn.Module):
  """Pre-LN block: x = x + attn(layer_norm1(x), mask); x = x + mlp(layer_norm2(x))."""
  num_heads: int
  mlp_dim: int
  activation: str = "gelu_tanh"
  eps: float = 1e-6
  key_bias: bool = True
  causal: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """
    Args:
      x: float[B, L, C].
      mask: bool[B, L] True at real tokens (padded keys are excluded from attention), or None.
    Returns:
      float[B, L, C] in `dtype`.
    """
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"EncoderLayer: unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if x.shape[-1] % self.num_heads:
      raise ValueError(f"EncoderLayer: width {x.shape[-1]} is not a multiple of num_heads={self.num_heads}")
    x = x.astype(self.dtype)
    h = layer_norm("layer_norm1", self.eps, self.dtype, EMBED)(x)
    h = Attention(self.num_heads, self.key_bias, self.causal, self.dtype, name="self_attn")(h, mask)
    x = nn.with_logical_constraint(x + h, ACT)
    h = layer_norm("layer_norm2", self.eps, self.dtype, EMBED)(x)
    h = MLP(self.mlp_dim, self.activation, self.dtype, name="mlp")(h)
    return nn.with_logical_constraint(x + h, ACT)


# ---------------------------------------------------------------------------------------------
# Layer stacks: unrolled or scanned, optionally rematerialised.

REMAT_CHOICES = layers.REMAT_CHOICES
check_stack_options = layers.check_stack_options


def _scan_step(layer_cls):
  """layer_cls whose __call__(x, *args) -> x becomes scan's (carry, *args) -> (carry, y), y = the layer output."""
  class ScanStep(layer_cls):
    def __call__(self, x, *args):
      y = layer_cls.__call__(self, x, *args)
      return y, y
  ScanStep.__name__ = ScanStep.__qualname__ = f"Scanned{layer_cls.__name__}"
  return ScanStep


def run_layers(layer_cls, layer_kwargs: Mapping, num_layers: int, x, *args, scan_layers: bool = False,
               remat: str = "none"):
  """Applies num_layers layers `layer_cls(**layer_kwargs)` in sequence; call it inside a compact __call__.

  Args:
    layer_cls: a linen Module class whose __call__(x, *args) returns the new x (same shape).
    x: float[B, L, C] the input of the first layer.
    args: inputs every layer sees unchanged (a mask, a position bias); None is fine.
    scan_layers: False: children `layers_0` ... `layers_{n-1}`; True: one child `layers`, scanned,
      every param with a leading [n] axis named "layers".
    remat: "none", "block" (jax.checkpoint of the whole layer) or a jax.checkpoint_policies name.
  Returns:
    (x after the last layer, hidden_states: tuple of num_layers + 1 arrays, x then each layer's output).
  """
  cls = layers.rematerialise(layer_cls, remat, scan_layers)
  if not scan_layers or num_layers == 0:
    hidden = [x]
    for i in range(num_layers):
      x = cls(**layer_kwargs, name=f"layers_{i}")(x, *args)
      hidden.append(x)
    return x, tuple(hidden)
  stack = nn.scan(_scan_step(cls), variable_axes={"params": 0}, split_rngs={"params": True},
                  in_axes=(nn.broadcast,) * len(args), length=num_layers,
                  metadata_params={nn.PARTITION_NAME: "layers"})
  x0 = x
  x, ys = stack(**layer_kwargs, name="layers")(x, *args)
  return x, (x0,) + tuple(ys[i] for i in range(num_layers))


_LAYER_KEY = re.compile(r"layers_(\d+)$")


def _stack_leaves(trees):
  if all(isinstance(t, np.ndarray) for t in jax.tree.leaves(trees)):
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def stack_layers(params: Mapping) -> dict:
  """Unrolled -> scanned layout: every dict holding `layers_0..layers_{n-1}` gets them as one `layers`
  subtree whose leaves are stacked on a new leading axis [n, ...] (numpy stays numpy, jax stays jax).
  Other keys are kept; a tree already scanned is returned as it is. Pure: `params` is not modified."""
  if not isinstance(params, Mapping):
    return params
  indices = sorted(int(m.group(1)) for k in params if (m := _LAYER_KEY.fullmatch(str(k))))
  out = {k: stack_layers(v) for k, v in params.items() if not _LAYER_KEY.fullmatch(str(k))}
  if indices:
    if indices != list(range(len(indices))):
      raise ValueError(f"stack_layers: layer keys {[f'layers_{i}' for i in indices]} are not layers_0.."
                       f"layers_{len(indices) - 1}")
    if "layers" in out:
      raise ValueError("stack_layers: a tree holds both 'layers' (scanned) and 'layers_i' (unrolled) keys")
    out["layers"] = _stack_leaves([stack_layers(params[f"layers_{i}"]) for i in indices])
  return out


def unstack_layers(params: Mapping) -> dict:
  """Scanned -> unrolled layout: every `layers` subtree with leaves [n, ...] becomes `layers_0..layers_{n-1}`.
  The inverse of `stack_layers`; a tree already unrolled is returned as it is."""
  if not isinstance(params, Mapping):
    return params
  out = {k: unstack_layers(v) for k, v in params.items() if k != "layers"}
  if "layers" in params:
    stacked = params["layers"]
    sizes = {x.shape[0] for x in jax.tree.leaves(stacked)}
    if len(sizes) != 1:
      raise ValueError(f"unstack_layers: the leaves under 'layers' have leading sizes {sorted(sizes)}; "
                       "a scanned stack has one")
    for i in range(sizes.pop()):
      out[f"layers_{i}"] = unstack_layers(jax.tree.map(lambda x, i=i: x[i], stacked))
  return out


def num_stacked_layers(layers: Mapping) -> int:
  """The leading size of a scanned `layers` subtree."""
  return int(jax.tree.leaves(layers)[0].shape[0])


class Encoder(nn.Module):
  """num_layers EncoderLayers (`layers_0` ... or one scanned `layers`), with every hidden state returned."""
  num_layers: int
  num_heads: int
  mlp_dim: int
  activation: str = "gelu_tanh"
  eps: float = 1e-6
  key_bias: bool = True
  causal: bool = False
  dtype: Any = jnp.float32
  scan_layers: bool = False
  remat: str = "none"

  @nn.compact
  def __call__(self, x, mask=None):
    """
    Args:
      x: float[B, L, C] the embedded tokens; mask: bool[B, L] True at real tokens, or None.
    Returns:
      (last float[B, L, C], hidden_states): hidden_states is a tuple of num_layers + 1 arrays
      float[B, L, C], the input then the output of each layer (HF's `output_hidden_states`).
    """
    layer = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, activation=self.activation, eps=self.eps,
                 key_bias=self.key_bias, causal=self.causal, dtype=self.dtype)
    return run_layers(EncoderLayer, layer, self.num_layers, x.astype(self.dtype), mask,
                      scan_layers=self.scan_layers, remat=self.remat)


# ---------------------------------------------------------------------------------------------
# Hugging Face (torch layout) -> params.

# Our submodule -> the HF name under one layer's prefix. SigLIP and CLIP use these names; Whisper
# passes WHISPER_LAYER_NAMES.
HF_LAYER_NAMES: dict[str, str] = {
    "layer_norm1": "layer_norm1", "layer_norm2": "layer_norm2",
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
    "out_proj": "self_attn.out_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2",
}
WHISPER_LAYER_NAMES: dict[str, str] = {
    **HF_LAYER_NAMES, "layer_norm1": "self_attn_layer_norm", "layer_norm2": "final_layer_norm",
    "fc1": "fc1", "fc2": "fc2",
}

# take(name, shape) -> np.ndarray: e.g. `Snapshot.take`, which checks the shape and names the file.
Take = Callable[..., np.ndarray]


def dense_from_hf(take: Take, name: str, in_dim: int, out_dim: int, bias: bool = True) -> dict:
  """{'kernel' [in, out], 'bias' [out]} from the torch Linear `name` ('.weight' [out, in], '.bias')."""
  out = {"kernel": np.ascontiguousarray(take(f"{name}.weight", (out_dim, in_dim)).T)}
  if bias:
    out["bias"] = take(f"{name}.bias", (out_dim,))
  return out


def layer_norm_from_hf(take: Take, name: str, dim: int) -> dict:
  """{'scale', 'bias'} [dim] from the torch LayerNorm `name` ('.weight', '.bias')."""
  return {"scale": take(f"{name}.weight", (dim,)), "bias": take(f"{name}.bias", (dim,))}


def layer_params_from_hf(take: Take, prefix: str, width: int, mlp_dim: int,
                         names: Mapping[str, str] = HF_LAYER_NAMES, key_bias: bool = True) -> dict:
  """The EncoderLayer param subtree of one HF layer.

  Args:
    take: take(name, shape) -> float32 array (`Snapshot.take`), raising on a missing or mis-shaped tensor.
    prefix: the layer's key prefix with its trailing dot, e.g. 'vision_model.encoder.layers.3.'.
    width: C; mlp_dim: F.
    names: our submodule -> HF name (HF_LAYER_NAMES for SigLIP/CLIP, WHISPER_LAYER_NAMES for Whisper).
    key_bias: False when k_proj has no bias (Whisper).
  Returns:
    nested dict of numpy arrays shaped like `EncoderLayer`'s params.
  """
  C, F, p = width, mlp_dim, prefix
  return {
      "layer_norm1": layer_norm_from_hf(take, p + names["layer_norm1"], C),
      "self_attn": {
          "q_proj": dense_from_hf(take, p + names["q_proj"], C, C),
          "k_proj": dense_from_hf(take, p + names["k_proj"], C, C, key_bias),
          "v_proj": dense_from_hf(take, p + names["v_proj"], C, C),
          "out_proj": dense_from_hf(take, p + names["out_proj"], C, C),
      },
      "layer_norm2": layer_norm_from_hf(take, p + names["layer_norm2"], C),
      "mlp": {"fc1": dense_from_hf(take, p + names["fc1"], C, F), "fc2": dense_from_hf(take, p + names["fc2"], F, C)},
  }


def encoder_params_from_hf(take: Take, layer_prefix: str, num_layers: int, width: int, mlp_dim: int,
                           names: Mapping[str, str] = HF_LAYER_NAMES, key_bias: bool = True) -> dict:
  """{'layers_i': layer_params_from_hf(...)} for i < num_layers (the unrolled layout; `stack_layers`
  makes the scanned one); layer_prefix has '{i}', e.g. 'vision_model.encoder.layers.{i}.'."""
  return {f"layers_{i}": layer_params_from_hf(take, layer_prefix.format(i=i), width, mlp_dim, names, key_bias)
          for i in range(num_layers)}


def logical_axes(module: nn.Module, *args, **kwargs) -> dict:
  """The logical axis names of every parameter of `module` (a tree of PartitionSpecs shaped like the
  params), from an abstract init with example inputs `args` (shapes only: nothing is computed)."""
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
  return nn.get_partition_spec(boxed)


def num_params(params) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
