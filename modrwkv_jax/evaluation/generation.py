"""Batched greedy answering for evaluation: records in, answers out.

    gen = BatchGenerator(model, params, pipeline_config, max_new_tokens=32)
    answers = gen([prepare_prompt(record, pipeline_config) for record in records])   # [Answer, ...]

A record is the data pipeline's common schema (`data.sources.make_record`) whose `conversations` hold
the prompt only (no final assistant turn). `prepare_prompt` reads its media exactly as training does
(`data.transforms.prepare_record`: same image processor, audio front end, series windows) and builds the
inference prompt of docs/architecture.md: `[modality tokens] ++ tok("\\x16User: {q}\\x17") ++ tok("\\x16Assistant:")`
(`[audio] ++ tok("\\x16Assistant:")` for ASR). A batch of prompts is collated with the training collator
(right padding, static row count), its modality items are encoded and spliced once
(`modrwkv.embed_inputs`, jitted), the padded prompts are prefilled in parallel with the padding mask,
and decoding runs in one jitted `lax.while_loop` with per-row stop handling (`generate.generate`). Padding
leaves the RNN state untouched, so each row continues from its own last real token; the constant-size
state is the whole cache.

Compiles: one per (batch rows, padded prompt length) for the embedding and the prefill, one per
(rows, max_new_tokens) for the decode loop. Prompt lengths are padded to `pad_multiple` (or the length
buckets) of the pipeline config, so a benchmark compiles a handful of shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from modrwkv_jax import generate as gen
from modrwkv_jax.data import conversation, transforms
from modrwkv_jax.data.sources import RecordError
from modrwkv_jax.models import modrwkv
from modrwkv_jax.tokenizer import TURN_END_ID, world_tokenizer

# The assistant turn `prepare_record` needs to accept a prompt-only record; replaced before use.
_PROBE_ANSWER = {"from": "gpt", "value": "."}


@dataclasses.dataclass(frozen=True)
class Answer:
  """One generated answer: `text` with the stop token removed and one leading space stripped (docs/architecture.md)."""
  text: str
  token_ids: tuple[int, ...]
  stopped: bool  # the stop token came before max_new_tokens ran out


def split_turns(record: Mapping) -> tuple[dict, str | None]:
  """A training record -> (the prompt-only record, the reference answer): drops the last assistant turn.

  Forecasting records (a series target and no assistant turn) are returned unchanged with reference None.
  """
  turns = list(record.get("conversations") or [])
  if turns and turns[-1].get("from", turns[-1].get("role")) in ("gpt", "assistant"):
    reference = turns[-1].get("value", turns[-1].get("content"))
    return {**record, "conversations": turns[:-1]}, reference
  return dict(record), None


PROMPT_FORMATS = ("design", "worldrwkv")
# The authors' released checkpoints were trained and evaluated with "\x17Assistant:" (no "\x16" before
# "Assistant"), tokenized as one string after the image tokens (models/worldrwkv.py, `PROMPT`).
WORLDRWKV_PROMPT = "\x16User: {question}\x17Assistant:"


def prepare_prompt(record: Mapping, config, prompt_format: str = "design") -> transforms.Prepared:
  """The inference prompt of a prompt-only record, with its media preprocessed as in training.

  Args:
    record: common-schema record; `conversations` are the prompt turns (user turns, or earlier
      user/assistant pairs for a multi-turn context; empty for ASR, where the preamble holds "<audio>").
    config: the data.PipelineConfig of the model (`training.config.pipeline_config`).
    prompt_format: "design" (docs/architecture.md, what train.py trains) or "worldrwkv" (the released WorldRWKV
      checkpoints: [modality tokens] ++ tok("\x16User: {q}\x17Assistant:"); one user turn, prefix layout).
  Raises:
    RecordError (file, record id, field) on unreadable media or a prompt longer than `max_length`.
  """
  if prompt_format not in PROMPT_FORMATS:
    raise ValueError(f"prepare_prompt: prompt_format must be one of {PROMPT_FORMATS}; got {prompt_format!r}")
  turns = list(record.get("conversations") or [])
  has_target = any(t is not None for t in record.get("target") or [])
  probe = dict(record, conversations=turns if has_target and not turns else turns + [_PROBE_ANSWER])
  prepared = transforms.prepare_record(probe, dataclasses.replace(config, max_length=None))
  if has_target and not turns:  # forecasting: the modality tokens are the whole input
    example = prepared.example
  else:
    try:
      example = conversation.build_example(turns, prepared.example.num_tokens, layout=config.layout,
                                           preamble=record.get("preamble", ""), require_assistant=False,
                                           add_generation_prompt=True)
    except conversation.ConversationError as e:
      raise RecordError(record["source"], record["id"], e.field, str(e), e.reason) from None
    example.labels[:] = conversation.IGNORE_ID
    if prompt_format == "worldrwkv":
      example = _worldrwkv_prompt(record, turns, example, config)
  if config.max_length is not None and len(example) > config.max_length:
    raise RecordError(record["source"], record["id"], "conversations",
                      f"the prompt has {len(example)} positions, more than max_length={config.max_length}", "too_long")
  return dataclasses.replace(prepared, example=example)


def _worldrwkv_prompt(record, turns, example, config):
  if config.layout != "prefix" or len(turns) != 1:
    raise RecordError(record["source"], record["id"], "conversations",
                      "the worldrwkv prompt format takes one user turn in the prefix layout", "bad_conversation")
  n = sum(sum(v) for v in example.num_tokens.values())  # prefix layout: every modality token comes first
  question = conversation.strip_placeholders(turns[0]["value"])
  text = np.asarray(world_tokenizer().encode(WORLDRWKV_PROMPT.format(question=question)), np.int32)
  tokens = np.concatenate([example.tokens[:n], text])
  positions = {m: np.concatenate([p[:n], np.full(len(text), -1, np.int32)]) for m, p in example.positions.items()}
  return conversation.Example(tokens, np.full(len(tokens), conversation.IGNORE_ID, np.int32), positions,
                              example.num_tokens, example.capacity)


_embed = jax.jit(modrwkv.embed_inputs, static_argnums=0)
_forecast = jax.jit(modrwkv.forecast, static_argnums=0)


def _model_batch(batch: Mapping) -> dict:
  return {k: v for k, v in batch.items() if k not in ("labels", "target", "target_mask")}


class BatchGenerator:
  """Greedy answers for batches of prepared prompts (see the module docstring).

  Args:
    model: the ModRWKVConfig; params: its parameters (PEFT adapters merged or not).
    pipeline: the data.PipelineConfig that `prepare_prompt` used (collation and padding).
    max_new_tokens: decode budget per answer (the paper: 500; short-answer benchmarks need far fewer).
    batch_size: rows per compiled batch; a short final batch is filled with empty rows.
  """

  def __init__(self, model: modrwkv.ModRWKVConfig, params: Mapping, pipeline, *, max_new_tokens: int = 500,
               batch_size: int = 8, stop_token: int = TURN_END_ID, tokenizer=None):
    if batch_size < 1:
      raise ValueError(f"BatchGenerator: batch_size must be >= 1; got {batch_size}")
    self.model, self.params, self.pipeline = model, params, pipeline
    self.max_new_tokens, self.batch_size, self.stop_token = max_new_tokens, batch_size, stop_token
    self.tokenizer = tokenizer or world_tokenizer()

  def collate(self, prepared: Sequence[transforms.Prepared | None]) -> dict:
    """Pads up to `batch_size` prompts into one batch (empty rows fill a short batch)."""
    if len(prepared) > self.batch_size:
      raise ValueError(f"BatchGenerator: {len(prepared)} prompts for a batch of {self.batch_size}")
    rows = list(prepared) + [None] * (self.batch_size - len(prepared))
    return transforms.collate(rows, self.pipeline)

  def __call__(self, prepared: Sequence[transforms.Prepared]) -> list[Answer]:
    out = []
    for i in range(0, len(prepared), self.batch_size):
      chunk = list(prepared[i:i + self.batch_size])
      batch = self.collate(chunk)
      x, mask, _ = _embed(self.model, self.params, _model_batch(batch))
      rows, _ = gen.generate(self.model.rwkv, self.params["rwkv"], embeddings=x, mask=mask,
                             max_new_tokens=self.max_new_tokens, stop_token=self.stop_token)
      out.extend(self._answer(row) for row in rows[:len(chunk)])
    return out

  def _answer(self, row: Sequence[int]) -> Answer:
    stopped = bool(row) and row[-1] == self.stop_token
    ids = tuple(row[:-1] if stopped else row)
    text = self.tokenizer.decode(ids)
    return Answer(text[1:] if text.startswith(" ") else text, ids, stopped)

  def forecast(self, prepared: Sequence[transforms.Prepared]) -> list[np.ndarray]:
    """Forecasts of prepared series prompts with the model's forecasting head: float32[horizon] each
    (in the series' units)."""
    out = []
    for i in range(0, len(prepared), self.batch_size):
      chunk = list(prepared[i:i + self.batch_size])
      batch = self.collate(chunk)
      _, pred = _forecast(self.model, self.params, _model_batch(batch))
      out.extend(np.asarray(pred[:len(chunk)], np.float32))
    return out


def generate_one_by_one(model, params, pipeline, prepared: Sequence[transforms.Prepared], *,
                        max_new_tokens: int) -> list[Answer]:
  """The reference for batching: each prompt alone in a batch of one (padded to its length bucket, the
  same compiled shape for all), so no other row's items or padding can reach it."""
  g = BatchGenerator(model, params, pipeline.replace(batch_size=1), max_new_tokens=max_new_tokens, batch_size=1)
  return [g([p])[0] for p in prepared]
