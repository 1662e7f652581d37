"""The systems the side-by-side benchmarks compare (efficiency.py, train_throughput.py), built to one shape.

ModRWKV (this project) against two Transformer MLLMs of the same width D, depth L, vocabulary V and
(to within a few per cent) parameter count, all behind a SigLIP-geometry image encoder (384 px, patch
16: 576 image tokens per image):

  ModRWKV       modrwkv.ModRWKVConfig: SigLIP → vision adapter → RWKV-7 (LoRA ranks of the 0.4B preset
                scaled with D; the 0.4B shape itself at D = 1024, L = 24).
  Transformer   a decoder-only Llama-style LM in Flax (pre-RMSNorm, RoPE, multi-head attention, SwiGLU
                MLP, untied head) with a preallocated KV cache. Its image tokens come from ModRWKV's own
                encoder and adapter (the same params): only the language model differs.
  LLaVA         Hugging Face `LlavaForConditionalGeneration` (PyTorch) from a config of the same sizes: a
                SigLIP vision tower, LLaVA's GELU projector, a Llama text model; random weights.

Matching: one RWKV-7 block holds P_block parameters (4·D² in r, k, v, o; 8·D² in the 4·D channel mix; the
LoRAs and per-channel vectors). A Transformer block holds 4·D² (q, k, v, o) + 3·D·F (SwiGLU) + 2·D (norms),
so F = round((P_block − 4·D² − 2·D) / (3·D)); heads are D / 64, like RWKV-7's head size 64.

Attention of the Flax Transformer, by use:
  prefill   flash-style blocked causal attention: query blocks of 512 attend to key blocks up to the
            diagonal only (online softmax), so memory is O(T) and the causal half is skipped, as
            PyTorch's SDPA CPU kernel does for LLaVA;
  decode    one query against the preallocated cache (positions not yet written masked), head-major
            [B, H, S, N]; the new entries are written by a second jitted call that donates the cache
            (`write_cache`: XLA on the CPU copies a donated buffer that the same program also reads);
  train     `jax.nn.dot_product_attention(is_causal=True)` (XLA's fused attention on the CPU, cuDNN on
            GPUs where it applies).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax.models import modrwkv, rwkv7
from modrwkv_jax.models import projector as proj
from modrwkv_jax.models.encoders import siglip

HEAD_SIZE = 64
ATTN_BLOCK = 512  # query / key block of the blocked prefill attention


# ---------------------------------------------------------------------------------------------
# Shapes.

@dataclasses.dataclass(frozen=True)
class Shape:
  """The sizes every compared system is built to.

  width, layers, vocab: the language model's D, L, V (heads D / 64).
  encoder_width, encoder_layers: the SigLIP tower (MLP 4 × width, heads width / 64); image_size and
    patch_size set the image tokens, (image_size / patch_size)² = 576 for SigLIP2-B/16-384.
  dtype: the compute dtype of every system (the RWKV state and softmax statistics stay float32).
  """
  name: str
  width: int
  layers: int
  vocab: int
  encoder_width: int
  encoder_layers: int
  image_size: int = 384
  patch_size: int = 16
  dtype: str = "float32"

  @property
  def image_tokens(self) -> int:
    return (self.image_size // self.patch_size) ** 2


# The paper's 0.4B model (RWKV-7 0.4B, SigLIP2-B/16-384) and reduced shapes for CPUs, costliest first.
# The reduced ones keep roughly the 0.4B model's ratio of head to body FLOPs (V·D : L·12·D² ≈ 0.2) so
# the vocabulary projection does not drown what differs between the systems. Width matters more than
# depth here: every per-layer cost scales with L alike, while the attention-to-projection ratio (and so
# where the Transformers' quadratic terms take over) goes as T / D; hence D 256 with two layers before
# D 128 with four at about the same run time.
SHAPES = {
    "0.4B": Shape("0.4B", 1024, 24, 65536, 768, 12, dtype="bfloat16"),
    "cpu-d512": Shape("cpu-d512", 512, 8, 8192, 384, 2),
    "cpu-d384": Shape("cpu-d384", 384, 6, 4096, 256, 2),
    "cpu-d256": Shape("cpu-d256", 256, 4, 2048, 256, 2),
    "cpu-d256-l2": Shape("cpu-d256-l2", 256, 2, 1024, 256, 2),
    "cpu-d128": Shape("cpu-d128", 128, 4, 1024, 128, 2),
}


def _scaled_rank(rank: int, width: int) -> int:
  """A LoRA rank of the 0.4B preset (D = 1024) scaled to `width`, a multiple of 16, at least 16."""
  return max(16, 16 * round(rank * width / 1024 / 16))


def modrwkv_config(shape: Shape, max_length: int, *, wkv_impl: str = "auto", scan_layers: bool = False,
                   remat: str = "none") -> modrwkv.ModRWKVConfig:
  """ModRWKV of `shape`: SigLIP (fixed resolution) → vision adapter (m = 2) → RWKV-7."""
  base = rwkv7.preset("0.4B")
  lm = base.replace(vocab_size=shape.vocab, n_layer=shape.layers, n_embd=shape.width, dim_ffn=4 * shape.width,
                    dim_w=_scaled_rank(base.dim_w, shape.width), dim_a=_scaled_rank(base.dim_a, shape.width),
                    dim_v=_scaled_rank(base.dim_v, shape.width), dim_g=_scaled_rank(base.dim_g, shape.width),
                    dtype=shape.dtype, wkv_impl=wkv_impl, scan_layers=scan_layers, remat=remat)
  enc = siglip.SiglipConfig(hidden_size=shape.encoder_width, intermediate_size=4 * shape.encoder_width,
                            num_layers=shape.encoder_layers, num_heads=shape.encoder_width // HEAD_SIZE,
                            patch_size=shape.patch_size, image_size=shape.image_size, dtype=shape.dtype)
  image = modrwkv.ModalityConfig("siglip", enc, proj.ProjectorConfig("vision", enc.hidden_size, lm.n_embd,
                                                                     None, 2))
  return modrwkv.ModRWKVConfig(lm, (("image", image),), max_length)


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def rwkv_block_params(config: rwkv7.RWKV7Config) -> float:
  """Parameters per RWKV-7 block, averaged over the layers (layer 0 has no value-residual LoRA)."""
  shapes = jax.eval_shape(lambda: rwkv7.init_params(config, jax.random.key(0)))
  outside = sum(count(shapes[k]) for k in ("emb", "head", "ln0", "ln_out"))
  return (count(shapes) - outside) / config.n_layer


# ---------------------------------------------------------------------------------------------
# The matched Transformer (Flax).

@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int
  n_embd: int
  n_layer: int
  mlp_dim: int
  dtype: str = "float32"
  rope_theta: float = 10000.0
  remat: bool = False

  @property
  def n_head(self) -> int:
    return self.n_embd // HEAD_SIZE


def transformer_config(config: modrwkv.ModRWKVConfig, *, remat: bool = False) -> TransformerConfig:
  """The decoder-only Transformer matched to config.rwkv: same D, L, V, dtype; F from the block budget."""
  lm = config.rwkv
  D = lm.n_embd
  mlp = round((rwkv_block_params(lm) - 4 * D * D - 2 * D) / (3 * D))
  return TransformerConfig(lm.vocab_size, D, lm.n_layer, mlp, lm.dtype, remat=remat)


def _rope(x, positions, theta: float):
  """Rotary embedding (rotate-half form) of x float[B, T, H, N] at int positions [T]."""
  N = x.shape[-1]
  freq = theta ** (-jnp.arange(0, N, 2, dtype=jnp.float32) / N)  # [N/2]
  angle = positions.astype(jnp.float32)[:, None] * freq[None]  # [T, N/2]
  cos, sin = jnp.cos(angle)[None, :, None], jnp.sin(angle)[None, :, None]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def blocked_causal_attention(q, k, v, block: int = ATTN_BLOCK):
  """Causal softmax attention in blocks, without the T×T matrix (flash-attention's online softmax).

  Query block i attends to key blocks 0..i (a loop with a traced trip count: the blocks above the
  diagonal are never computed); only the diagonal block needs the causal mask.
  Args:
    q, k, v: float[B, T, H, N] with T a multiple of `block` (or T < block: one block).
  Returns:
    float[B, T, H, N] in q.dtype.
  """
  B, T, H, N = q.shape
  block = min(block, T)
  if T % block:
    raise ValueError(f"blocked_causal_attention: T = {T} is not a multiple of the block {block}")
  nb = T // block
  heads_first = lambda x: jnp.transpose(x.reshape(B, nb, block, H, N), (1, 0, 3, 2, 4))  # [nb, B, H, blk, N]
  qb, kb, vb = heads_first(q * (N ** -0.5)), heads_first(k), heads_first(v)
  diagonal = jnp.tril(jnp.ones((block, block), bool))

  def query_block(i):
    qi = qb[i]

    def key_block(j, carry):
      m, l, acc = carry  # running max, normaliser, numerator: float32 [B, H, q], [B, H, q], [B, H, q, N]
      s = jnp.einsum("bhqn,bhkn->bhqk", qi, kb[j], preferred_element_type=jnp.float32)
      s = jnp.where((j < i) | diagonal, s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[..., None])
      scale = jnp.exp(m - m_new)
      acc = acc * scale[..., None] + jnp.einsum("bhqk,bhkn->bhqn", p.astype(v.dtype), vb[j],
                                                preferred_element_type=jnp.float32)
      return m_new, l * scale + p.sum(-1), acc

    init = (jnp.full((B, H, block), -jnp.inf, jnp.float32), jnp.zeros((B, H, block), jnp.float32),
            jnp.zeros((B, H, block, N), jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, i + 1, key_block, init)
    return (acc / l[..., None]).astype(q.dtype)  # [B, H, q, N]

  out = jax.lax.map(query_block, jnp.arange(nb))  # [nb, B, H, q, N]
  return jnp.transpose(out, (1, 0, 3, 2, 4)).reshape(B, T, H, N)


def cached_attention(q, k, v, k_cache, v_cache, position):
  """The new token's attention over the cached positions 0..position−1 and itself.

  q, k, v: float[B, 1, H, N] of the new token; caches float[B, H, S, N] (head-major: both products are
  plain batched matmuls; a [B, S, H, N] cache makes XLA transpose it every step, 10× slower on a CPU).
  The cache is only read here; `write_cache` stores the new entries afterwards (module docstring).
  Returns float[B, 1, H, N].
  """
  N = q.shape[-1]
  heads = lambda x: jnp.swapaxes(x, 1, 2)  # [B, H, 1, N]
  q = heads(q) * (N ** -0.5)
  s = jnp.einsum("bhqn,bhkn->bhqk", q, k_cache, preferred_element_type=jnp.float32)
  s = jnp.where(jnp.arange(k_cache.shape[2]) < position, s, -jnp.inf)  # [B, H, 1, S]
  s_new = jnp.einsum("bhqn,bhqn->bhq", q, heads(k), preferred_element_type=jnp.float32)[..., None]
  m = jnp.maximum(s.max(-1, keepdims=True), s_new)
  p, p_new = jnp.exp(s - m), jnp.exp(s_new - m)
  out = jnp.einsum("bhqk,bhkn->bhqn", p.astype(v_cache.dtype), v_cache, preferred_element_type=jnp.float32)
  out = (out + p_new * heads(v).astype(jnp.float32)) / (p.sum(-1, keepdims=True) + p_new)
  return jnp.swapaxes(out.astype(v.dtype), 1, 2)


class Block(nn.Module):
  """x + attn(norm(x)); x + SwiGLU(norm(x)). The attention by `mode` (module docstring)."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, mode: str, cache=None, position=None):
    """
    Args:
      x: float[B, T, D].
      mode: "prefill" | "train" (positions 0..T−1) or "decode" (T = 1 at `position`).
      cache: decode only: (k, v) float[B, H, S, N] of this layer.
    Returns:
      (x float[B, T, D], (k, v) float[B, T, H, N]: the keys and values of these positions).
    """
    cfg = self.config
    dt = jnp.dtype(cfg.dtype)
    B, T, D = x.shape
    H, N = cfg.n_head, HEAD_SIZE
    dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=dt, name=name)
    h = nn.RMSNorm(dtype=dt, name="attn_norm")(x)
    q, k, v = (dense(D, n)(h).reshape(B, T, H, N) for n in ("q", "k", "v"))
    positions = jnp.arange(T) if mode != "decode" else position[None]
    q, k = _rope(q, positions, cfg.rope_theta), _rope(k, positions, cfg.rope_theta)
    if mode == "decode":
      a, kv = cached_attention(q, k, v, *cache, position), (k, v)
    elif mode == "prefill":
      a, kv = blocked_causal_attention(q, k, v), (k, v)
    else:
      a, kv = jax.nn.dot_product_attention(q, k, v, is_causal=True), (k, v)
    x = x + dense(D, "o")(a.reshape(B, T, D))
    h = nn.RMSNorm(dtype=dt, name="mlp_norm")(x)
    h = nn.silu(dense(cfg.mlp_dim, "gate")(h)) * dense(cfg.mlp_dim, "up")(h)
    return x + dense(D, "down")(h), kv


