"""Reading and writing tensor files without torch: PyTorch `.pth` (zip) and safetensors.

`read_pth` rebuilds the tensors of a `torch.save` zip archive with a restricted unpickler: the only
globals it resolves are the tensor-rebuild functions, storage types and `OrderedDict`; anything
else (code, custom classes, optimizer objects) is refused with an error that names the file and
the global. Storages are memory-mapped, so a multi-GB checkpoint costs no copy until a tensor is
converted. `write_pth` writes the same format (protocol 2 pickle, storages 64-byte aligned), which
`torch.load(..., weights_only=True)` and the `rwkv` package read. `read_safetensors` parses the
safetensors header itself so that bfloat16 works (numpy has no bfloat16; we use ml_dtypes).

All functions return / take flat `dict[str, np.ndarray]` in the file's own dtype and layout.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

# torch storage class name -> numpy dtype (little-endian).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"), "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
}
_DTYPE_STORAGES = {v: k for k, v in _STORAGE_DTYPES.items()}

_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}


class _StorageType:
  """Stands in for a torch storage class during unpickling; carries only the dtype."""

  def __init__(self, name: str):
    self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(storage[storage_offset])
  flat = storage[storage_offset:]
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(flat, shape=size, strides=[s * itemsize for s in stride],
                                         writeable=False)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


def _stored_member_offset(path: str, fp, info: zipfile.ZipInfo) -> int:
  """Byte offset of an uncompressed member's data inside the zip file."""
  if info.compress_type != zipfile.ZIP_STORED:
    raise ValueError(f"{path}: member {info.filename} is compressed; torch.save never compresses storages")
  fp.seek(info.header_offset)
  header = fp.read(30)
  if header[:4] != b"PK\x03\x04":
    raise ValueError(f"{path}: corrupt zip local header for {info.filename}")
  name_len, extra_len = struct.unpack("<HH", header[26:30])
  return info.header_offset + 30 + name_len + extra_len


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `torch.save` zip checkpoint holding a (possibly nested under 'state_dict') dict of tensors.

  Returns:
    {name: array}; arrays are read-only views of a memory map of the file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not a zip-format PyTorch checkpoint (the legacy pre-1.6 torch.save "
                     "format is not supported; re-save it with a recent torch.save)")
  with zipfile.ZipFile(path) as zf, open(path, "rb") as fp:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise ValueError(f"{path}: expected one '<archive>/data.pkl' in the zip, found {pkl or 'none'}")
    prefix = pkl[0][: -len("data.pkl")]
    infos = {i.filename: i for i in zf.infolist()}

    def persistent_load(pid):
      if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        raise pickle.UnpicklingError(f"{path}: unsupported persistent id {pid!r}")
      _, storage_type, key, _, numel = pid
      if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"{path}: storage {key} has unsupported type {storage_type!r}")
      member = f"{prefix}data/{key}"
      if member not in infos:
        raise ValueError(f"{path}: storage file {member} is missing from the archive")
      offset = _stored_member_offset(path, fp, infos[member])
      nbytes = infos[member].file_size
      if nbytes != numel * storage_type.dtype.itemsize:
        raise ValueError(f"{path}: {member} has {nbytes} bytes; expected {numel} x {storage_type.name}")
      if numel == 0:
        return np.zeros((0,), storage_type.dtype)
      return np.memmap(path, dtype=storage_type.dtype, mode="r", offset=offset, shape=(numel,))

    class Unpickler(pickle.Unpickler):

      def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
          return _ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"{path}: refusing to load global '{module}.{name}': this reader only rebuilds tensors "
            "(the file may contain code or non-tensor objects)")

      def persistent_load(self, pid):
        return persistent_load(pid)

    with zf.open(pkl[0]) as f:
      obj = Unpickler(f).load()
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
  bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if bad:
    raise ValueError(f"{path}: entries {bad[:5]} are not tensors; expected a flat state_dict")
  return dict(obj)


