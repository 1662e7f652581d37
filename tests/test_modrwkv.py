"""ModRWKV: projectors vs torch modules, splicing in both layouts, loss, gradients, generation, Chat.

References: torch `nn.Conv1d` / `nn.Linear` / `nn.LayerNorm` stacks for the adapters (docs/architecture.md);
hand-built embedding sequences for the layouts; one full forward for token-by-token decoding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from modrwkv_jax import generate as gen
from modrwkv_jax import peft, sharding
from modrwkv_jax.chat import Chat, user_turn, user_turn_ids
from modrwkv_jax.models import modrwkv, rwkv7
from modrwkv_jax.models import projector as proj
from modrwkv_jax.models.encoders import siglip, whisper
from modrwkv_jax.tokenizer import world_tokenizer
from helpers import forbid_random_init, rel_rms_err

RWKV = rwkv7.RWKV7Config(vocab_size=65536, n_layer=2, n_embd=32, head_size=16, dim_w=8, dim_a=8, dim_v=4,
                         dim_g=8, dim_ffn=64)
SIGLIP = siglip.SiglipConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, patch_size=8,
                             image_size=16)
WHISPER = whisper.WhisperConfig(num_mel_bins=8, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                                encoder_ffn_dim=32, max_source_positions=16)
CONFIG = modrwkv.ModRWKVConfig(RWKV, (
    ("image", modrwkv.ModalityConfig("siglip", SIGLIP, proj.ProjectorConfig("vision", 16, 32, None, 2))),
    ("audio", modrwkv.ModalityConfig("whisper", WHISPER, proj.ProjectorConfig("audio", 16, 32, (3, 2)))),
), max_length=256)


def noisy_params(tree, key, scale):
  """tree + scale·N(0, 1) on every leaf, so zero-initialised matrices matter too."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def params():
  p = modrwkv.init_params(CONFIG, jax.random.key(0))
  return noisy_params(p, jax.random.key(1), 0.05)


@pytest.fixture(scope="module")
def items():
  rs = np.random.RandomState(0)
  images = rs.randn(2, 16, 16, 3).astype(np.float32)
  mels = rs.randn(1, 32, 8).astype(np.float32)
  mel_mask = np.arange(32)[None] < 14  # 14 real frames of 32
  return images, mels, mel_mask


# ---------------------------------------------------------------------------------------------
# Projectors against torch.

def _t(x):
  return torch.from_numpy(np.array(x, np.float32))


def test_vision_adapter_matches_torch():
  cfg = proj.ProjectorConfig("vision", 12, 20, (3, 2), hidden_mult=2)
  p = noisy_params(proj.init_params(cfg, jax.random.key(2)), jax.random.key(3), 0.1)
  x = np.random.RandomState(1).randn(2, 11, 12).astype(np.float32)
  got, mask = proj.forward(cfg, p, jnp.asarray(x), jnp.ones((2, 11), bool))
  conv = torch.nn.Conv1d(12, 12, 3, 2, bias=False)
  conv.weight.data = _t(p["compressor"]["kernel"]).permute(2, 1, 0)
  fc1, fc2, ln = torch.nn.Linear(12, 40), torch.nn.Linear(40, 20), torch.nn.LayerNorm(20)
  for m, name in ((fc1, "fc1"), (fc2, "fc2")):
    m.weight.data, m.bias.data = _t(p[name]["kernel"]).T, _t(p[name]["bias"])
  ln.weight.data, ln.bias.data = _t(p["norm"]["scale"]), _t(p["norm"]["bias"])
  with torch.no_grad():
    c = conv(_t(x).transpose(1, 2)).transpose(1, 2)
    h = fc2(torch.relu(fc1(c)))
    want = (h + ln(h)).numpy()
  assert got.shape == want.shape == (2, cfg.output_length(11), 20) and bool(mask.all())
  assert rel_rms_err(got, want) < 1e-6


