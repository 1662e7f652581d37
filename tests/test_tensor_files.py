"""Torch-free .pth / safetensors IO, checked against torch.save / torch.load and safetensors.torch."""

import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modrwkv_jax.tensor_files import read_pth, read_safetensors, read_safetensors_dir, write_pth


def _tensors():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 8, generator=g)
  return {
      "fp32": torch.randn(3, 5, generator=g),
      "bf16": torch.randn(4, 7, generator=g).to(torch.bfloat16),
      "fp16": torch.randn(2, 3, 4, generator=g).to(torch.float16),
      "int64": torch.arange(10),
      "scalar": torch.tensor(2.5),
      "transposed": base.t(),  # non-contiguous view
      "slice": base[2:5, 1:7:2],  # storage offset + strides, shares storage with 'transposed'
      "vec111": torch.randn(1, 1, 9, generator=g),
  }


def _np(t):
  if t.dtype == torch.bfloat16:
    return t.float().numpy().astype(ml_dtypes.bfloat16)
  return t.numpy()


def test_read_pth_matches_torch_save(tmp_path):
  tensors = _tensors()
  torch.save(tensors, tmp_path / "x.pth")
  got = read_pth(tmp_path / "x.pth")
  assert list(got) == list(tensors)
  for name, t in tensors.items():
    assert got[name].dtype == _np(t).dtype, name
    np.testing.assert_array_equal(got[name], _np(t), err_msg=name)


def test_read_pth_module_state_dict_and_parameters(tmp_path):
  """A module's state_dict (an OrderedDict whose `_metadata` torch.save sets with BUILD) and Parameters."""
  layer = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
  state = layer.state_dict(keep_vars=True)  # values are Parameters: pickled via _rebuild_parameter
  torch.save(state, tmp_path / "m.pth")
  got = read_pth(tmp_path / "m.pth")
  assert list(got) == list(state)
  for name, t in state.items():
    np.testing.assert_array_equal(got[name], t.detach().numpy(), err_msg=name)


def test_read_pth_state_dict_wrapper(tmp_path):
  torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "x.pth")
  np.testing.assert_array_equal(read_pth(tmp_path / "x.pth")["w"], np.ones(2, np.float32))


@pytest.mark.parametrize("mmap", [False, True])
def test_write_pth_loads_in_torch(tmp_path, mmap):
  arrays = {name: _np(t) for name, t in _tensors().items()}
  write_pth(arrays, tmp_path / "y.pth")
  back = torch.load(tmp_path / "y.pth", weights_only=True, mmap=mmap)
  assert list(back) == list(arrays)
  for name, a in arrays.items():
    t = back[name]
    assert tuple(t.shape) == a.shape, name
    np.testing.assert_array_equal(_np(t), a, err_msg=name)
  # Storages are 64-byte aligned inside the zip, like torch's own writer.
  with zipfile.ZipFile(tmp_path / "y.pth") as zf, open(tmp_path / "y.pth", "rb") as f:
    for info in zf.infolist():
      if "/data/" in info.filename:
        f.seek(info.header_offset + 26)
        n, m = np.frombuffer(f.read(4), "<u2")
        assert (info.header_offset + 30 + n + m) % 64 == 0, info.filename


def test_refuses_code_in_pickle(tmp_path):
  torch.save({"w": torch.ones(2), "layer": torch.nn.Linear(2, 2)}, tmp_path / "bad.pth")
  with pytest.raises(ValueError, match=r"bad.pth: refusing to load global 'torch.nn.modules.linear.Linear'"):
    read_pth(tmp_path / "bad.pth")


def test_refuses_non_tensor_values(tmp_path):
  torch.save({"w": torch.ones(2), "step": 3}, tmp_path / "x.pth")
  with pytest.raises(ValueError, match=r"x.pth: entries \['step'\] are not tensors"):
    read_pth(tmp_path / "x.pth")


def test_legacy_and_missing_files(tmp_path):
  (tmp_path / "old.pth").write_bytes(b"\x80\x02legacy pickle")
  with pytest.raises(ValueError, match="old.pth: not a zip-format PyTorch checkpoint"):
    read_pth(tmp_path / "old.pth")
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    read_pth(tmp_path / "nope.pth")


def test_read_safetensors_matches_safetensors_torch(tmp_path):
  tensors = {k: v.contiguous() for k, v in _tensors().items() if k not in ("slice",)}
  save_file(tensors, tmp_path / "a.safetensors", metadata={"format": "pt"})
  got = read_safetensors(tmp_path / "a.safetensors")
  for name, t in tensors.items():
    assert got[name].dtype == _np(t).dtype
    np.testing.assert_array_equal(got[name], _np(t), err_msg=name)
  # A folder of shards reads as one dict.
  save_file({"extra": torch.ones(3)}, tmp_path / "b.safetensors")
  assert set(read_safetensors_dir(tmp_path)) == set(tensors) | {"extra"}


def test_corrupt_safetensors(tmp_path):
  (tmp_path / "c.safetensors").write_bytes(b"\xff" * 8 + b"{}")
  with pytest.raises(ValueError, match="c.safetensors: corrupt safetensors header length"):
    read_safetensors(tmp_path / "c.safetensors")