class Transformer(nn.Module):
  """emb -> blocks -> norm -> head (untied), over embeddings (text, or image tokens spliced in)."""
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.emb = nn.Embed(cfg.vocab_size, cfg.n_embd, dtype=jnp.dtype(cfg.dtype))
    block = nn.remat(Block, static_argnums=(2,)) if cfg.remat else Block
    self.blocks = [block(cfg, name=f"blocks_{i}") for i in range(cfg.n_layer)]
    self.norm = nn.RMSNorm(dtype=jnp.dtype(cfg.dtype))
    self.head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=jnp.dtype(cfg.dtype))

  def embed(self, tokens):
    return self.emb(tokens)

  def logits(self, x):
    return self.head(self.norm(x)).astype(jnp.float32)

  def init_all(self, tokens):
    """Touches every submodule (for init)."""
    return self.logits(self(self.embed(tokens))[0])

  def __call__(self, x, mode: str = "train", cache=None, position=None):
    """x float[B, T, D] -> (final hidden float[B, T, D] before the norm, per-layer (k, v) [B, T, H, N]).

    cache: decode only, a list of per-layer (k, v) float[B, H, S, N]."""
    x = x.astype(jnp.dtype(self.config.dtype))
    kvs = []
    for i, block in enumerate(self.blocks):
      x, kv = block(x, mode, None if cache is None else cache[i], position)
      kvs.append(kv)
    return x, kvs


