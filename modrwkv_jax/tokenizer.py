"""The RWKV "World" tokenizer: greedy longest match over UTF-8 bytes.

The vocabulary `rwkv_vocab_v20230424.txt` (shipped in `modrwkv_jax/assets`, see VOCAB_LICENSE.md)
has 65529 tokens with ids 1..65529; each line is `<id> <Python literal> <byte length>`. Every single
byte is a token (id = byte + 1), so any byte string encodes. Id 0 is end-of-text / padding and
decodes to nothing. Chat turns are delimited by "\\x16" (id 23) and "\\x17" (id 24).

Encoding walks a byte trie from each position and emits the longest vocabulary entry that matches,
exactly as the `rwkv` package's TRIE_TOKENIZER does.
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
import operator
import os
import threading
from collections.abc import Iterable, Sequence

import numpy as np

END_ID = 0  # end of text, also the padding id
TURN_START_ID = 23  # "\x16", opens a chat turn
TURN_END_ID = 24  # "\x17", closes a chat turn; generation stops here
VOCAB_FILE = "rwkv_vocab_v20230424.txt"


def default_vocab_path() -> str:
  return str(importlib.resources.files("modrwkv_jax") / "assets" / VOCAB_FILE)


def _parse_vocab(path: str) -> dict[int, bytes]:
  id_to_bytes: dict[int, bytes] = {}
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line:
        continue
      try:
        first, last = line.index(" "), line.rindex(" ")
        idx, length = int(line[:first]), int(line[last + 1:])
        token = ast.literal_eval(line[first + 1:last])
      except (ValueError, SyntaxError) as e:
        raise ValueError(f"{path}:{line_no}: cannot parse vocabulary line {line!r}: {e}") from e
      token = token.encode("utf-8") if isinstance(token, str) else token
      if not isinstance(token, bytes) or len(token) != length:
        raise ValueError(f"{path}:{line_no}: token {token!r} does not have the stated length {length}")
      if idx in id_to_bytes:
        raise ValueError(f"{path}:{line_no}: id {idx} appears twice")
      id_to_bytes[idx] = token
  return id_to_bytes


class WorldTokenizer:
  """Byte-level greedy longest-match tokenizer (RWKV World vocabulary).

  >>> tok = WorldTokenizer()
  >>> tok.decode(tok.encode("Hello 世界"))
  'Hello 世界'
  """

  def __init__(self, vocab_path: str | os.PathLike | None = None):
    path = os.fspath(vocab_path) if vocab_path is not None else default_vocab_path()
    self.vocab_path = path
    self._id_to_bytes = _parse_vocab(path)
    missing = [b for b in range(256) if self._id_to_bytes.get(b + 1) != bytes([b])]
    if missing:
      raise ValueError(f"{path}: single-byte tokens must have id = byte + 1; wrong for bytes {missing[:8]}")
    # Trie node: [children: dict[byte, node], token id or -1].
    self._root: list = [{}, -1]
    for idx, token in self._id_to_bytes.items():
      node = self._root
      for byte in token:
        node = node[0].setdefault(byte, [{}, -1])
      node[1] = idx
    self.vocab_size = max(self._id_to_bytes) + 1  # 65530: ids 0..65529

  def encode_bytes(self, data: bytes) -> list[int]:
    """Token ids of a byte string (bytes, bytearray or memoryview); TypeError for anything else."""
    if isinstance(data, memoryview):
      data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
      hint = "; use encode(text) for a str" if isinstance(data, str) else ""
      raise TypeError(f"WorldTokenizer.encode_bytes takes bytes; got {type(data).__name__}{hint}")
    ids, pos, n, root = [], 0, len(data), self._root
    while pos < n:
      node, best_id, best_end, i = root, -1, pos, pos
      while i < n:
        node = node[0].get(data[i])
        if node is None:
          break
        i += 1
        if node[1] >= 0:
          best_id, best_end = node[1], i
      # Every byte is a token, so best_end > pos always.
      ids.append(best_id)
      pos = best_end
    return ids

  def encode(self, text: str) -> list[int]:
    """Token ids of a str (encoded as UTF-8); TypeError for anything else."""
    if not isinstance(text, str):
      hint = "; use encode_bytes(data) for bytes" if isinstance(text, (bytes, bytearray, memoryview)) else ""
      raise TypeError(f"WorldTokenizer.encode takes a str; got {type(text).__name__}{hint}")
    return self.encode_bytes(text.encode("utf-8"))

  def decode_bytes(self, ids: Iterable[int]) -> bytes:
    """The bytes of token ids (an iterable of ints); TypeError for a str or bytes, which iterate as
    characters / byte values rather than ids."""
    if isinstance(ids, (str, bytes, bytearray, memoryview)):
      raise TypeError(f"WorldTokenizer.decode takes token ids (a list or array of ints); got {type(ids).__name__}")
    out = []
    for i in ids:
      try:
        i = operator.index(i)  # ints, numpy / jax integer scalars; not floats or strings
      except TypeError:
        raise TypeError(f"WorldTokenizer.decode: token id {i!r:.40} is a {type(i).__name__}; expected an int") from None
      if i == END_ID:
        continue
      token = self._id_to_bytes.get(i)
      if token is None:
        raise ValueError(f"token id {i} is not in the vocabulary (valid ids 0..{self.vocab_size - 1})")
      out.append(token)
    return b"".join(out)

  def decode(self, ids: Iterable[int]) -> str:
    """Decodes ids to text; id 0 is skipped, invalid UTF-8 becomes U+FFFD."""
    return self.decode_bytes(ids).decode("utf-8", errors="replace")

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    if isinstance(texts, (str, bytes, bytearray)):  # would encode character by character
      raise TypeError(f"WorldTokenizer.encode_batch takes a sequence of str; got one {type(texts).__name__}")
    return [self.encode(t) for t in texts]

  def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
    if isinstance(batch, (str, bytes, bytearray)):
      raise TypeError(f"WorldTokenizer.decode_batch takes a sequence of id sequences; got {type(batch).__name__}")
    return [self.decode(ids) for ids in batch]

  def id_to_bytes(self, idx: int) -> bytes:
    return self._id_to_bytes[idx]


def pad_batch(batch: Sequence[Sequence[int]], length: int | None = None, *,
              pad_id: int = END_ID, side: str = "right") -> tuple[np.ndarray, np.ndarray]:
  """Pads token lists into arrays.

  Returns:
    (tokens int32[B, T], mask bool[B, T]) with mask True at real tokens. T = `length` or the
    longest row; a row longer than `length` raises ValueError.
  """
  if side not in ("left", "right"):
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")
  longest = max((len(row) for row in batch), default=0)
  length = longest if length is None else length
  if longest > length:
    raise ValueError(f"a row has {longest} tokens, more than the padded length {length}")
  tokens = np.full((len(batch), length), pad_id, np.int32)
  mask = np.zeros((len(batch), length), bool)
  for i, row in enumerate(batch):
    sl = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
    tokens[i, sl] = row
    mask[i, sl] = True
  return tokens, mask


_LOAD_LOCK = threading.Lock()


def world_tokenizer() -> WorldTokenizer:
  """The packaged World tokenizer, parsed once per process (about 0.5 s); safe to call from threads
  (data-loader threads race on the first call; `ast.literal_eval` is not re-entrant on Python 3.11)."""
  with _LOAD_LOCK:
    return _load_world_tokenizer()


@functools.lru_cache(maxsize=None)
def _load_world_tokenizer() -> WorldTokenizer:
  return WorldTokenizer()