class _PickleWriter:
  """Emits the protocol-2 pickle opcodes torch.save produces for a flat dict of tensors."""

  def __init__(self):
    self.out = bytearray(b"\x80\x02")  # PROTO 2

  def raw(self, b: bytes):
    self.out += b

  def glob(self, module: str, name: str):
    self.out += b"c" + f"{module}\n{name}\n".encode()

  def str(self, s: str):
    data = s.encode("utf-8")
    self.out += b"X" + struct.pack("<I", len(data)) + data

  def int(self, n: int):
    if 0 <= n < 256:
      self.out += b"K" + bytes([n])
    elif -(2**31) <= n < 2**31:
      self.out += b"J" + struct.pack("<i", n)
    else:
      data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
      self.out += b"\x8a" + bytes([len(data)]) + data

  def tuple(self, items):
    self.out += b"("
    for i in items:
      self.int(i)
    self.out += b"t"

  def ordered_dict(self):
    self.glob("collections", "OrderedDict")
    self.out += b")R"  # EMPTY_TUPLE, REDUCE


def write_pth(tensors: dict[str, np.ndarray], path: str | os.PathLike, *, archive: str = "archive") -> None:
  """Writes a flat dict of arrays as a torch.save zip checkpoint (contiguous, little-endian)."""
  path = os.fspath(path)
  p = _PickleWriter()
  p.ordered_dict()
  p.raw(b"(")  # MARK for SETITEMS
  storages = []
  for key, (name, array) in enumerate(tensors.items()):
    array = np.asarray(array, order="C")  # (ascontiguousarray would turn 0-d into 1-d)
    if array.dtype not in _DTYPE_STORAGES:
      raise ValueError(f"write_pth: tensor {name!r} has dtype {array.dtype}, which torch storages cannot hold")
    storages.append(array)
    p.str(name)
    p.glob("torch._utils", "_rebuild_tensor_v2")
    p.raw(b"(")  # args
    p.raw(b"(")  # persistent id
    p.str("storage")
    p.glob("torch", _DTYPE_STORAGES[array.dtype])
    p.str(str(key))
    p.str("cpu")
    p.int(array.size)
    p.raw(b"tQ")  # TUPLE, BINPERSID
    p.int(0)  # storage offset
    p.tuple(array.shape)
    p.tuple([int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)])  # contiguous strides
    p.raw(b"\x89")  # requires_grad=False
    p.ordered_dict()  # backward hooks
    p.raw(b"tR")  # TUPLE, REDUCE
  p.raw(b"u.")  # SETITEMS, STOP

  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:

    def put(name: str, data: bytes, align: int = 64):
      info = zipfile.ZipInfo(f"{archive}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_STORED
      # Pad the local header with an extra field so the data starts on an `align` boundary,
      # as torch does (its mmap loader prefers aligned storages).
      start = zf.fp.tell() + 30 + len(info.filename.encode()) + 4
      pad = (-start) % align
      info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
      zf.writestr(info, data)

    put("data.pkl", bytes(p.out))
    put("byteorder", b"little")
    for key, array in enumerate(storages):
      put(f"data/{key}", array.tobytes())
    put("version", b"3\n")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a .safetensors file (all dtypes incl. BF16) as memory-mapped numpy arrays."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such safetensors file")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) != 8:
      raise ValueError(f"{path}: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > size - 8:
      raise ValueError(f"{path}: corrupt safetensors header length {header_len}")
    try:
      header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: corrupt safetensors header: {e}") from e
  base = 8 + header_len
  out = {}
  for name, meta in header.items():
    if name == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(meta.get("dtype"))
    if dtype is None:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {meta.get('dtype')!r}")
    begin, end = meta["data_offsets"]
    shape = tuple(meta["shape"])
    if end - begin != int(np.prod(shape)) * dtype.itemsize or base + end > size:
      raise ValueError(f"{path}: tensor {name!r} has inconsistent data offsets {begin}..{end} for shape {shape}")
    if end == begin:
      out[name] = np.zeros(shape, dtype)
    else:
      out[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + begin, shape=shape)
  return out


def read_safetensors_dir(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads one .safetensors file, or every shard of an HF snapshot folder."""
  path = os.fspath(path)
  if os.path.isfile(path):
    return read_safetensors(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: neither a .safetensors file nor a folder")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"{path}: no .safetensors files in this folder")
  out = {}
  for name in files:
    out.update(read_safetensors(os.path.join(path, name)))
  return out