def init_transformer(config: TransformerConfig, key) -> dict:
  """Random params (Flax's default initialisers) as a plain nested dict."""
  init = lambda k: Transformer(config).init(k, jnp.zeros((1, 8), jnp.int32), method=Transformer.init_all)["params"]
  return jax.jit(init)(key)


def transformer_embed(config: TransformerConfig, params, tokens):
  """int[B, T] -> float[B, T, D]."""
  return Transformer(config).apply({"params": params}, tokens, method=Transformer.embed)


def transformer_logits(config: TransformerConfig, params, x):
  """Final hidden float[B, T, D] -> logits float32[B, T, V]."""
  return Transformer(config).apply({"params": params}, x, method=Transformer.logits)


def transformer_prefill(config: TransformerConfig, params, x, cache_length: int):
  """Prompt embeddings float[B, T, D] -> (last-position logits float32[B, V], cache): the cache is one
  (k, v) pair per layer, each float[B, H, cache_length, N] holding positions 0..T−1 (separate buffers,
  so a decode step donating them updates each in place)."""
  h, kvs = Transformer(config).apply({"params": params}, x, "prefill")
  T = x.shape[1]
  pad = lambda a: jnp.pad(jnp.swapaxes(a, 1, 2), ((0, 0), (0, 0), (0, cache_length - T), (0, 0)))
  cache = [(pad(k), pad(v)) for k, v in kvs]
  return transformer_logits(config, params, h[:, -1:])[:, 0], cache


