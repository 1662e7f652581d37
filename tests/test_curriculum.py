"""data.curriculum: phases of steps that read their own sources before data.sources, and an iterator
state that resumes every phase exactly (training/data.py CurriculumIterator)."""

import json
import os

import numpy as np
import pytest

from modrwkv_jax.data.conversation import default_tokenizer
from modrwkv_jax.training import config as C
from modrwkv_jax.training import data as data_lib
from modrwkv_jax.training import trainer

STEPS = (3, 2)  # two curriculum phases, then data.sources


def _llava(root, word, n=8):
  """n text-only records whose answers all name `word` (the source of a batch shows in its tokens)."""
  os.makedirs(root, exist_ok=True)
  records = [{"id": f"{word}{i}", "conversations": [{"from": "human", "value": f"Say {i}."},
                                                    {"from": "gpt", "value": f"{word} {'x' * (i % 4)}"}]}
             for i in range(n)]
  path = os.path.join(root, "train.json")
  with open(path, "w") as f:
    json.dump(records, f)
  return path


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  root = tmp_path_factory.mktemp("curriculum")
  c = C.base_config()
  c.model.rwkv = dict(vocab_size=65536, n_layer=1, n_embd=32, head_size=16, dim_w=8, dim_a=8, dim_v=8, dim_g=8,
                      dim_ffn=64, dtype="float32")
  c.model.modalities = dict(image=dict(
      encoder="siglip", encoder_config=dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                            patch_size=8, image_size=16),
      projector=dict(kind="vision", compressor=None, hidden_mult=2)))
  c.data.curriculum = [dict(steps=STEPS[0], sources=[dict(kind="llava", path=_llava(root / "a", "alpha"))]),
                       dict(steps=STEPS[1], sources=[dict(kind="llava", path=_llava(root / "b", "bravo"))])]
  c.data.sources = [dict(kind="llava", path=_llava(root / "c", "charlie"))]
  c.data.max_length = 32
  c.data.bucket_window = 1
  c.train.batch_size = 2
  c.train.steps = 20
  c.mesh.data = 1
  return c


def _iterator(config, start_step=0):
  it, _ = data_lib.make_iterators(config, C.model_config(config), trainer.make_mesh(config), seed=0,
                                  start_step=start_step)
  return it


def _source(batch) -> str:
  tok = default_tokenizer()
  words = {w for row in batch["tokens"] for w in ("alpha", "bravo", "charlie") if w in tok.decode(row[row > 0].tolist())}
  assert len(words) == 1, words  # every row of a batch comes from the same phase
  return words.pop()


def test_each_phase_reads_its_sources_for_its_steps(config):
  it = _iterator(config)
  assert isinstance(it, data_lib.CurriculumIterator)
  got = [_source(next(it)) for _ in range(8)]
  assert got == ["alpha"] * 3 + ["bravo"] * 2 + ["charlie"] * 3


def test_the_state_resumes_every_phase_exactly(config):
  """Stopping after k batches and resuming at step k (a new iterator, as train.py does) gives the
  batches of the uninterrupted run: inside a phase, at both phase boundaries, and after."""
  it = _iterator(config)
  want = [next(it) for _ in range(8)]
  for k in (1, 3, 4, 5, 6):
    first = _iterator(config)
    for _ in range(k):
      next(first)
    state = first.get_state()
    assert state["phase"] == (0 if k < 3 else 1 if k < 5 else 2), (k, state)
    resumed = _iterator(config, start_step=k)
    resumed.set_state(json.loads(json.dumps(state)))  # as a checkpoint stores it
    for j in range(k, 8):
      got = next(resumed)
      assert sorted(got) == sorted(want[j])
      for key in got:
        np.testing.assert_array_equal(got[key], want[j][key], err_msg=f"resumed at {k}, batch {j}, {key}")


def test_a_run_that_starts_after_the_curriculum_reads_data_sources(config):
  """init.from_checkpoint at step 9, or a state saved without a curriculum: the phase of the step."""
  it = _iterator(config, start_step=9)
  assert _source(next(it)) == "charlie"
  it = _iterator(config, start_step=9)
  it.set_state({"epoch": 0, "next_index": 1})
  assert _source(next(it)) == "charlie"
  with pytest.raises(ValueError, match="phase 3 does not exist"):
    _iterator(config).set_state({"phase": 3, "epoch": 0, "next_index": 0})


def test_without_a_curriculum_the_iterator_is_the_plain_one(config):
  plain = C.apply_overrides(config, [])
  plain.data.curriculum = []
  assert isinstance(_iterator(plain), data_lib.EpochIterator)


@pytest.mark.parametrize("phases, match", [
    ([dict(steps=0, sources=[dict(kind="llava", path="x")])], r"data.curriculum\[0\]: needs steps"),
    ([dict(steps=2)], r"data.curriculum\[0\]: needs steps"),
    ([dict(steps=2, sources=[dict(kind="llava", path="x")], weight=1)], r"data.curriculum\[0\]"),
    ([dict(steps=15, sources=[dict(kind="llava", path="x")])] * 2, "take 30 steps, but train.steps is 20"),
    ([dict(steps=2, sources=[dict(path="x")])], r"data.curriculum\[0\].sources\[0\]: needs kind and path"),
])
def test_bad_phases_are_named(config, phases, match):
  bad = C.apply_overrides(config, [])
  bad.data.curriculum = phases
  with pytest.raises(ValueError, match=match):
    _iterator(bad)
