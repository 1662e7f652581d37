"""Chat template (docs/architecture.md): token sequences, labels and modality positions against hand-built lists.

Expectations are assembled by hand from the tokenizer's output for each turn string, independently of
build_example's segment logic; the ids of "\\x16Assistant:" are pinned from the World vocabulary.
"""

import numpy as np
import pytest

from modrwkv_jax.data import conversation as C
from modrwkv_jax.tokenizer import world_tokenizer

IGNORE = -100
TOK = world_tokenizer()
enc = TOK.encode


def labels_for(tokens, target):
  """labels[t] = tokens[t+1] where target[t+1] else -100 (target: per-position assistant flags)."""
  out = [IGNORE] * len(tokens)
  for t in range(len(tokens) - 1):
    if target[t + 1]:
      out[t] = tokens[t + 1]
  return out


def qa(question, answer):
  return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def test_assistant_prefix_ids():
  # "\x16" = 23 (byte + 1), "\x17" = 24; "Ass" "istant" ":" from rwkv_vocab_v20230424.
  assert enc("\x16Assistant:") == [23, 5585, 41693, 59]
  assert enc("\x16Assistant: yes\x17") == [23, 5585, 41693, 59, 22796, 24]


def test_prefix_single_turn_with_image():
  ex = C.build_example(qa("<image>\nWhat is it?", "a cat"), {"image": [3]})
  user, asst = enc("\x16User: What is it?\x17"), enc("\x16Assistant: a cat\x17")  # "<image>\n" stripped
  tokens = [0, 0, 0] + user + asst
  target = [False] * (3 + len(user)) + [True] * len(asst)
  np.testing.assert_array_equal(ex.tokens, tokens)
  np.testing.assert_array_equal(ex.labels, labels_for(tokens, target))
  np.testing.assert_array_equal(ex.positions["image"], [0, 1, 2] + [-1] * (len(user) + len(asst)))
  # The user turn's closing "\x17" is trained to predict the "\x16" opening the assistant turn.
  assert ex.labels[3 + len(user) - 1] == 23
  assert ex.labels[-1] == IGNORE and ex.labels[-2] == 24
  assert TOK.decode(ex.labels[ex.labels >= 0]) == "\x16Assistant: a cat\x17"


def test_prefix_multi_turn_labels_only_on_assistant_turns():
  turns = qa("<image>\nHow many?", "3") + qa("Colour?", "red")
  ex = C.build_example(turns, {"image": [2]})
  segs = [([0, 0], False), (enc("\x16User: How many?\x17"), False), (enc("\x16Assistant: 3\x17"), True),
          (enc("\x16User: Colour?\x17"), False), (enc("\x16Assistant: red\x17"), True)]
  tokens = [t for s, _ in segs for t in s]
  target = [f for s, f in segs for _ in s]
  np.testing.assert_array_equal(ex.tokens, tokens)
  np.testing.assert_array_equal(ex.labels, labels_for(tokens, target))
  assert TOK.decode(ex.labels[ex.labels >= 0]) == "\x16Assistant: 3\x17\x16Assistant: red\x17"


def test_placeholder_layout_two_images():
  turns = qa("<image> and <image>: same?", "no")
  ex = C.build_example(turns, {"image": [2, 3]}, layout="placeholder")
  a, b, c = enc("\x16User: "), enc(" and "), enc(": same?\x17")
  asst = enc("\x16Assistant: no\x17")
  tokens = a + [0, 0] + b + [0, 0, 0] + c + asst
  np.testing.assert_array_equal(ex.tokens, tokens)
  # capacity = largest item (3): item 0 -> 0, 1; item 1 -> 3, 4, 5
  pos = [-1] * len(a) + [0, 1] + [-1] * len(b) + [3, 4, 5] + [-1] * (len(c) + len(asst))
  np.testing.assert_array_equal(ex.positions["image"], pos)
  target = [False] * (len(tokens) - len(asst)) + [True] * len(asst)
  np.testing.assert_array_equal(ex.labels, labels_for(tokens, target))
  # A batch capacity of 5 re-indexes the same tokens: item 1 -> 5, 6, 7.
  wide = ex.with_capacity({"image": 5})
  np.testing.assert_array_equal(wide.positions["image"][wide.positions["image"] >= 0], [0, 1, 5, 6, 7])