def transformer_decode(config: TransformerConfig, params, token, cache, position):
  """One token per row: token int[B] at int32[] `position`, reading the cache (positions < position).

  Returns (logits float32[B, V], entries): entries, one (k, v) float[B, 1, H, N] per layer, go into the
  cache with `write_cache`."""
  model = Transformer(config)
  x = model.apply({"params": params}, token[:, None], method=Transformer.embed)
  h, entries = model.apply({"params": params}, x, "decode", cache, position)
  return transformer_logits(config, params, h)[:, 0], entries


def write_cache(cache, entries, position):
  """Stores each layer's new (k, v) [B, 1, H, N] at `position` of its cache [B, H, S, N]. Jitted apart
  from the step with the cache donated, it updates in place: XLA on the CPU copies a donated buffer that
  the same program also reads (the attention), a full cache copy per token, so a decode step is
  `transformer_decode` (reads) then `write_cache` (writes), two dispatches."""
  put = lambda c, x: jax.lax.dynamic_update_slice_in_dim(c, jnp.swapaxes(x, 1, 2).astype(c.dtype), position, axis=2)
  return [(put(kc, k), put(vc, v)) for (kc, vc), (k, v) in zip(cache, entries)]


def transformer_forward(config: TransformerConfig, params, x):
  """Training forward: embeddings float[B, T, D] -> logits float32[B, T, V] (full causal attention)."""
  h, _ = Transformer(config).apply({"params": params}, x, "train")
  return transformer_logits(config, params, h)


def transformer_block_params(config: TransformerConfig) -> int:
  D = config.n_embd
  return 4 * D * D + 3 * D * config.mlp_dim + 2 * D


# ---------------------------------------------------------------------------------------------
# Image + text inputs (prefix layout: the image tokens, then the text; LLaVA's and the paper's).

