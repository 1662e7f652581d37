"""The chat template of ModRWKV: turns + modality items -> token ids, labels and modality positions.

The paper-era "visual" format (docs/architecture.md), one tokenizer call per turn and the results concatenated:

  [modality tokens] ++ tok("\\x16User: {question}\\x17") ++ tok("\\x16Assistant: {answer}\\x17") ++ ...

Two layouts place the modality tokens:
  * "prefix" (the paper's): every item's tokens first, in the order image items, audio items, series
    items; placeholders ("<image>", "<audio>", "<series>") are removed from the text the way LLaVA's
    `preprocess_multimodal` does (`value.replace("<image>", "").strip()`, only in turns that had one).
  * "placeholder": each placeholder is replaced by the tokens of the next item of its modality; the
    text around it is tokenized piecewise ("\\x16User: " | item | "\\nWhat is this?\\x17"). The count of
    placeholders per modality must equal the record's item count, and assistant turns may not hold one.

A record may also carry a `preamble`: text before the first turn that is not wrapped in a turn and never
a target. Audio records use it for their placeholder ("<audio>") so that ASR, whose format has no user
turn (`[audio] ++ tok("\\x16Assistant: {transcript}\\x17")`, docs/evaluation.md), looks the same in both layouts.

Labels (our reading of docs/architecture.md, the same as the official code, which masks the *input* copy of the
labels and shifts by one in the loss): `labels[t]` is the target of the logits at position t, i.e.
`tokens[t + 1]` when position t + 1 is a token of an assistant turn — all of "\\x16Assistant: ",
the answer and the closing "\\x17" — and −100 otherwise (user turns, preamble, modality positions,
the last position). Modality positions are never targets, but the position *before* an assistant
turn is trained to predict its "\\x16" whatever it is: the user turn's closing "\\x17" or, for ASR,
the last audio token.

Modality positions: `positions[m][t] = i * capacity[m] + j` when position t holds the j-th token of item
i of modality m, −1 elsewhere; `capacity[m]` defaults to the largest item of this example (a batch
passes its own maximum, see data/pipeline.py).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from modrwkv_jax.tokenizer import WorldTokenizer, world_tokenizer

USER_PREFIX = "\x16User: "
ASSISTANT_PREFIX = "\x16Assistant: "
TURN_END = "\x17"
IGNORE_ID = -100  # label of positions without a target
MODALITIES = ("image", "audio", "series")
PLACEHOLDERS = {"image": "<image>", "audio": "<audio>", "series": "<series>"}
LAYOUTS = ("prefix", "placeholder")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_PLACEHOLDER_RE = re.compile("(" + "|".join(re.escape(p) for p in PLACEHOLDERS.values()) + ")")
_MODALITY_OF = {p: m for m, p in PLACEHOLDERS.items()}


def default_tokenizer() -> WorldTokenizer:
  """The packaged World tokenizer (`world_tokenizer()` is thread-safe: pipeline threads may race)."""
  return world_tokenizer()


class ConversationError(ValueError):
  """A malformed conversation; `field` names the offending part (e.g. "conversations[2].from")."""

  def __init__(self, message: str, field: str = "conversations", reason: str = "bad_conversation"):
    super().__init__(message)
    self.field = field
    self.reason = reason

  def __reduce__(self):
    return ConversationError, (str(self), self.field, self.reason)


@dataclasses.dataclass(frozen=True)
class Turn:
  role: str  # "user" | "assistant"
  text: str


def parse_turns(conversations, *, require_assistant: bool = True) -> list[Turn]:
  """Validates LLaVA-style turns [{"from": "human"|"gpt", "value": str}, ...] (or Turn objects).

  Accepted role names: human/user and gpt/assistant; "role"/"content" keys are accepted too. Roles must
  alternate; with `require_assistant`, at least one assistant turn must exist (else nothing is trained).
  Raises ConversationError naming the field.
  """
  if not isinstance(conversations, (list, tuple)):
    raise ConversationError(f"conversations must be a list of turns; got {type(conversations).__name__}",
                            reason="bad_conversation")
  if not conversations:
    raise ConversationError("the conversation is empty (no turns)", reason="empty_conversation")
  turns = []
  for i, turn in enumerate(conversations):
    if isinstance(turn, Turn):
      role, text = turn.role, turn.text
    elif isinstance(turn, Mapping):
      role = turn.get("from", turn.get("role"))
      text = turn.get("value", turn.get("content", turn.get("text")))
    else:
      raise ConversationError(f"turn {i} is a {type(turn).__name__}; expected {{'from': ..., 'value': ...}}",
                              f"conversations[{i}]")
    if role not in ROLES:
      raise ConversationError(f"turn {i} has role {role!r}; expected one of {sorted(ROLES)}",
                              f"conversations[{i}].from")
    if not isinstance(text, str):
      raise ConversationError(f"turn {i} has value of type {type(text).__name__}; expected a string",
                              f"conversations[{i}].value")
    role = ROLES[role]
    if turns and turns[-1].role == role:
      raise ConversationError(f"turns {i - 1} and {i} are both {role} turns; roles must alternate",
                              f"conversations[{i}].from", reason="non_alternating_roles")
    turns.append(Turn(role, text))
  if all(not t.text.strip() for t in turns):
    raise ConversationError("every turn of the conversation is empty", reason="empty_conversation")
  if require_assistant and not any(t.role == "assistant" for t in turns):
    raise ConversationError("the conversation has no assistant turn, so nothing would be trained",
                            reason="no_assistant_turn")
  return turns


def count_placeholders(text: str) -> dict[str, int]:
  return {m: text.count(p) for m, p in PLACEHOLDERS.items()}


def strip_placeholders(text: str) -> str:
  """LLaVA's prefix-mode cleaning: remove every placeholder, then strip (only if there was one)."""
  if not _PLACEHOLDER_RE.search(text):
    return text
  return _PLACEHOLDER_RE.sub("", text).strip()