def test_asr_record_audio_then_assistant():
  # AudioManifestSource's ASR record: preamble "<audio>", one assistant turn (docs/evaluation.md).
  for layout in C.LAYOUTS:
    ex = C.build_example([{"from": "gpt", "value": "three one"}], {"audio": [4]}, preamble="<audio>",
                         layout=layout)
    asst = enc("\x16Assistant: three one\x17")
    np.testing.assert_array_equal(ex.tokens, [0] * 4 + asst)
    np.testing.assert_array_equal(ex.labels, labels_for([0] * 4 + asst, [False] * 4 + [True] * len(asst)))
    assert ex.labels[3] == 23  # the last audio position predicts "\x16"
    np.testing.assert_array_equal(ex.positions["audio"], [0, 1, 2, 3] + [-1] * len(asst))


def test_prefix_order_image_audio_series_and_text_only():
  ex = C.build_example(qa("<series> <audio> <image> go", "ok"), {"series": [1], "audio": [2], "image": [1]})
  n = 4
  np.testing.assert_array_equal(ex.tokens[:n], 0)
  np.testing.assert_array_equal(ex.positions["image"][:n], [0, -1, -1, -1])
  np.testing.assert_array_equal(ex.positions["audio"][:n], [-1, 0, 1, -1])
  np.testing.assert_array_equal(ex.positions["series"][:n], [-1, -1, -1, 0])
  np.testing.assert_array_equal(ex.tokens[n:], enc("\x16User: go\x17") + enc("\x16Assistant: ok\x17"))
  text = C.build_example(qa("hi", "hello"))
  assert text.positions == {} and list(text.tokens) == enc("\x16User: hi\x17") + enc("\x16Assistant: hello\x17")


def test_forecast_record_without_turns():
  ex = C.build_example([], {"series": [3]}, preamble="<series>", require_assistant=False)
  np.testing.assert_array_equal(ex.tokens, [0, 0, 0])
  np.testing.assert_array_equal(ex.labels, [IGNORE] * 3)


@pytest.mark.parametrize("turns, items, layout, reason, field", [
    ([], {}, "prefix", "empty_conversation", "conversations"),
    ([{"from": "human", "value": " "}, {"from": "gpt", "value": ""}], {}, "prefix", "empty_conversation",
     "conversations"),
    (qa("a", "b") + [{"from": "gpt", "value": "c"}], {}, "prefix", "non_alternating_roles", "conversations[2].from"),
    ([{"from": "robot", "value": "x"}], {}, "prefix", "bad_conversation", "conversations[0].from"),
    ([{"from": "human", "value": 3}], {}, "prefix", "bad_conversation", "conversations[0].value"),
    ([{"from": "human", "value": "only a question"}], {}, "prefix", "no_assistant_turn", "conversations"),
    (qa("<image> <image>", "x"), {"image": [1]}, "placeholder", "placeholder_mismatch", "image"),
    (qa("no placeholder", "x"), {"image": [1]}, "placeholder", "placeholder_mismatch", "image"),
    (qa("<image>", "<image>"), {"image": [1, 1]}, "prefix", "placeholder_mismatch", "conversations[1].value"),
])
def test_bad_conversations(turns, items, layout, reason, field):
  with pytest.raises(C.ConversationError) as info:
    C.build_example(turns, items, layout=layout)
  assert info.value.reason == reason and info.value.field == field, (info.value.reason, info.value.field)


def test_inference_prompt():
  assert C.prompt_text("What is it?") == "\x16User: What is it?\x17\x16Assistant:"
  ex = C.inference_prompt("What is it?", {"image": [2]})
  np.testing.assert_array_equal(ex.tokens, [0, 0] + enc("\x16User: What is it?\x17") + [23, 5585, 41693, 59])
  assert (ex.labels == IGNORE).all()
  # Training's assistant turn starts with the same tokens, so the prompt ends on a training boundary.
  assert enc("\x16Assistant: a cat\x17")[:4] == [23, 5585, 41693, 59]
  asr = C.inference_prompt(None, {"audio": [3]})
  np.testing.assert_array_equal(asr.tokens, [0, 0, 0, 23, 5585, 41693, 59])


def test_truncated_drops_last_target():
  ex = C.build_example(qa("q", "a long answer here"))
  cut = ex.truncated(len(ex) - 2)
  assert len(cut) == len(ex) - 2 and cut.labels[-1] == IGNORE
  np.testing.assert_array_equal(cut.labels[:-1], ex.labels[:len(ex) - 3])