def modrwkv_batch(config: modrwkv.ModRWKVConfig, context: int, batch_size: int = 1, seed: int = 0) -> dict:
  """A ModRWKV batch of `context` positions: one image (its tokens first), then random text ids."""
  enc = config.modality("image").encoder_config
  L = enc.num_positions
  if context <= L:
    raise ValueError(f"context {context} must exceed the {L} image tokens")
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, config.rwkv.vocab_size - 1, size=(batch_size, context)).astype(np.int32)
  tokens[:, :L] = 0
  pos = np.full((batch_size, context), -1, np.int32)
  pos[:, :L] = np.arange(L)
  image = rng.uniform(-1, 1, size=(batch_size, 1, enc.image_size, enc.image_size, 3)).astype(np.float32)
  return {"tokens": tokens, "image": image, "image_pos": pos, "mask": np.ones((batch_size, context), bool)}


def image_tokens(config: modrwkv.ModRWKVConfig, params, batch) -> jax.Array:
  """The batch's image through ModRWKV's encoder and adapter: float32[B, L_img, D]."""
  images = jnp.asarray(batch["image"])
  B = images.shape[0]
  tok, _ = modrwkv.encode_items(config, params, "image", images.reshape(B, *images.shape[2:]))
  return tok


def transformer_inputs(mconfig: modrwkv.ModRWKVConfig, tconfig: TransformerConfig, mparams, tparams, batch):
  """The Transformer's input embeddings of a ModRWKV batch: ModRWKV's image tokens, then the text
  embedded by the Transformer's own table: float32[B, T, D]."""
  img = image_tokens(mconfig, mparams, batch)
  text = transformer_embed(tconfig, tparams, jnp.asarray(batch["tokens"])[:, img.shape[1]:])
  return jnp.concatenate([img, text.astype(jnp.float32)], axis=1)


# ---------------------------------------------------------------------------------------------
# Hugging Face LLaVA (PyTorch).

def llava_config(shape: Shape, tconfig: TransformerConfig, max_positions: int):
  """A LlavaConfig of the same sizes: SigLIP vision tower (no pooling head, like ModRWKV's), Llama text
  model (D, L, V, F of `tconfig`). The image token id is V − 1 (text ids stay below it)."""
  from transformers import LlamaConfig, LlavaConfig, SiglipVisionConfig  # pylint: disable=g-import-not-at-top
  vision = SiglipVisionConfig(hidden_size=shape.encoder_width, intermediate_size=4 * shape.encoder_width,
                              num_hidden_layers=shape.encoder_layers,
                              num_attention_heads=shape.encoder_width // HEAD_SIZE, image_size=shape.image_size,
                              patch_size=shape.patch_size, vision_use_head=False)  # LLaVA reads the tokens
  text = LlamaConfig(vocab_size=tconfig.vocab_size, hidden_size=tconfig.n_embd, intermediate_size=tconfig.mlp_dim,
                     num_hidden_layers=tconfig.n_layer, num_attention_heads=tconfig.n_head,
                     num_key_value_heads=tconfig.n_head, max_position_embeddings=max_positions,
                     rope_theta=tconfig.rope_theta, tie_word_embeddings=False)
  return LlavaConfig(vision_config=vision, text_config=text, image_token_index=tconfig.vocab_size - 1,
                     image_seq_length=shape.image_tokens, vision_feature_select_strategy="full",
                     vision_feature_layer=-1, tie_word_embeddings=False)


def llava_model(shape: Shape, tconfig: TransformerConfig, max_positions: int, seed: int = 0):
  """LlavaForConditionalGeneration with random weights, eval mode, in the shape's dtype, SDPA attention."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import LlavaForConditionalGeneration  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  config = llava_config(shape, tconfig, max_positions)
  config._attn_implementation = "sdpa"  # pylint: disable=protected-access
  model = LlavaForConditionalGeneration(config).to({"float32": torch.float32, "bfloat16": torch.bfloat16}[shape.dtype])
  return model.eval()


def llava_inputs(batch: dict, image_token: int):
  """(input_ids int64[B, T], pixel_values float[B, 3, H, W]) of a ModRWKV batch."""
  import torch  # pylint: disable=g-import-not-at-top
  ids = np.where(batch["image_pos"] >= 0, image_token, batch["tokens"]).astype(np.int64)
  pixels = np.transpose(batch["image"][:, 0], (0, 3, 1, 2))
  return torch.from_numpy(ids), torch.from_numpy(np.ascontiguousarray(pixels))