def test_audio_adapter_matches_torch_on_unpadded_items():
  """A padded batch gives, at real positions, what torch gives on each item alone."""
  cfg = proj.ProjectorConfig("audio", 8, 16, (3, 2))
  p = noisy_params(proj.init_params(cfg, jax.random.key(4)), jax.random.key(5), 0.1)
  rs = np.random.RandomState(2)
  lengths = [19, 11]
  x = rs.randn(2, 19, 8).astype(np.float32)
  mask = np.arange(19)[None] < np.asarray(lengths)[:, None]
  got, got_mask = proj.forward(cfg, p, jnp.asarray(x), jnp.asarray(mask))
  comp = torch.nn.Conv1d(8, 8, 3, 2, bias=False)
  comp.weight.data = _t(p["compressor"]["kernel"]).permute(2, 1, 0)
  conv = torch.nn.Conv1d(8, 32, 3, 2, padding=2)
  conv.weight.data, conv.bias.data = _t(p["conv"]["kernel"]).permute(2, 1, 0), _t(p["conv"]["bias"])
  fc1, fc2 = torch.nn.Linear(32, 32), torch.nn.Linear(32, 16)
  for m, name in ((fc1, "fc1"), (fc2, "fc2")):
    m.weight.data, m.bias.data = _t(p[name]["kernel"]).T, _t(p[name]["bias"])
  for b, n in enumerate(lengths):
    with torch.no_grad():
      h = conv(comp(_t(x[b:b + 1, :n]).transpose(1, 2))).transpose(1, 2)
      want = fc2(torch.relu(fc1(h)))[0].numpy()
    assert want.shape[0] == cfg.output_length(n) == int(got_mask[b].sum())
    assert rel_rms_err(got[b, :want.shape[0]], want) < 1e-6
    assert float(jnp.abs(got[b, want.shape[0]:]).max(initial=0.0)) == 0.0


def test_series_adapter_and_config_errors():
  cfg = proj.ProjectorConfig("series", 6, 16, None, hidden_mult=4)
  p = proj.init_params(cfg, jax.random.key(6))
  assert p["fc1"]["kernel"].shape == (6, 24) and p["fc2"]["kernel"].shape == (24, 16)
  with pytest.raises(ValueError, match="kind 'text' is not one of"):
    proj.ProjectorConfig("text", 6, 16)
  with pytest.raises(ValueError, match=r"features have shape \(1, 4, 5\); expected \[N, L, C_enc=6\]"):
    proj.forward(cfg, p, jnp.zeros((1, 4, 5)), jnp.ones((1, 4), bool))
  with pytest.raises(ValueError, match="projector outputs 16 features; the RWKV-7 embedding width is 32"):
    modrwkv.ModRWKVConfig(RWKV, (("image", modrwkv.ModalityConfig("siglip", SIGLIP, proj.ProjectorConfig("vision", 16, 16))),))
  with pytest.raises(ValueError, match="encoder 'whisper' encodes audio, not image"):
    modrwkv.ModRWKVConfig(RWKV, (("image", modrwkv.ModalityConfig("whisper", WHISPER, proj.ProjectorConfig("audio", 16, 32))),))


# ---------------------------------------------------------------------------------------------
# Splicing.

def _image_tokens(params, image):
  feats = siglip.forward(SIGLIP, params["encoders"]["image"], jnp.asarray(image)[None])
  return proj.forward(CONFIG.modality("image").projector, params["projectors"]["image"], feats,
                      jnp.ones(feats.shape[:2], bool))[0][0]


def test_prefix_layout_is_the_papers_sequence(params, items):
  images, _, _ = items
  tok = world_tokenizer()
  text = tok.encode(user_turn("What is it?")) + tok.encode(" A cat.\x17")
  L = modrwkv.capacity(CONFIG, "image", (16, 16, 3))
  assert L == modrwkv.num_tokens(CONFIG, "image", 0) == 4
  T = L + len(text)
  batch = {"tokens": np.asarray([[0] * L + text]), "mask": np.ones((1, T), bool),
           "image": images[None, :1], "image_pos": np.asarray([list(range(L)) + [-1] * len(text)])}
  x, mask, pos = modrwkv.embed_inputs(CONFIG, params, batch)
  want = jnp.concatenate([_image_tokens(params, images[0]),
                          rwkv7.embed(RWKV, params["rwkv"], jnp.asarray([text]))[0]])
  assert rel_rms_err(x[0], want) < 1e-6
  logits, _ = modrwkv.forward(CONFIG, params, batch)
  ref, _ = rwkv7.forward(RWKV, params["rwkv"], embeddings=want[None])
  assert rel_rms_err(logits, ref) < 1e-5


