"""The CLIP vision tower in Flax linen, loaded from local Hugging Face snapshots.

CLIP ViT (docs/architecture.md, the ModRWKV ablation `openai/clip-vit-large-patch14-336`): a bias-free stride-p
patch convolution, a learned class token prepended, learned position embeddings for 1 + (H/p)²
positions, `pre_layrnorm` (sic, the HF name; ours is `pre_layernorm`), pre-LN encoder blocks with a
quick-GELU MLP (x·σ(1.702x)), and a `post_layernorm` that HF applies to the CLS token only (the
pooler output).

The features ModRWKV uses are the final layer's output **including CLS, before post-LN** (HF's
`last_hidden_state`, 577 × 1024 for clip-vit-large-patch14-336): `forward(..., layer=-1)`. LLaVA uses
the penultimate layer without CLS: `forward(..., layer=-2, drop_cls=True)`; layers after the one
asked for are not computed. `forward_all` returns every hidden state (HF `output_hidden_states`:
hidden_states[0] is the embedding after pre_layrnorm).

Reading order: config and presets, the model, the pure-function surface (with the interface every
encoder shares: `encode`, `num_tokens`, `check_inputs`), `load_hf`.
Pixels are channels-last float[B, H, W, 3]; HF's `pixel_values` [B, 3, H, W] need a transpose.

Params and their logical axes (modrwkv_jax.sharding):
```
patch_embedding {kernel [p·p·3, D] ("enc_patch", "enc_embed")}      (bias-free; siglip.patch_embedding)
class_embedding [D] ("enc_embed",)
position_embedding {embedding [1 + P, D] ("enc_positions", "enc_embed")}
pre_layernorm, post_layernorm {scale, bias} [D] ("enc_embed",)
encoder     layers_i (or one scanned `layers`, leading axis "layers"): transformer.EncoderLayer
```
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax.layers import layer_norm
from modrwkv_jax.models.encoders import hf_snapshot, transformer
from modrwkv_jax.models.encoders.siglip import PositionEmbedding, _square, patch_embedding, patchify
from modrwkv_jax.models.encoders.transformer import (EMBED, Encoder, EncoderOutput, Take, activation_from_hf,
                                                     encoder_params_from_hf, layer_norm_from_hf)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Sizes of a CLIP vision tower. Frozen and hashable: a static jit argument.

  scan_layers: params of the encoder layers stacked under one scanned `layers` (see transformer.py).
  remat: "none", "block" or a jax.checkpoint_policies name, applied to each encoder layer.
  """
  hidden_size: int = 1024
  intermediate_size: int = 4096
  num_layers: int = 24
  num_heads: int = 16
  patch_size: int = 14
  image_size: int = 336
  num_channels: int = 3
  activation: str = "quick_gelu"
  eps: float = 1e-5
  dtype: str = "float32"
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    for field in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "patch_size", "image_size",
                  "num_channels"):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"CLIPConfig.{field} must be a positive int, got {value!r}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"CLIPConfig: hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
    if self.image_size < self.patch_size:
      raise ValueError(f"CLIPConfig: image_size={self.image_size} is smaller than patch_size={self.patch_size}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"CLIPConfig.dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
    transformer.check_stack_options("CLIPConfig", self.scan_layers, self.remat)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_positions(self) -> int:
    """1 (CLS) + num_patches."""
    return self.num_patches + 1

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kwargs) -> CLIPConfig:
    return dataclasses.replace(self, **kwargs)


PRESETS: dict[str, CLIPConfig] = {
    # The ModRWKV CLIP ablation: 577 tokens × 1024.
    "clip-vit-large-patch14-336": CLIPConfig(),
    "clip-vit-large-patch14": CLIPConfig(image_size=224),
    "clip-vit-base-patch16": CLIPConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12,
                                        patch_size=16, image_size=224),
}


def preset(name: str, **overrides) -> CLIPConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown CLIP preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


# ---------------------------------------------------------------------------------------------
# The model.