@dataclasses.dataclass
class Example:
  """One sequence. tokens, labels int32[T]; positions {m: int32[T]} (only for modalities with items);
  num_tokens {m: [int per item]}; capacity {m: int}."""
  tokens: np.ndarray
  labels: np.ndarray
  positions: dict[str, np.ndarray]
  num_tokens: dict[str, list[int]]
  capacity: dict[str, int]

  def __len__(self) -> int:
    return len(self.tokens)

  def with_capacity(self, capacity: Mapping[str, int]) -> Example:
    """The same example with positions i * capacity[m] + j for a new (not smaller) capacity."""
    positions = {}
    for m, pos in self.positions.items():
      old, new = self.capacity[m], int(capacity[m])
      if new < max(self.num_tokens[m], default=0):
        raise ValueError(f"capacity {new} for {m} is smaller than an item of {max(self.num_tokens[m])} tokens")
      positions[m] = np.where(pos >= 0, (pos // max(old, 1)) * new + pos % max(old, 1), -1).astype(np.int32)
    return Example(self.tokens, self.labels, positions, self.num_tokens, {**self.capacity, **capacity})

  def truncated(self, length: int) -> Example:
    """The first `length` positions; the last kept position loses its target (its next token is cut)."""
    labels = self.labels[:length].copy()
    labels[-1] = IGNORE_ID
    return Example(self.tokens[:length], labels, {m: p[:length] for m, p in self.positions.items()},
                   self.num_tokens, self.capacity)


def _check_counts(num_tokens: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
  out = {}
  for m, counts in num_tokens.items():
    if m not in PLACEHOLDERS:
      raise ValueError(f"unknown modality {m!r}; expected one of {MODALITIES}")
    counts = [int(n) for n in counts]
    if any(n <= 0 for n in counts):
      raise ConversationError(f"{m} items must become at least one token each; got {counts}", m,
                              reason="empty_item")
    if counts:
      out[m] = counts
  return out


def build_example(turns, num_tokens: Mapping[str, Sequence[int]] | None = None, *, layout: str = "prefix",
                  preamble: str = "", capacity: Mapping[str, int] | None = None,
                  tokenizer: WorldTokenizer | None = None, require_assistant: bool = True,
                  add_generation_prompt: bool = False) -> Example:
  """One record's token sequence, labels and modality positions.

  Args:
    turns: LLaVA turns [{"from": "human"|"gpt", "value": str}, ...] or Turn objects (see parse_turns);
      may be empty when `require_assistant` is False (e.g. a forecasting record: modality tokens only).
    num_tokens: {modality: [tokens of item 0, item 1, ...]}, what each item becomes after encoder,
      compressor and adapter (the model's `num_tokens(input_length)`).
    layout: "prefix" or "placeholder" (module docstring).
    preamble: text before the first turn, no turn markers, never a target.
    capacity: {modality: per-item slot count} for the positions (default: this example's largest item).
    add_generation_prompt: append "\\x16Assistant:" (inference; see `inference_prompt`).
  Returns:
    Example with tokens int32[T] (0 at modality positions), labels int32[T], positions {m: int32[T]}.
  Raises:
    ConversationError on malformed turns, placeholder/item count mismatches (placeholder layout) and
    placeholders in assistant turns.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  tok = tokenizer or default_tokenizer()
  num_tokens = _check_counts(num_tokens or {})
  turns = parse_turns(turns, require_assistant=require_assistant) if (turns or require_assistant) else []
  for i, turn in enumerate(turns):
    if turn.role == "assistant" and _PLACEHOLDER_RE.search(turn.text):
      raise ConversationError(f"assistant turn {i} contains a modality placeholder; items belong in user turns "
                              "or the preamble", f"conversations[{i}].value", reason="placeholder_mismatch")

  # Segments: ("text", ids, is_target) or ("item", modality, item index).
  segments: list[tuple] = []
  if layout == "prefix":
    for m in MODALITIES:
      segments += [("item", m, i) for i in range(len(num_tokens.get(m, ())))]
    if strip_placeholders(preamble):
      segments.append(("text", tok.encode(strip_placeholders(preamble)), False))
    for turn in turns:
      if turn.role == "user":
        segments.append(("text", tok.encode(USER_PREFIX + strip_placeholders(turn.text) + TURN_END), False))
      else:
        segments.append(("text", tok.encode(ASSISTANT_PREFIX + turn.text + TURN_END), True))
  else:
    seen = {m: 0 for m in MODALITIES}
    pieces = [(preamble, "", "")] + [(t.text, USER_PREFIX, TURN_END) if t.role == "user"
                                     else (t.text, ASSISTANT_PREFIX, TURN_END) for t in turns]
    for k, (text, before, after) in enumerate(pieces):
      if k == 0 and not text:
        continue
      target = k > 0 and turns[k - 1].role == "assistant"
      parts = _PLACEHOLDER_RE.split(before + text + after)  # text, placeholder, text, ...
      for p, part in enumerate(parts):
        if p % 2:
          m = _MODALITY_OF[part]
          segments.append(("item", m, seen[m]))
          seen[m] += 1
        elif part:
          segments.append(("text", tok.encode(part), target))
    for m in MODALITIES:
      have = len(num_tokens.get(m, ()))
      if seen[m] != have:
        raise ConversationError(f"the text has {seen[m]} {PLACEHOLDERS[m]} placeholder(s) but the record has "
                                f"{have} {m} item(s); the placeholder layout needs one placeholder per item",
                                m, reason="placeholder_mismatch")
  if add_generation_prompt:
    segments.append(("text", tok.encode(ASSISTANT_PREFIX.rstrip(" ")), False))

  capacity = {m: int((capacity or {}).get(m, max(c))) for m, c in num_tokens.items()}
  for m, c in num_tokens.items():
    if capacity[m] < max(c):
      raise ValueError(f"capacity {capacity[m]} for {m} is smaller than an item of {max(c)} tokens")
  tokens, is_target = [], []
  pos_lists = {m: [] for m in num_tokens}
  for seg in segments:
    if seg[0] == "text":
      tokens += seg[1]
      is_target += [seg[2]] * len(seg[1])
      for p in pos_lists.values():
        p += [-1] * len(seg[1])
    else:
      _, m, i = seg
      n = num_tokens[m][i]
      tokens += [0] * n
      is_target += [False] * n
      for mm, p in pos_lists.items():
        p += [i * capacity[m] + j for j in range(n)] if mm == m else [-1] * n
  tokens = np.asarray(tokens, np.int32)
  labels = np.full(len(tokens), IGNORE_ID, np.int32)
  if len(tokens) > 1:
    target = np.asarray(is_target[1:], bool)
    labels[:-1] = np.where(target, tokens[1:], IGNORE_ID)
  positions = {m: np.asarray(p, np.int32) for m, p in pos_lists.items()}
  return Example(tokens, labels, positions, num_tokens, capacity)


def prompt_text(question: str | None) -> str:
  """The inference prompt of docs/architecture.md: "\\x16User: {q}\\x17\\x16Assistant:" (no question: "\\x16Assistant:")."""
  head = "" if question is None else USER_PREFIX + question + TURN_END
  return head + ASSISTANT_PREFIX.rstrip(" ")


def inference_prompt(question: str | None, num_tokens: Mapping[str, Sequence[int]] | None = None, *,
                     layout: str = "prefix", preamble: str = "", capacity: Mapping[str, int] | None = None,
                     tokenizer: WorldTokenizer | None = None) -> Example:
  """The prompt to prefill before greedy decoding (labels all −100).

  tokens = [modality tokens] ++ tok("\\x16User: {q}\\x17") ++ tok("\\x16Assistant:"): the same token
  boundaries as training, whose assistant turns tokenize as tok("\\x16Assistant:") + answer tokens.
  question None gives the ASR prompt [audio] ++ tok("\\x16Assistant:"). The model's answer starts with a
  space (strip one). For the next turn of a chat, prefill `inference_prompt(q2)` without items after the
  answer's closing "\\x17" (the RNN state carries the context).
  """
  turns = [] if question is None else [Turn("user", question)]
  ex = build_example(turns, num_tokens, layout=layout, preamble=preamble, capacity=capacity,
                     tokenizer=tokenizer, require_assistant=False, add_generation_prompt=True)
  ex.labels[:] = IGNORE_ID
  return ex