def test_placeholder_layout_two_images_and_one_audio(params, items):
  """"a <image> b <image> c <audio> d": every item's real tokens land where its placeholder was."""
  images, mels, mel_mask = items
  Li = modrwkv.capacity(CONFIG, "image", (16, 16, 3))
  La = modrwkv.capacity(CONFIG, "audio", (32, 8))
  na = modrwkv.num_tokens(CONFIG, "audio", int(mel_mask.sum()))
  assert 0 < na < La
  a, b, c, d = 11, 22, 33, 44
  seq, image_pos, audio_pos = [], [], []
  def put(ids, ipos=None, apos=None):
    for n, t in enumerate(ids):
      seq.append(t); image_pos.append(ipos[n] if ipos else -1); audio_pos.append(apos[n] if apos else -1)
  put([a]); put([0] * Li, ipos=list(range(Li))); put([b]); put([0] * Li, ipos=list(range(Li, 2 * Li)))
  put([c]); put([0] * na, apos=list(range(na))); put([d])
  T = len(seq)
  batch = {"tokens": np.asarray([seq]), "mask": np.ones((1, T), bool), "image": images[None],
           "image_pos": np.asarray([image_pos]), "audio": mels[None], "audio_mask": mel_mask[None],
           "audio_pos": np.asarray([audio_pos])}
  x, _, _ = modrwkv.embed_inputs(CONFIG, params, batch)
  audio_tok, audio_mask = modrwkv.encode_items(CONFIG, params, "audio", jnp.asarray(mels), jnp.asarray(mel_mask))
  assert int(audio_mask.sum()) == na
  text = rwkv7.embed(RWKV, params["rwkv"], jnp.asarray([[a, b, c, d]]))[0]
  want = jnp.concatenate([text[:1], _image_tokens(params, images[0]), text[1:2], _image_tokens(params, images[1]),
                          text[2:3], audio_tok[0, :na], text[3:]])
  assert rel_rms_err(x[0], want) < 1e-6


def test_sequence_longer_than_max_length_is_refused(params):
  batch = {"tokens": np.ones((1, 300), np.int32), "mask": np.ones((1, 300), bool)}
  with pytest.raises(ValueError, match="the sequence has 300 positions; max_length is 256"):
    modrwkv.forward(CONFIG, params, batch)


def test_loss_counts_only_labelled_positions(params, items):
  images, _, _ = items
  rs = np.random.RandomState(3)
  T = 10
  labels = np.full((2, T), -100)
  labels[0, 5:9] = rs.randint(0, 500, 4)
  labels[1, 4:6] = rs.randint(0, 500, 2)
  batch = {"tokens": rs.randint(1, 500, (2, T)), "labels": labels, "mask": np.ones((2, T), bool),
           "image": images[:, None], "image_pos": np.asarray([list(range(4)) + [-1] * 6] * 2)}
  value, metrics = modrwkv.loss(CONFIG, params, batch)
  logits, _ = modrwkv.forward(CONFIG, params, batch)
  logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
  nll = [-logp[b, t, labels[b, t]] for b, t in zip(*np.nonzero(labels != -100))]
  assert int(metrics["tokens"]) == 6
  np.testing.assert_allclose(float(value), np.mean(nll), rtol=1e-5)


def test_loss_terms_add_up_across_micro_batches(params, items):
  """loss_terms returns (Σ nll, count): two micro-batches summed, then divided once, give the loss of
  the whole batch although they hold different numbers of labels (what gradient accumulation and
  multi-host averaging need; a mean of per-micro-batch means would not)."""
  images, _, _ = items
  rs = np.random.RandomState(4)
  T = 10
  labels = np.full((2, T), -100)
  labels[0, 4:9] = rs.randint(0, 500, 5)  # 5 labels
  labels[1, 8:9] = rs.randint(0, 500, 1)  # 1 label
  batch = {"tokens": rs.randint(1, 500, (2, T)), "labels": labels, "mask": np.ones((2, T), bool),
           "image": images[:, None], "image_pos": np.asarray([list(range(4)) + [-1] * 6] * 2)}
  whole, metrics = modrwkv.loss(CONFIG, params, batch)
  parts = [modrwkv.loss_terms(CONFIG, params, {k: v[i:i + 1] for k, v in batch.items()}) for i in range(2)]
  nll_sum = sum(float(p[0]) for p in parts)
  count = sum(int(p[1]) for p in parts)
  assert count == int(metrics["tokens"]) == 6 and parts[0][1].dtype == jnp.int32
  np.testing.assert_allclose(nll_sum / count, float(whole), rtol=1e-5)
  mean_of_means = np.mean([float(p[0]) / int(p[1]) for p in parts])
  assert abs(mean_of_means - float(whole)) > 1e-3  # the weighting matters on this batch
  correct = sum(int(p[2]["correct"]) for p in parts)
  np.testing.assert_allclose(correct / count, float(metrics["accuracy"]), rtol=1e-6)


