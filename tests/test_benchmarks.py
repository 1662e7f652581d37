"""The side-by-side benchmarks' code paths at toy sizes (no timing is asserted).

benchmarks/matched.py's Transformer is a baseline the README's ratios rest on, so it is checked against
independent references: the blocked prefill attention against `jax.nn.dot_product_attention` (the
T×T softmax), and the KV-cache decode against the full forward. Then benchmarks/efficiency.py runs end
to end at a toy shape, and benchmarks/common.py's rule that a committed result is never replaced unless
asked.
"""

import importlib.util
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import common  # noqa: E402
import efficiency  # noqa: E402
import matched  # noqa: E402
import train_throughput  # noqa: E402

TOY = matched.Shape("toy", width=64, layers=2, vocab=256, encoder_width=64, encoder_layers=1, image_size=32)


def rel_rms(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.sqrt(np.mean((x - ref) ** 2) / np.mean(ref ** 2)))


def test_blocked_attention_matches_full_softmax():
  """fp32, 4 blocks of 16: the online softmax sums in another order; relative RMS ≤ 1e-5."""
  q, k, v = (jax.random.normal(key, (2, 64, 2, 32)) for key in jax.random.split(jax.random.key(0), 3))
  ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  err = rel_rms(matched.blocked_causal_attention(q, k, v, block=16), ref)
  assert err < 1e-5, f"blocked causal attention vs dot_product_attention: rel RMS {err:.2e}"


def test_kv_cache_decode_matches_full_forward():
  """Prefill T tokens, then two cached decode steps: the logits of positions T and T + 1 equal the
  full forward's (fp32, relative RMS ≤ 1e-5)."""
  config = matched.modrwkv_config(TOY, 64)
  tconfig = matched.transformer_config(config)
  params = matched.init_transformer(tconfig, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (1, 34), 0, TOY.vocab)
  x = matched.transformer_embed(tconfig, params, tokens)
  full = jax.jit(matched.transformer_forward, static_argnums=0)(tconfig, params, x)  # [1, 34, V]
  logits, cache = jax.jit(matched.transformer_prefill, static_argnums=(0, 3))(tconfig, params, x[:, :32], 48)
  assert rel_rms(logits, full[:, 31]) < 1e-5
  decode, write = jax.jit(matched.transformer_decode, static_argnums=0), jax.jit(matched.write_cache)
  for t in (32, 33):
    logits, entries = decode(tconfig, params, tokens[:, t], cache, jnp.int32(t))
    cache = write(cache, entries, jnp.int32(t))
    err = rel_rms(logits, full[:, t])
    assert err < 1e-5, f"cached decode at position {t} vs full forward: rel RMS {err:.2e}"


def test_matched_parameter_counts():
  """The Flax Transformer and HF LLaVA's text model hold the same parameters, within 1 % of RWKV-7's."""
  config = matched.modrwkv_config(TOY, 64)
  tconfig = matched.transformer_config(config)
  rwkv = matched.count(jax.eval_shape(lambda: matched.rwkv7.init_params(config.rwkv, jax.random.key(0))))
  flax_lm = matched.count(jax.eval_shape(lambda: matched.init_transformer(tconfig, jax.random.key(0))))
  llava = matched.llava_model(TOY, tconfig, 128)
  hf_lm = sum(p.numel() for p in llava.model.language_model.parameters()) + llava.lm_head.weight.numel()
  assert flax_lm == hf_lm, (flax_lm, hf_lm)
  assert abs(flax_lm / rwkv - 1) < 0.01, (flax_lm, rwkv)


def test_train_recipe_is_the_matched_shape():
  """train_throughput's phase-II config builds the model efficiency.py measures (no compilation)."""
  config = train_throughput.recipe(matched.SHAPES["cpu-d128"], 2, 1024)
  model = train_throughput.trainer.build(config)[0]
  reference = matched.modrwkv_config(matched.SHAPES["cpu-d128"], 1024)
  for k in ("vocab_size", "n_layer", "n_embd", "dim_ffn", "dim_w", "dim_a", "dim_v", "dim_g", "dtype"):
    assert getattr(model.rwkv, k) == getattr(reference.rwkv, k), k
  assert model.rwkv.scan_layers and model.rwkv.remat == "block"  # the recipe's layout, kept
  enc = model.modality("image").encoder_config
  assert (enc.hidden_size, enc.num_layers, enc.num_positions) == (128, 2, 576)


def test_efficiency_end_to_end_at_toy_size(tmp_path, monkeypatch):
  monkeypatch.setitem(matched.SHAPES, "toy", TOY)
  has_matplotlib = importlib.util.find_spec("matplotlib") is not None  # in the bench extra, not the test extra
  if not has_matplotlib:
    monkeypatch.setattr(efficiency, "plot", lambda result, path: None)
  out = tmp_path / "efficiency.json"
  assert efficiency.main(["--shape", "toy", "--contexts", "32", "64", "--decode", "2", "--max-runs", "1",
                          "--out", str(out)]) == 0
  result = json.loads(out.read_text())
  assert set(result["results"]) == {"modrwkv", "transformer", "llava"}
  for rows in result["results"].values():
    for c in ("32", "64"):
      row = rows[c]
      assert row["prefill_s"] > 0 and row["decode_ms_per_token"] > 0 and row["peak_bytes"] > 0, row
  # ModRWKV's decode step is one program whatever the context: its memory cannot grow.
  m = result["results"]["modrwkv"]
  assert m["64"]["decode_peak_bytes"] == m["32"]["decode_peak_bytes"]
  assert result["results"]["transformer"]["64"]["kv_cache_bytes"] > result["results"]["transformer"]["32"]["kv_cache_bytes"]
  assert "prefill_crossover_vs_transformer" in result["derived"]
  if has_matplotlib:
    assert (tmp_path / "efficiency.png").stat().st_size > 0


def test_committed_results_are_kept_unless_asked(tmp_path, monkeypatch):
  results, runs = tmp_path / "results", tmp_path / "runs"
  results.mkdir()
  monkeypatch.setattr(common, "RESULTS", str(results))
  monkeypatch.setattr(common, "RUNS", str(runs))
  monkeypatch.delenv("BENCH_OVERWRITE", raising=False)
  assert common.output_path("x-cpu.json") == str(results / "x-cpu.json")  # nothing to keep yet
  (results / "x-cpu.json").write_text("{}")
  fresh = common.output_path("x-cpu.json")
  assert fresh.startswith(str(runs)) and fresh.endswith(".json") and "x-cpu-" in fresh
  assert common.output_path("x-cpu.json", overwrite=True) == str(results / "x-cpu.json")
  assert common.output_path("x-cpu.json", out="/elsewhere.json") == "/elsewhere.json"
  monkeypatch.setenv("BENCH_OVERWRITE", "1")
  assert common.output_path("x-cpu.json") == str(results / "x-cpu.json")
  monkeypatch.setenv("BENCH_OVERWRITE", "0")
  assert common.output_path("x-cpu.json").startswith(str(runs))


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
