"""World tokenizer vs the `rwkv` package's TRIE_TOKENIZER (the reference implementation)."""

import os
import random

import numpy as np
import pytest

from modrwkv_jax import tokenizer as tk


@pytest.fixture(scope="module")
def ours():
  return tk.world_tokenizer()


@pytest.fixture(scope="module")
def reference():
  import rwkv
  from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
  return TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))


TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "def f(x):\n\treturn x ** 2  # comment\r\n",
    "你好，世界。机器学习与自然语言处理。",
    "日本語のテキストと한국어 텍스트",
    "emoji: 🤖🎉👍🏽 👨‍👩‍👧‍👦 🇯🇵",
    "control: \x00\x01\x07\x16User: hi\x17\x16Assistant: ok\x17\x1b[0m",
    " " * 300 + "-" * 200 + "\n" * 7,
    "Ünïcödé àccents, Ελληνικά, русский, עברית, العربية",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_reference(ours, reference, text):
  ids = ours.encode(text)
  assert ids == reference.encode(text)
  assert ours.decode(ids) == text


def test_random_byte_strings_match_reference(ours, reference):
  rng = random.Random(0)
  alphabet = list(range(256))
  for _ in range(200):
    n = rng.randint(1, 64)
    # Mix arbitrary bytes with UTF-8 of common text so that long tokens are exercised too.
    data = bytes(rng.choice(alphabet) for _ in range(n)) + rng.choice(TEXTS).encode()[: rng.randint(0, 40)]
    ids = ours.encode_bytes(data)
    assert ids == reference.encodeBytes(data), data
    assert ours.decode_bytes(ids) == data


def test_special_ids(ours):
  assert ours.encode("\x16") == [tk.TURN_START_ID] == [23]
  assert ours.encode("\x17") == [tk.TURN_END_ID] == [24]
  assert ours.vocab_size == 65530
  assert ours.decode([tk.END_ID]) == ""
  # Single bytes have id = byte + 1.
  assert ours.encode_bytes(b"\xff") == [256]


def test_invalid_utf8_becomes_replacement_char(ours):
  # "\xe4\xbd" is a truncated 3-byte character (first two bytes of "你").
  ids = ours.encode_bytes(b"ab\xe4\xbd") + ours.encode("c")
  assert ours.decode(ids) == "ab\ufffdc"


def test_unknown_id_raises(ours):
  with pytest.raises(ValueError, match="token id 70000 is not in the vocabulary"):
    ours.decode([5, 70000])


def test_batch_helpers(ours):
  texts = ["Hello", "你好世界 and more", ""]
  batch = ours.encode_batch(texts)
  assert ours.decode_batch(batch) == texts
  tokens, mask = tk.pad_batch(batch)
  assert tokens.shape == mask.shape == (3, max(map(len, batch)))
  assert tokens.dtype == np.int32
  assert mask.sum(1).tolist() == [len(b) for b in batch]
  assert (tokens[~mask] == tk.END_ID).all()
  left, lmask = tk.pad_batch(batch, 12, side="left")
  assert left[1, 12 - len(batch[1]):].tolist() == batch[1]
  assert lmask[0].tolist() == [False] * (12 - len(batch[0])) + [True] * len(batch[0])
  with pytest.raises(ValueError, match="more than the padded length 2"):
    tk.pad_batch(batch, 2)


def test_bad_vocab_file_names_line(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("1 '\\x00' 1\n2 'ab 3\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"vocab.txt:2: cannot parse"):
    tk.WorldTokenizer(path)