def _labelled_batch(items, seed, label_rows):
  """A 2-row batch with an image prefix; row b labels positions label_rows[b]."""
  images, _, _ = items
  rs = np.random.RandomState(seed)
  T = 12
  labels = np.full((2, T), -100)
  for b, positions in enumerate(label_rows):
    labels[b, positions] = rs.randint(0, 500, len(positions))
  mask = np.ones((2, T), bool)
  mask[1, -2:] = False  # right padding
  return {"tokens": rs.randint(1, 500, (2, T)), "labels": labels, "mask": mask, "image": images[:, None],
          "image_pos": np.asarray([list(range(4)) + [-1] * (T - 4)] * 2)}


def test_label_capacity_gives_the_every_position_loss_and_gradients(params, items):
  """label_capacity K runs the head at each row's first K label positions. Reference: float64 log-softmax
  of the full forward's logits at the label positions, and the every-position gradients. With K below the
  longest row (4 labels) the labels past each row's K-th are counted as over capacity and left out, and
  the host-side check refuses such a batch."""
  batch = _labelled_batch(items, 7, [[5, 6, 8, 10], [4, 9]])
  logits, _ = modrwkv.forward(CONFIG, params, batch)
  logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), -1))
  labels = batch["labels"]
  hits = [(b, t) for b, t in zip(*np.nonzero(labels >= 0))]
  terms = jax.jit(lambda p, b, k: modrwkv.loss_terms(CONFIG, p, b, label_capacity=k), static_argnums=2)
  nll, count, aux = terms(params, batch, 4)
  assert int(count) == 6 and int(aux["over_capacity"]) == 0
  assert int(aux["correct"]) == sum(int(np.argmax(logp[b, t]) == labels[b, t]) for b, t in hits)
  want_nll = -sum(logp[b, t, labels[b, t]] for b, t in hits)
  assert abs(float(nll) - want_nll) <= 1e-5 * abs(want_nll)

  def grads(capacity):
    fn = lambda p: modrwkv.loss_terms(CONFIG, p, batch, label_capacity=capacity)[0]
    return jax.tree.leaves(jax.jit(jax.grad(fn))(params))
  for got, want in zip(grads(4), grads(0)):
    if not np.any(np.asarray(want)):  # parts the batch does not reach (the audio encoder)
      assert not np.any(np.asarray(got))
    else:
      assert rel_rms_err(got, want) < 1e-5

  nll3, count3, aux3 = terms(params, batch, 3)  # row 0 loses its 4th label (position 10)
  assert int(count3) == 6 and int(aux3["over_capacity"]) == 1
  assert abs(float(nll3) - (want_nll + logp[0, 10, labels[0, 10]])) <= 1e-5 * abs(want_nll)
  modrwkv.check_label_capacity(labels, 4)
  modrwkv.check_label_capacity(labels, 0)
  with pytest.raises(ValueError, match="4 label tokens; train.label_capacity is 3"):
    modrwkv.check_label_capacity(labels, 3, where="step 7")


def test_label_capacity_runs_the_head_at_k_positions_only(params, items):
  """The traced program: with K = 4 the vocabulary head's matmul makes [B, K, V] logits and no
  [B, T, V]; without a capacity [B, T, V]."""
  batch = _labelled_batch(items, 8, [[5, 6], [4]])
  V = CONFIG.rwkv.vocab_size

  def head_shapes(capacity):
    jaxpr = jax.make_jaxpr(lambda p: modrwkv.loss_terms(CONFIG, p, batch, label_capacity=capacity))(params)
    found = set()

    def walk(jx):
      for eqn in jx.eqns:
        if eqn.primitive.name == "dot_general" and eqn.outvars[0].aval.shape[-1] == V:
          found.add(tuple(eqn.outvars[0].aval.shape))
        for value in eqn.params.values():
          for sub in (value if isinstance(value, (list, tuple)) else [value]):
            if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
              walk(sub.jaxpr)
            elif hasattr(sub, "eqns"):
              walk(sub)
    walk(jaxpr.jaxpr)
    return found
  assert head_shapes(0) == {(2, 12, V)}
  assert head_shapes(4) == {(2, 4, V)}


def test_negative_labels_are_ignored_and_out_of_vocabulary_labels_are_loud(params, items):
  images, _, _ = items
  rs = np.random.RandomState(6)
  T = 10
  labels = np.full((1, T), -100)
  labels[0, 5:8] = rs.randint(0, 500, 3)
  batch = {"tokens": rs.randint(1, 500, (1, T)), "labels": labels, "mask": np.ones((1, T), bool),
           "image": images[:1, None], "image_pos": np.asarray([list(range(4)) + [-1] * 6])}
  want = modrwkv.loss_terms(CONFIG, params, batch)
  other = dict(batch, labels=np.where(labels == -100, -1, labels))  # another codebase's ignore value
  got = modrwkv.loss_terms(CONFIG, params, other)
  assert int(got[1]) == int(want[1]) == 3
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
  bad = dict(batch, labels=np.where(np.arange(T) == 6, RWKV.vocab_size, labels))
  assert np.isnan(float(modrwkv.loss(CONFIG, params, bad)[0]))


