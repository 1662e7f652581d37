"""`Chat`: multimodal multi-turn conversation with a ModRWKV model, for notebooks and scripts.

    chat = Chat(config, params, preprocess={"image": lambda path: image.preprocess(path, proc)})
    chat.ask("What is in the picture?", image="cat.jpg")   # -> "A cat sitting on a sofa."
    chat.ask("What colour is it?")                          # continues from the carried RNN state

Each turn feeds `[modality tokens] ++ "\\x16User: {text}\\x17\\x16Assistant:"` (docs/architecture.md) on top of
the state left by the previous turn, generates until token 24 ("\\x17"), and strips one leading
space. Earlier images are never re-encoded: their information lives in the constant-size state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax import generate as gen
from modrwkv_jax.data.image import NaFlexPatches
from modrwkv_jax.models import modrwkv, rwkv7
from modrwkv_jax.tokenizer import TURN_END_ID, world_tokenizer


def user_turn(text: str) -> str:
  """The inference prompt of one user turn (docs/architecture.md)."""
  return f"\x16User: {text}\x17\x16Assistant:"


def user_turn_ids(tokenizer, text: str) -> list[int]:
  """`user_turn` tokenized with training's token boundaries: tok("\x16User: {q}\x17") ++ tok("\x16Assistant:")."""
  return tokenizer.encode(f"\x16User: {text}\x17") + tokenizer.encode("\x16Assistant:")


def modality_tokens(config: modrwkv.ModRWKVConfig, params: Mapping, name: str, inputs, mask=None,
                    spatial_shape=None):
  """One item's real modality tokens: float32[L_real, D] (inputs without a batch axis), checked first.

  spatial_shape: (rows, cols) of a SigLIP2 NaFlex image's real patches (inputs are then its patches
  float[max_num_patches, p·p·3] and mask their bool[max_num_patches] mask), else None.
  """
  shapes = None if spatial_shape is None else np.asarray([spatial_shape], np.int32)
  modrwkv.check_items(config, name, np.asarray(inputs, np.float32)[None],
                      None if mask is None else np.asarray(mask, bool)[None], shapes)
  x = jnp.asarray(inputs, jnp.float32)[None]
  m = None if mask is None else jnp.asarray(mask, bool)[None]
  tokens, token_mask = _encode(config, params, name, x, m, None if shapes is None else jnp.asarray(shapes))
  return tokens[0][np.asarray(token_mask[0])]


_encode = jax.jit(modrwkv.encode_items, static_argnums=(0, 2))


class Chat:
  """A conversation: the RNN state plus the settings of every answer.

  Args:
    config, params: the ModRWKV model (`modrwkv.load` / `init_params`).
    preprocess: per modality, a callable from what the user passes (path, PIL image, waveform, ...)
      to the encoder input. Without one, arrays are passed through. It returns, per modality:
        image: float32[H, W, 3] pixels (SigLIP, CLIP: `data.image.preprocess`), or the
          `data.image.NaFlexPatches` that `data.image.preprocess` gives for a SigLIP2 NaFlex processor;
        audio: Whisper log-mel float32[F, n_mels] with its frame mask bool[F] as a tuple (features,
          mask) (`data.audio.whisper_features` of one clip, row 0), or for WavLM the normalised samples
          float32[S] with their mask bool[S] (`data.audio.wav2vec2_inputs`);
        series: float32[L] (or [L, C]) raw values, optionally with a bool[L] mask; the encoder
          normalises them itself (RevIN).
    sampling: keyword arguments of `generate.generate` (temperature, top_p, top_k, penalties,
      max_new_tokens, seed); greedy with at most 500 new tokens by default, as in the paper.
  """

  def __init__(self, config: modrwkv.ModRWKVConfig, params: Mapping, *,
               preprocess: Mapping[str, Callable] | None = None, tokenizer=None, **sampling):
    self.config, self.params = config, params
    self.preprocess = dict(preprocess or {})
    self.tokenizer = tokenizer or world_tokenizer()
    self.sampling = {"max_new_tokens": 500, **sampling}
    self.state: rwkv7.RWKV7State | None = None
    self.history: list[tuple[str, str]] = []  # (user text, answer)
    self.answer_ids: list[list[int]] = []  # generated ids per turn, stop token included when it came

  def reset(self) -> None:
    self.state, self.history, self.answer_ids = None, [], []

  def _items(self, items: Mapping) -> list[jax.Array]:
    out = []
    for name, value in items.items():
      self.config.modality(name)  # clear error if no encoder is configured for it
      value = self.preprocess[name](value) if name in self.preprocess else value
      if isinstance(value, NaFlexPatches):  # SigLIP2 NaFlex: patches, their mask and the patch grid
        out.append(modality_tokens(self.config, self.params, name, value.pixel_values, value.pixel_attention_mask,
                                   value.spatial_shape))
        continue
      inputs, mask = value if isinstance(value, tuple) else (value, None)
      out.append(modality_tokens(self.config, self.params, name, inputs, mask))
    return out

  def ask(self, text: str, *, image=None, audio=None, series=None, callback=None, **sampling) -> str:
    """Answers one user turn; modality items (optional) come before the text, as in the paper."""
    if not text and image is None and audio is None and series is None:
      raise ValueError("Chat.ask: empty turn (no text and no modality item)")
    items = {k: v for k, v in (("image", image), ("audio", audio), ("series", series)) if v is not None}
    pieces = self._items(items)
    ids = user_turn_ids(self.tokenizer, text)
    text_emb = rwkv7.embed(self.config.rwkv, self.params["rwkv"], jnp.asarray([ids], jnp.int32))[0]
    x = jnp.concatenate([*pieces, text_emb.astype(jnp.float32)], axis=0)[None]
    if x.shape[1] > self.config.max_length:
      raise ValueError(f"Chat.ask: the turn has {x.shape[1]} positions; max_length is {self.config.max_length}")
    settings = {**self.sampling, **sampling}
    stream = None
    if callback is not None:
      stream = lambda step, tokens: callback(self.tokenizer.decode([int(tokens[0])]))
    rows, self.state = gen.generate(self.config.rwkv, self.params["rwkv"], embeddings=x, state=self.state,
                                    stop_token=TURN_END_ID, callback=stream, **settings)
    answer_ids = rows[0][:-1] if rows[0] and rows[0][-1] == TURN_END_ID else rows[0]
    answer = self.tokenizer.decode(answer_ids)
    answer = answer[1:] if answer.startswith(" ") else answer
    self.history.append((text, answer))
    self.answer_ids.append(rows[0])
    return answer
