"""Generation vs an explicit step-by-step argmax loop over `forward` (the definition of greedy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modrwkv_jax import generate as gen
from modrwkv_jax.models import rwkv7
from helpers import noisy_params, rel_rms_err

CONFIG = rwkv7.RWKV7Config(vocab_size=61, n_layer=2, n_embd=64, head_size=32, dim_w=8, dim_a=8, dim_v=4,
                           dim_g=8, dim_ffn=128)


@pytest.fixture(scope="module")
def params():
  return noisy_params(CONFIG, 5)


def test_greedy_matches_stepwise_argmax(params):
  prompt = [3, 14, 15, 9, 26, 53]
  rows, state = gen.generate(CONFIG, params, prompt, max_new_tokens=12, stop_token=None)
  # Independent loop: re-run the whole growing sequence each step, no state carried. The
  # sequence lives right-padded in a fixed buffer (mask = real tokens) so forward compiles once.
  seq = list(prompt)
  fwd = jax.jit(rwkv7.forward, static_argnums=0)
  for _ in range(12):
    buf, mask = np.zeros((1, 18), np.int32), np.zeros((1, 18), bool)
    buf[0, :len(seq)], mask[0, :len(seq)] = seq, True
    logits, _ = fwd(CONFIG, params, jnp.asarray(buf), mask=jnp.asarray(mask))
    seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
  assert rows[0] == seq[len(prompt):]
  # The returned state is the state after prompt + all generated tokens.
  _, want = rwkv7.forward(CONFIG, params, jnp.asarray([seq]))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want)):
    assert rel_rms_err(a, b) < 1e-5


def test_stop_token_ends_row_and_is_fed(params):
  prompt = [3, 14, 15, 9, 26, 53]
  free, _ = gen.generate(CONFIG, params, prompt, max_new_tokens=12, stop_token=None)
  stop = free[0][4]  # make the 5th generated token the stop token
  rows, state = gen.generate(CONFIG, params, prompt, max_new_tokens=12, stop_token=stop)
  cut = free[0][: free[0].index(stop) + 1]
  assert rows[0] == cut
  _, want = rwkv7.forward(CONFIG, params, jnp.asarray([prompt + cut]))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want)):
    assert rel_rms_err(a, b) < 1e-5


@pytest.mark.parametrize("side", ["left", "right", "interior"])
def test_padded_batch_matches_single_prompts(params, side):
  """Padding on either side or inside a prompt never changes its answer: each row continues from its own
  last real token (padding leaves the state untouched)."""
  prompts = [[3, 14, 15, 9, 26, 53], [7, 7, 1], [5]]
  T = 8
  tokens, mask = np.zeros((3, T), np.int32), np.zeros((3, T), bool)
  for i, p in enumerate(prompts):
    if side == "left":
      where = np.arange(T - len(p), T)
    elif side == "right":
      where = np.arange(len(p))
    else:  # a gap after the first token, and padding at both ends
      where = np.asarray([1] + list(range(3, 2 + len(p))))
    tokens[i, where], mask[i, where] = p, True
  rows, _ = gen.generate(CONFIG, params, tokens, mask=jnp.asarray(mask), max_new_tokens=6, stop_token=None)
  for i, p in enumerate(prompts):
    single, _ = gen.generate(CONFIG, params, p, max_new_tokens=6, stop_token=None)
    assert rows[i] == single[0], (side, i)


def test_sampling_is_seeded_and_respects_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  draws = [int(gen.sample_logits(logits, jax.random.key(s), 1.0, 0.7)[0]) for s in range(200)]
  assert set(draws) <= {0, 1}  # 0.5 + 0.3 reaches 0.7: tokens 2 and 3 are cut
  assert 0.5 < draws.count(0) / len(draws) < 0.75  # renormalised: 0.625
  assert int(gen.sample_logits(logits, jax.random.key(0))[0]) == 0  # greedy


def test_prompts_are_validated_at_the_boundary(params):
  """The jitted model does no value checks (they would behave differently under jit); generate and
  score check their concrete prompts and name the bad id."""
  V = CONFIG.vocab_size
  with pytest.raises(ValueError, match=rf"generate: prompt: token id {V} is outside the vocabulary \[0, {V}\)"):
    gen.generate(CONFIG, params, [1, 2, V], max_new_tokens=2)
  with pytest.raises(ValueError, match=r"generate: prompt: token id -1 is outside"):
    gen.generate(CONFIG, params, np.asarray([[1, -1]]), max_new_tokens=2)
  with pytest.raises(ValueError, match=r"score: candidate: token id"):
    gen.score(CONFIG, params, [1, 2], [[3], [V + 5]])


def test_sampling_settings_are_checked_and_zero_new_tokens_returns_the_prompt_state(params):
  prompt = [3, 14, 15]
  for bad, match in (({"temperature": float("nan")}, "temperature"), ({"temperature": -1.0}, "temperature"),
                     ({"top_p": 0.0}, "top_p"), ({"top_k": -2}, "top_k"), ({"max_new_tokens": -1}, "max_new_tokens"),
                     ({"presence_penalty": float("nan")}, "presence_penalty"),
                     ({"frequency_penalty": float("inf")}, "frequency_penalty")):
    with pytest.raises(ValueError, match=match):
      gen.generate(CONFIG, params, prompt, **{"max_new_tokens": 2, **bad})
  rows, state = gen.generate(CONFIG, params, prompt, max_new_tokens=0)
  assert rows == [[]]
  _, want = rwkv7.forward(CONFIG, params, jnp.asarray([prompt]))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want)):
    assert rel_rms_err(a, b) < 1e-5


def test_prefill_runs_the_head_at_each_rows_last_real_position_only(params):
  """`_prefill` = forward's logits at each row's last real position (padding anywhere), and no [B, T, V]
  logits exist in its program (at V = 65,536 they are 256 KiB per prompt token)."""
  V, T = CONFIG.vocab_size, 8
  tokens = np.asarray([[3, 14, 15, 9, 26, 53, 5, 8]] * 3, np.int32)
  mask = np.ones((3, T), bool)
  mask[0, 5:] = False  # right padding: last real position 4
  mask[1, :6] = False  # left padding: 7
  mask[2, [2, 3, 7]] = False  # inside and at the end: 6
  last, state = gen._prefill(CONFIG, params, jnp.asarray(tokens), None, mask=jnp.asarray(mask))
  logits, want_state = rwkv7.forward(CONFIG, params, jnp.asarray(tokens), mask=jnp.asarray(mask))
  want = np.asarray(logits)[np.arange(3), [4, 7, 6]]
  assert last.shape == (3, V) and rel_rms_err(last, want) < 1e-5
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want_state)):
    assert rel_rms_err(a, b) < 1e-5
  program = gen._prefill.lower(CONFIG, params, jnp.asarray(tokens), None, mask=jnp.asarray(mask)).as_text()
  assert f"3x{V}xf32" in program and f"3x{T}x{V}x" not in program
  # One row (the head takes it twice: XLA:CPU's 1-row bfloat16 matmul is slow) gives the same logits.
  one, _ = gen._prefill(CONFIG, params, jnp.asarray(tokens[:1]), None)
  alone, _ = rwkv7.forward(CONFIG, params, jnp.asarray(tokens[:1]))
  assert one.shape == (1, V) and rel_rms_err(one, alone[:, -1]) < 1e-5