def test_gradients_reach_adapters_and_rwkv_but_not_frozen_encoders(params, items):
  images, mels, mel_mask = items
  batch = {"tokens": np.asarray([[0] * 4 + [5, 6, 7, 8]]), "labels": np.asarray([[-100] * 4 + [6, 7, 8, -100]]),
           "mask": np.ones((1, 8), bool), "image": images[None, :1], "image_pos": np.asarray([[0, 1, 2, 3] + [-1] * 4])}
  grads = jax.grad(lambda p: modrwkv.loss(CONFIG, p, batch)[0])(params)
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(tree)))
  assert norm(grads["encoders"]) == 0.0
  assert norm(grads["projectors"]["image"]) > 0 and norm(grads["rwkv"]) > 0
  assert norm(grads["projectors"]["audio"]) == 0.0  # no audio in this batch


def test_projector_checkpoint_round_trip_and_mismatch(params, tmp_path):
  path = tmp_path / "proj.npz"
  modrwkv.save_projectors(params, path)
  with pytest.raises(TypeError, match="path comes last"):
    modrwkv.save_projectors(path, params)
  back = modrwkv.load_projectors(path, CONFIG)
  assert set(back) == {"projectors"}
  for x, y in zip(jax.tree.leaves(back["projectors"]), jax.tree.leaves(params["projectors"])):
    np.testing.assert_array_equal(x, y)
  other = modrwkv.ModRWKVConfig(RWKV, (("image", modrwkv.ModalityConfig(
      "siglip", SIGLIP, proj.ProjectorConfig("vision", 16, 32, None, 4))),))
  with pytest.raises(ValueError, match=r"projectors/image/fc1/bias' has shape \(64,\); this config expects \(128,\)"):
    modrwkv.load_projectors(path, other)