class CLIPVisionTransformer(nn.Module):
  """[CLS; patches] + positions -> pre_layernorm -> encoder; pooler = post_layernorm(CLS).

  depth: run only the first `depth` encoder layers (None: all); the later layers' params go unused.
  """
  config: CLIPConfig
  depth: int | None = None

  @nn.compact
  def __call__(self, pixels) -> EncoderOutput:
    """
    Args:
      pixels: float[B, H, W, C], H = W = image_size.
    Returns:
      EncoderOutput(last_hidden_state float[B, 1 + P, D] (final layer, incl. CLS, before post-LN),
      hidden_states (num_layers + 1) × float[B, 1 + P, D], pooler_output float[B, D]).
    """
    cfg = self.config
    D, cd = cfg.hidden_size, cfg.compute_dtype
    B = pixels.shape[0]
    x = patch_embedding(D, False, cd)(patchify(pixels, cfg.patch_size))
    cls = self.param("class_embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), EMBED), (D,))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(jnp.float32), (B, 1, D)), x], axis=1)
    x = x + PositionEmbedding(cfg.num_positions, D, name="position_embedding")()[None].astype(jnp.float32)
    x = layer_norm("pre_layernorm", cfg.eps, cd, EMBED)(x.astype(cd))
    depth = cfg.num_layers if self.depth is None else self.depth
    x, hidden_states = Encoder(depth, cfg.num_heads, cfg.intermediate_size, cfg.activation, cfg.eps,
                               dtype=cd, scan_layers=cfg.scan_layers, remat=cfg.remat, name="encoder")(x)
    pooled = layer_norm("post_layernorm", cfg.eps, cd, EMBED)(x[:, 0])
    return EncoderOutput(x, hidden_states, pooled)


# ---------------------------------------------------------------------------------------------
# Pure-function surface.


def _dummy_pixels(config: CLIPConfig):
  s = config.image_size
  return jnp.zeros((1, s, s, config.num_channels), jnp.float32)


def _init_boxed(config: CLIPConfig, key):
  return CLIPVisionTransformer(config).init(key, _dummy_pixels(config))["params"]


def init_params(config: CLIPConfig, key: jax.Array) -> dict:
  """Random parameters as a plain float32 nested dict."""
  return nn.meta.unbox(jax.jit(_init_boxed, static_argnums=0)(config, key))


def param_logical_axes(config: CLIPConfig) -> dict:
  """The logical axis names of every parameter (a tree of PartitionSpecs shaped like the params)."""
  return transformer.logical_axes(CLIPVisionTransformer(config), _dummy_pixels(config))


def _check_shapes(config: CLIPConfig, pixels, where: str = "clip.forward") -> None:
  shape, s, c = tuple(pixels.shape), config.image_size, config.num_channels
  if len(shape) == 4 and shape[1] == c and shape[-1] != c:
    raise ValueError(f"{where}: pixels have shape {shape}, which looks channels-first (HF pixel_values); "
                     f"expected channels-last float[B, {s}, {s}, {c}]: transpose with x.transpose(0, 2, 3, 1)")
  if len(shape) != 4 or shape[1:] != (s, s, c):
    raise ValueError(f"{where}: pixels have shape {shape}; this checkpoint expects float[B, {s}, {s}, {c}] "
                     f"(image_size={s}); preprocess with modrwkv_jax.data.image")


def check_inputs(config: CLIPConfig, pixels, mask=None) -> None:
  """The boundary check on concrete (numpy) inputs: raises ValueError naming the shape when `pixels`
  do not fit `config`, or the image holding a non-finite value. `mask` is ignored (images have none)."""
  del mask
  _check_shapes(config, pixels, "clip.check_inputs")
  finite = np.isfinite(np.asarray(pixels)).reshape(pixels.shape[0], -1).all(-1)
  if not finite.all():
    raise ValueError(f"clip.check_inputs: image {int(np.argmin(finite))} holds NaN or inf pixels")


def _layer_index(config: CLIPConfig, layer: int) -> int:
  n = config.num_layers
  index = layer + n + 1 if layer < 0 else layer
  if not 0 <= index <= n:
    raise ValueError(f"clip.forward: layer={layer} is outside the {n + 1} hidden states [-{n + 1}, {n}]")
  return index


def forward_all(config: CLIPConfig, params: Mapping, pixels) -> EncoderOutput:
  """Every output of the tower (see `CLIPVisionTransformer`); pixels float[B, H, W, 3] channels-last."""
  _check_shapes(config, pixels)
  return CLIPVisionTransformer(config).apply({"params": params}, pixels)


def forward(config: CLIPConfig, params: Mapping, pixels, *, layer: int = -1, drop_cls: bool = False):
  """The features of one layer: float[B, 1 + P, D] (or [B, P, D] with drop_cls).

  Args:
    config: static under jit.
    pixels: float[B, H, W, 3] channels-last, H = W = image_size.
    layer: which hidden state, HF `hidden_states` indexing: -1 (default) = final layer incl. CLS before
      post-LN (ModRWKV's CLIP features, HF `last_hidden_state`), -2 = penultimate (LLaVA), 0 = the
      embeddings after pre_layrnorm. Layers after it are not computed.
    drop_cls: drop the class token (LLaVA's "patch" feature selection).
  """
  index = _layer_index(config, layer)
  _check_shapes(config, pixels)
  # A model cut after `index` layers: the params of later layers and of post_layernorm go unused
  # (a scanned stack is sliced to its first `index` layers).
  if config.scan_layers and index < config.num_layers:
    encoder = dict(params["encoder"])
    encoder["layers"] = jax.tree.map(lambda x: x[:index], encoder["layers"])
    params = {**params, "encoder": encoder}
  out = CLIPVisionTransformer(config, depth=index).apply({"params": params}, pixels)
  x = out.last_hidden_state
  return x[:, 1:] if drop_cls else x


def encode(config: CLIPConfig, params: Mapping, pixels, mask=None, *, layer: int = -1, drop_cls: bool = False):
  """The encoder interface shared by every encoder module: (features float[N, L, D], mask bool[N, L]).

  pixels float[N, H, W, 3]; `mask` is ignored (every token of an image is real); options as in `forward`.
  """
  del mask
  feats = forward(config, params, pixels, layer=layer, drop_cls=drop_cls)
  return feats, jnp.ones(feats.shape[:2], bool)


def num_tokens(config: CLIPConfig, n: int, *, layer: int = -1, drop_cls: bool = False) -> int:
  """Features of one image (n, its pixel count, is ignored): (image_size / patch_size)², plus the
  class token unless drop_cls."""
  del n
  _layer_index(config, layer)
  return config.num_patches + (0 if drop_cls else 1)


# ---------------------------------------------------------------------------------------------
# Hugging Face snapshots.

MODEL_TYPES = ("clip", "clip_vision_model")

# CLIPVisionConfig defaults for fields a config.json may omit.
_HF_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5}