def test_forecasting_head_predicts_in_revin_units():
  """Forecast = head(hidden at the last real position); loss = MSE of (target − mean)/std; the
  de-normalised prediction is pred·std + mean. Checked against numpy on the model's own hidden state."""
  from modrwkv_jax.models.encoders import timeseries
  wave = timeseries.WaveNetConfig(in_channels=1, residual_channels=8, skip_channels=8, out_channels=16,
                                  dilations=(1, 2), num_stacks=1)
  cfg = modrwkv.ModRWKVConfig(RWKV, (("series", modrwkv.ModalityConfig(
      "wavenet", wave, proj.ProjectorConfig("series", 16, 32, (4, 4), hidden_mult=2))),), forecast_horizon=3)
  p = modrwkv.init_params(cfg, jax.random.key(4))
  rs = np.random.RandomState(5)
  L = 16
  n = cfg.modality("series").projector.output_length(L)
  series = (100 + 10 * rs.randn(2, 1, L)).astype(np.float32)
  target = (100 + 10 * rs.randn(2, 1, 3)).astype(np.float32)
  text = [7, 8, 9]
  T = n + len(text) + 2
  mask = np.ones((2, T), bool)
  mask[1, -2:] = False  # right padding: the forecast reads position T − 3 there
  batch = {"tokens": np.asarray([[0] * n + text + [5, 6]] * 2), "mask": mask, "series": series,
           "series_mask": np.ones((2, 1, L), bool), "series_pos": np.asarray([list(range(n)) + [-1] * (T - n)] * 2),
           "target": target}
  pred, pred_units = modrwkv.forecast(cfg, p, batch)
  x, m, _ = modrwkv.embed_inputs(cfg, p, batch)
  hidden, _ = rwkv7.forward(RWKV, p["rwkv"], embeddings=x, mask=m, hidden=True)
  last = np.asarray([T - 1, T - 3])
  want = np.stack([np.asarray(hidden)[b, last[b]] for b in range(2)]) @ np.asarray(p["forecast_head"]["kernel"])
  assert rel_rms_err(pred, want + np.asarray(p["forecast_head"]["bias"])) < 1e-5
  mean, std = series[:, 0].mean(-1, keepdims=True), series[:, 0].std(-1, keepdims=True)
  np.testing.assert_allclose(pred_units, np.asarray(pred) * std + mean, rtol=1e-4)
  value, metrics = modrwkv.forecast_loss(cfg, p, batch)
  np.testing.assert_allclose(value, np.mean((np.asarray(pred) - (target[:, 0] - mean) / std) ** 2), rtol=1e-4)
  np.testing.assert_allclose(metrics["mae"], np.mean(np.abs(np.asarray(pred_units) - target[:, 0])), rtol=1e-4)
  # The training objective runs the encoder and RWKV-7 once for both losses: its terms equal the two
  # separate functions', and its program has one forward's matrix products plus the forecasting head's.
  from modrwkv_jax.training import step as step_lib
  labelled = dict(batch, labels=np.where(np.arange(T)[None] >= n + 1, batch["tokens"], -100))
  terms = step_lib._objective_terms(cfg, p, labelled)
  nll, count, _ = modrwkv.loss_terms(cfg, p, labelled)
  se, n_values, _ = modrwkv.forecast_loss_terms(cfg, p, labelled)
  assert int(terms["tokens"]) == int(count) and int(terms["values"]) == int(n_values)
  assert rel_rms_err(terms["nll"], nll) < 1e-6 and rel_rms_err(terms["se"], se) < 1e-6
  dots = lambda fn: str(jax.make_jaxpr(fn)(p)).count("dot_general")
  assert dots(lambda q: step_lib._objective_terms(cfg, q, labelled)) == dots(
      lambda q: modrwkv.loss_terms(cfg, q, labelled)) + 1
  # Only rows that hold a series and target steps marked real count: a mixed batch, a padding row.
  masked = dict(batch, series_count=np.asarray([1, 0], np.int32),
                target_mask=np.asarray([[[True, True, False]], [[True, True, True]]]))
  value, metrics = modrwkv.forecast_loss(cfg, p, masked)
  err = (np.asarray(pred) - (target[:, 0] - mean) / std) ** 2
  np.testing.assert_allclose(value, err[0, :2].mean(), rtol=1e-4)
  assert int(metrics["values"]) == 2
  assert float(modrwkv.forecast_loss(cfg, p, dict(batch, series_count=np.zeros(2, np.int32)))[0]) == 0.0
  with pytest.raises(ValueError, match="forecast_horizon is 3"):
    modrwkv.forecast_loss(cfg, p, dict(batch, target=np.zeros((2, 1, 5), np.float32)))
  with pytest.raises(ValueError, match="forecast_horizon = 0"):
    modrwkv.forecast(CONFIG, p, batch)


def test_load_assembles_pth_snapshot_and_projectors(params, tmp_path):
  """modrwkv.load = rwkv7 .pth + HF snapshot (SiglipVisionModel.save_pretrained) + our projector file."""
  import transformers
  hf = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, patch_size=8, image_size=16)
  torch.manual_seed(0)
  transformers.SiglipVisionModel(hf).save_pretrained(tmp_path / "siglip")
  vcfg, vparams = siglip.load_hf(tmp_path / "siglip")
  config = modrwkv.ModRWKVConfig(RWKV, (("image", modrwkv.ModalityConfig(
      "siglip", vcfg, CONFIG.modality("image").projector)),), max_length=256)
  rwkv7.save_pth(RWKV, params["rwkv"], tmp_path / "rwkv.pth")
  modrwkv.save_projectors({"projectors": {"image": params["projectors"]["image"]}}, tmp_path / "proj.npz")
  loaded = modrwkv.load(config, tmp_path / "rwkv.pth", {"image": str(tmp_path / "siglip")}, tmp_path / "proj.npz")
  for got, want in ((loaded["rwkv"], params["rwkv"]), (loaded["encoders"]["image"], vparams),
                    (loaded["projectors"]["image"], params["projectors"]["image"])):
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Scanned layers, placed on a mesh, and not one random initialiser for what comes from files.
  scfg = modrwkv.ModRWKVConfig(RWKV.replace(scan_layers=True), (("image", modrwkv.ModalityConfig(
      "siglip", vcfg.replace(scan_layers=True), CONFIG.modality("image").projector)),), max_length=256)
  mesh = sharding.make_mesh()
  with pytest.MonkeyPatch.context() as mp:
    forbid_random_init(mp, [(rwkv7, "_init_boxed"), (rwkv7, "init_params"), (siglip, "init_params"),
                            (siglip, "_init_boxed"), (proj, "init_params")])
    scanned = modrwkv.load(scfg, tmp_path / "rwkv.pth", {"image": str(tmp_path / "siglip")}, tmp_path / "proj.npz",
                           mesh=mesh)
  assert rwkv7.is_scanned(scanned["rwkv"])
  for x, y in zip(jax.tree.leaves(rwkv7.unstack_layers(scanned["rwkv"])), jax.tree.leaves(params["rwkv"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert all(leaf.sharding.mesh == mesh for leaf in jax.tree.leaves(scanned))
  batch = {"tokens": np.asarray([[0] * 4 + [5, 6, 7]]), "mask": np.ones((1, 7), bool),
           "image": np.random.RandomState(0).randn(1, 1, 16, 16, 3).astype(np.float32),
           "image_pos": np.asarray([[0, 1, 2, 3, -1, -1, -1]])}
  want, _ = modrwkv.forward(config, loaded, batch)
  got, _ = modrwkv.forward(scfg, scanned, batch)
  assert rel_rms_err(got, want) < 1e-5
  with pytest.raises(ValueError, match="differs from the configured one"):
    modrwkv.load(CONFIG.__class__(RWKV, (("image", modrwkv.ModalityConfig(
        "siglip", SIGLIP.__class__(**{**vars(vcfg), "num_layers": 2}), CONFIG.modality("image").projector)),)),
        tmp_path / "rwkv.pth", {"image": str(tmp_path / "siglip")})


def test_init_params_with_peft_adapters_and_their_axes():
  """init_params(config, key, peft_config) adds the adapters to RWKV-7 (Bone blocks start at zero, so the
  model equals the base model), and param_logical_axes / abstract_params cover every leaf."""
  config = modrwkv.ModRWKVConfig(RWKV.replace(scan_layers=True), CONFIG.modalities, max_length=256)
  bone = peft.PeftConfig(method="bone", r=8)
  p = modrwkv.init_params(config, jax.random.key(0), bone)
  base = modrwkv.init_params(config, jax.random.key(0))
  assert p["rwkv"]["blocks"]["att"]["key"]["bone"].shape == (RWKV.n_layer, 8, RWKV.n_embd)
  assert not np.any(np.asarray(p["rwkv"]["blocks"]["att"]["key"]["bone"]))
  for kp, leaf in jax.tree_util.tree_leaves_with_path(base):
    node = p
    for k in kp:
      node = node[k.key]
    np.testing.assert_array_equal(node, leaf)
  shapes = modrwkv.abstract_params(config, bone)
  assert jax.tree.structure(shapes) == jax.tree.structure(p)
  axes = modrwkv.param_logical_axes(config, bone)
  assert axes["rwkv"]["blocks"]["att"]["key"]["bone"] == jax.sharding.PartitionSpec("layers", "adapter_rank", "attn")
  sharding.logical_to_mesh(axes, sharding.make_mesh())


# ---------------------------------------------------------------------------------------------
# Generation.

def test_token_by_token_decoding_equals_one_full_forward(params):
  p = params["rwkv"]
  prompt = jnp.asarray([[3, 17, 99, 5, 1024]])
  logits, state = rwkv7.forward(RWKV, p, prompt)
  step_logits, tokens = [logits[:, -1]], []
  done = jnp.zeros((1,), bool)
  for _ in range(6):
    tok = jnp.argmax(step_logits[-1], -1).astype(jnp.int32)
    tokens.append(int(tok[0]))
    l, state = gen.decode_step(RWKV, p, tok, state, done)
    step_logits.append(l)
  full, full_state = rwkv7.forward(RWKV, p, jnp.concatenate([prompt, jnp.asarray([tokens])], 1))
  np.testing.assert_allclose(jnp.stack(step_logits, 1)[0], full[0, 4:], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(state.wkv, full_state.wkv, rtol=1e-4, atol=1e-5)
  rows, _ = gen.generate(RWKV, p, [3, 17, 99, 5, 1024], max_new_tokens=6, stop_token=None)
  assert rows[0] == tokens


@pytest.mark.parametrize("side", ["left", "right", "inside"])
def test_ragged_batch_equals_one_by_one(params, side):
  """Left, right and interior padding all continue each row from its own last real token."""
  p = params["rwkv"]
  prompts = [[5, 6, 7], [9, 8, 7, 6, 5, 4, 3], [11, 12, 13, 14]]
  T = max(map(len, prompts)) + 2
  ids = np.full((3, T), 77, np.int32)  # padding holds a real-looking id: it must not matter
  mask = np.zeros((3, T), bool)
  for i, q in enumerate(prompts):
    where = {"left": np.arange(T - len(q), T), "right": np.arange(len(q)),
             "inside": np.r_[0, np.arange(T - len(q) + 1, T)]}[side]
    ids[i, where], mask[i, where] = q, True
  batched, _ = gen.generate(RWKV, p, ids, mask=jnp.asarray(mask), max_new_tokens=8, stop_token=None,
                            temperature=0.0)
  for q, row in zip(prompts, batched):
    alone, _ = gen.generate(RWKV, p, q, max_new_tokens=8, stop_token=None)
    assert row == alone[0], side


def test_sampling_controls(params):
  p = params["rwkv"]
  logits = jax.random.normal(jax.random.key(0), (3, 50))
  greedy = gen.sample_logits(logits, jax.random.key(1))
  np.testing.assert_array_equal(gen.sample_logits(logits, jax.random.key(2), temperature=1.0, top_k=1), greedy)
  np.testing.assert_array_equal(gen.sample_logits(logits, jax.random.key(2), temperature=1.0, top_p=1e-6), greedy)
  rows, _ = gen.generate(RWKV, p, [1, 2, 3], max_new_tokens=12, stop_token=None, presence_penalty=1e4)
  assert len(set(rows[0])) == 12  # a huge presence penalty never repeats a token
  streamed = []
  rows2, _ = gen.generate(RWKV, p, [1, 2, 3], max_new_tokens=12, stop_token=None, presence_penalty=1e4,
                          callback=lambda i, t: streamed.append(int(t[0])))
  assert rows2 == rows and streamed == rows[0]


def test_score_ranks_by_log_likelihood(params):
  p = params["rwkv"]
  prompt, candidates = [7, 8, 9], [[10], [11, 12], [13, 14, 15]]
  got = gen.score(RWKV, p, prompt, candidates)
  for c, value in zip(candidates, got):
    logits, _ = rwkv7.forward(RWKV, p, jnp.asarray([prompt + c]))
    logp = np.asarray(jax.nn.log_softmax(logits[0], -1), np.float64)
    want = sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(c))
    np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-4)


def test_decoding_memory_is_constant(params):
  p = params["rwkv"]
  _, short = gen.generate(RWKV, p, [1, 2], max_new_tokens=4, stop_token=None)
  rows, long = gen.generate(RWKV, p, [1, 2], max_new_tokens=1000, stop_token=None)
  assert len(rows[0]) == 1000
  for a, b in zip(jax.tree.leaves(short), jax.tree.leaves(long)):
    assert a.shape == b.shape and a.dtype == b.dtype
  assert sum(x.size for x in jax.tree.leaves(long)) == 2 * (2 * 32 + 2 * 16 * 16)  # L·B·(2D + H·N²)


# ---------------------------------------------------------------------------------------------
# Chat.

def test_chat_carries_state_like_one_long_prompt(params, items):
  """Two turns through Chat (nothing re-encoded) leave the state of one forward over the whole dialogue."""
  images, _, _ = items
  chat = Chat(CONFIG, params, max_new_tokens=5)
  first = chat.ask("What is it?", image=images[0])
  second = chat.ask("And now?")
  assert isinstance(first, str) and isinstance(second, str) and len(chat.history) == 2
  tok = world_tokenizer()
  ids = (user_turn_ids(tok, "What is it?") + chat.answer_ids[0] + user_turn_ids(tok, "And now?")
         + chat.answer_ids[1])
  seq = jnp.concatenate([_image_tokens(params, images[0]), rwkv7.embed(RWKV, params["rwkv"], jnp.asarray([ids]))[0]])
  _, whole = rwkv7.forward(RWKV, params["rwkv"], embeddings=seq[None])
  for x, y in zip(jax.tree.leaves(chat.state), jax.tree.leaves(whole)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="no encoder is configured for modality 'series'"):
    chat.ask("?", series=np.zeros(8))
  with pytest.raises(ValueError, match="empty turn"):
    chat.ask("")


def test_chat_checks_items_at_the_boundary(params, items):
  """Chat holds concrete items: the encoder's check_inputs runs on them before anything is compiled."""
  images, mels, _ = items
  chat = Chat(CONFIG, params, max_new_tokens=2)
  bad = images[0].copy()
  bad[3, 4, 1] = np.nan
  with pytest.raises(ValueError, match="siglip.check_inputs: image 0 holds NaN or inf pixels"):
    chat.ask("What is it?", image=bad)
  with pytest.raises(ValueError, match=r"\(1, 8, 8, 3\)|shape"):
    chat.ask("What is it?", image=images[0][:8, :8])
  assert chat.state is None and not chat.history  # nothing was consumed