def config_from_hf(hf: Mapping, source: str = "config.json", *, dtype: str = "float32") -> CLIPConfig:
  """A CLIPConfig from a parsed config.json (CLIPModel or CLIPVisionModel[WithProjection])."""
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{source}: model_type {model_type!r} is not a CLIP vision checkpoint; clip.load_hf reads "
                     f"{list(MODEL_TYPES)} (use siglip.load_hf for 'siglip' / 'siglip2')")
  v = {**_HF_DEFAULTS, **hf_snapshot.sub_config(hf, "vision_config", source=source)}
  return CLIPConfig(hidden_size=int(v["hidden_size"]), intermediate_size=int(v["intermediate_size"]),
                    num_layers=int(v["num_hidden_layers"]), num_heads=int(v["num_attention_heads"]),
                    patch_size=_square(v["patch_size"], "patch_size", source),
                    image_size=_square(v["image_size"], "image_size", source), num_channels=int(v["num_channels"]),
                    activation=activation_from_hf(v["hidden_act"], source), eps=float(v["layer_norm_eps"]), dtype=dtype)


def params_from_hf(config: CLIPConfig, take: Take) -> dict:
  """Our params (numpy, the layout `config.scan_layers` asks for) from HF tensors; take(name, shape) reads
  a name relative to the vision prefix."""
  D, F, p, C = config.hidden_size, config.intermediate_size, config.patch_size, config.num_channels
  conv = take("embeddings.patch_embedding.weight", (D, C, p, p))  # Conv2d [D, C, p, p], no bias
  params = {
      "patch_embedding": {"kernel": np.ascontiguousarray(conv.transpose(2, 3, 1, 0).reshape(p * p * C, D))},
      "class_embedding": take("embeddings.class_embedding", (D,)),
      "position_embedding": {"embedding": take("embeddings.position_embedding.weight", (config.num_positions, D))},
      "pre_layernorm": layer_norm_from_hf(take, "pre_layrnorm", D),
      "encoder": encoder_params_from_hf(take, "encoder.layers.{i}.", config.num_layers, D, F),
      "post_layernorm": layer_norm_from_hf(take, "post_layernorm", D),
  }
  return transformer.stack_layers(params) if config.scan_layers else params


def load_hf(path: str | os.PathLike, *, dtype: str = "float32", scan_layers: bool = False, remat: str = "none",
            param_dtype=jnp.float32, mesh=None) -> tuple[CLIPConfig, dict]:
  """Reads a local HF snapshot folder of a CLIP vision tower. No torch, no network.

  Accepts `CLIPVisionModel` / `CLIPVisionModelWithProjection` (keys `embeddings...` or, as saved by
  transformers 4.x, `vision_model.embeddings...`) and full `CLIPModel` checkpoints (the text tower
  and projections are ignored), fp32/bf16/fp16, one or several safetensors files. The params are built
  from the file's tensors alone (the random initialiser never runs).
  Args:
    dtype, scan_layers, remat: the returned config's compute dtype and layer-stack settings
      (scan_layers=True: layers stacked under one `layers`, transformer.stack_layers).
    param_dtype: dtype of the returned parameters.
    mesh: None, or a ("data", "fsdp", "tensor") Mesh: each parameter is placed with its NamedSharding
      (sharding.logical_to_mesh of `param_logical_axes(config)`) as it is converted.
  Returns:
    (CLIPConfig, params nested dict of jax arrays in `param_dtype`).
  """
  snap = hf_snapshot.Snapshot(path)
  config = config_from_hf(snap.config, os.path.join(snap.path, "config.json"), dtype=dtype).replace(
      scan_layers=scan_layers, remat=remat)
  prefix = snap.find_prefix(["vision_model.", ""], "embeddings.patch_embedding.weight")
  params = params_from_hf(config, lambda name, shape=None: snap.take(prefix + name, shape))
  snap.check_all_used(prefix, ignore=("position_ids", "visual_projection.", "text_model.", "text_projection.",
                                      "logit_scale"))
  axes = param_logical_axes(config) if mesh is not None else None
  return config, hf_snapshot.to_device(params, param_dtype, mesh, axes)
