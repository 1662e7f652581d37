"""Reading and writing tensor files without torch: PyTorch `.pth` (zip) and safetensors.

`read_pth` rebuilds the tensors of a `torch.save` zip archive without running any of the file's code:
its pickle is interpreted by a small machine here (not `pickle.Unpickler`) that knows only the
opcodes torch.save writes for a dict of tensors, resolves only the tensor-rebuild functions, the
storage types and `OrderedDict` (to inert records, never to callables), and builds fresh objects on
every call, so no file can change how a later one loads. Every tensor view is checked against its
storage (offset, shape and strides within it, no aliasing) before it is made; storages are slices of
one memory map of the file, so a multi-GB checkpoint costs no copy until a tensor is converted
(big-endian archives are converted to little-endian copies). `write_pth` writes the same format
(protocol 2 pickle, storages 64-byte aligned), which `torch.load(..., weights_only=True)` and the
`rwkv` package read. `read_safetensors` parses the safetensors header itself so that bfloat16 works
(numpy has no bfloat16; we use ml_dtypes) and enforces the safetensors library's layout rules.

Any malformed, truncated or crafted input ends in a ValueError naming the file and the field
(tensor, zip member, header entry) at fault; FileNotFoundError only for paths that do not exist.
All functions return / take flat `dict[str, np.ndarray]` in the file's own dtype and layout.
"""

from __future__ import annotations

import json
import math
import os
import pickletools
import reprlib
import struct
import zipfile
from typing import NamedTuple

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
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U64": np.dtype("<u8"), "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}

# Bounds on what a file may make this process allocate before anything is checked.
_MAX_PICKLE_BYTES = 64 << 20  # data.pkl; a torch state dict pickle takes ~200 bytes per tensor.
# torch.save writes ~30 opcodes per tensor (4M: ~130k tensors); each allocates at most ~100 bytes, so a
# crafted pickle costs at most ~0.4 GB and ~3 s before it is refused.
_MAX_PICKLE_OPS = 4 << 20
_MAX_NDIM = 64  # numpy's limit
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's MAX_HEADER_SIZE
_MAX_JSON_BYTES = 64 << 20  # config.json, index.json

_MAX_INT = 2**63  # sizes, strides, offsets: torch and numpy index with int64


class _ShortRepr(reprlib.Repr):
  """reprlib that also shortens huge ints (a pickle's LONG4 can hold a 64 MiB one)."""

  def repr_int(self, x, level):
    return repr(x) if x.bit_length() <= 128 else f"<{x.bit_length()}-bit int>"


_short = _ShortRepr()
_short.maxstring = _short.maxother = 60  # error messages quote at most this much of a file's content


def _type(x) -> str:
  return type(x).__name__


# ----------------------------------------------------------------------------------------------------
# .pth: the pickle machine. It produces plain data (dict, list, tuple, str, int, ...) and the inert
# records below; nothing in it is callable or shared between calls.


class _Global(NamedTuple):
  """An allow-listed global, e.g. ('torch._utils', '_rebuild_tensor_v2'); REDUCE dispatches on it."""
  module: str
  name: str


class _StorageRef(NamedTuple):
  """A BINPERSID ('storage', <torch.XStorage>, key, location, numel): zip member `data/<key>`."""
  type_name: str
  key: str
  numel: int


class _TensorRef(NamedTuple):
  """_rebuild_tensor_v2(storage, offset, size, stride, ...) with its arguments unchecked (see _view)."""
  args: tuple


class _ODict(dict):
  """A dict made by `OrderedDict()`; the only object BUILD may target (torch sets `_metadata` on it)."""


_TORCH_GLOBALS = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    *(("torch", name) for name in _STORAGE_DTYPES),
}
_PUSH_ARG = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "UNICODE",
             "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_KEY_TYPES = (str, int, float, bytes, bool, type(None))  # never tuples: hashing a deep one recurses in C


def _unpickle(data: bytes, path: str, member: str):
  """Interprets the pickle `data` (member `member` of `path`) as torch.save writes it.

  Supports the data opcodes of protocols 0-5, `GLOBAL`/`STACK_GLOBAL` of `_TORCH_GLOBALS` only,
  `REDUCE` of those globals (`OrderedDict()` -> fresh dict; the rebuild functions -> records),
  `BINPERSID` of storages, and `BUILD` on an `OrderedDict` (its attributes are dropped). Everything
  else (INST/OBJ/NEWOBJ, extension codes, sets, byte arrays, out-of-band buffers, ...) is refused.
  """
  stack, marks, memo = [], [], {}
  storages: dict[str, _StorageRef] = {}
  ops = pickletools.genops(data)
  pos, name = 0, "?"

  def fail(msg):
    raise ValueError(f"{path}: {member} byte {pos}: {msg}")

  def pop():
    if len(stack) <= (marks[-1] if marks else 0):
      fail(f"{name} on an empty stack (corrupt pickle)")
    return stack.pop()

  def top():
    if len(stack) <= (marks[-1] if marks else 0):
      fail(f"{name} on an empty stack (corrupt pickle)")
    return stack[-1]

  def pop_mark():
    if not marks:
      fail(f"{name} without a MARK (corrupt pickle)")
    start = marks.pop()
    items = stack[start:]
    del stack[start:]
    return items

  def set_items(d, items):
    if not isinstance(d, dict):
      fail(f"{name} on a {_type(d)}; expected a dict")
    if len(items) % 2:
      fail(f"{name} with an odd number of items")
    for k, v in zip(items[::2], items[1::2]):
      if type(k) not in _KEY_TYPES:
        fail(f"dict key of type {_type(k)}; torch.save writes str keys")
      d[k] = v

  def reduce(func, args):
    if not isinstance(func, _Global):
      fail(f"REDUCE calls a {_type(func)}; only the tensor-rebuild functions and OrderedDict are allowed")
    if type(args) is not tuple:
      fail(f"REDUCE arguments are a {_type(args)}; expected a tuple")
    if func == ("collections", "OrderedDict"):
      if args:
        fail(f"OrderedDict called with {len(args)} arguments; torch.save writes OrderedDict()")
      return _ODict()
    if func.name == "_rebuild_tensor_v2":
      return _TensorRef(args)
    if func.name.startswith("_rebuild_parameter"):  # (data, requires_grad, backward_hooks[, state])
      return args[0] if args else None  # read_pth refuses, naming the key, unless it is a tensor
    fail(f"REDUCE calls {func.module}.{func.name}, which torch.save never calls")

  def persistent(pid):
    if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
      fail(f"unsupported persistent id {_short.repr(pid)}; expected ('storage', type, key, location, numel)")
    _, storage_type, key, _, numel = pid
    if not (isinstance(storage_type, _Global) and storage_type.module == "torch"
            and storage_type.name in _STORAGE_DTYPES):
      fail(f"storage {_short.repr(key)} has type {_short.repr(storage_type)}; expected a torch storage type")
    if type(key) is not str or type(numel) is not int or not 0 <= numel < _MAX_INT:
      fail(f"storage key {_short.repr(key)} / size {_short.repr(numel)}; expected a str and an int >= 0")
    ref = _StorageRef(storage_type.name, key, numel)
    if storages.setdefault(key, ref) != ref:
      fail(f"storage {key!r} declared as {ref.numel} x {ref.type_name} and as "
           f"{storages[key].numel} x {storages[key].type_name}")
    return ref

  for count in range(_MAX_PICKLE_OPS + 1):
    try:
      op, arg, pos = next(ops)
    except StopIteration:
      fail("the pickle ends without STOP (truncated)")
    except Exception as e:  # genops: unknown opcode, argument past the end, bad text literal, ...
      raise ValueError(f"{path}: {member}: corrupt pickle: {e}") from e
    name = op.name
    if count == _MAX_PICKLE_OPS:
      fail(f"more than {_MAX_PICKLE_OPS} pickle opcodes; not a torch.save state dict")
    if name in ("PROTO", "FRAME"):
      continue
    elif name == "STOP":
      if len(stack) != 1 or marks:
        fail(f"STOP with {len(stack)} objects on the stack (corrupt pickle)")
      return stack[0]
    elif name in _PUSH_ARG:
      stack.append(arg)
    elif name in _CONSTANTS:
      stack.append(_CONSTANTS[name])
    elif name == "MARK":
      marks.append(len(stack))
    elif name == "POP":
      if marks and len(stack) == marks[-1]:
        marks.pop()
      else:
        pop()
    elif name == "POP_MARK":
      pop_mark()
    elif name == "DUP":
      stack.append(top())
    elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
      memo[arg] = top()
    elif name == "MEMOIZE":
      memo[len(memo)] = top()
    elif name in ("GET", "BINGET", "LONG_BINGET"):
      if arg not in memo:
        fail(f"{name} {arg} of a memo entry that was never stored (corrupt pickle)")
      stack.append(memo[arg])
    elif name == "TUPLE":
      stack.append(tuple(pop_mark()))
    elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
      items = [pop() for _ in range(int(name[-1]))]
      stack.append(tuple(reversed(items)))
    elif name == "EMPTY_LIST":
      stack.append([])
    elif name == "LIST":
      stack.append(pop_mark())
    elif name in ("APPEND", "APPENDS"):
      items = [pop()] if name == "APPEND" else pop_mark()
      target = top()
      if not isinstance(target, list):
        fail(f"{name} on a {_type(target)}; expected a list")
      target.extend(items)
    elif name == "EMPTY_DICT":
      stack.append({})
    elif name == "DICT":
      items = pop_mark()
      stack.append({})
      set_items(stack[-1], items)
    elif name in ("SETITEM", "SETITEMS"):
      items = [*reversed([pop(), pop()])] if name == "SETITEM" else pop_mark()
      set_items(top(), items)
    elif name in ("GLOBAL", "STACK_GLOBAL"):
      if name == "GLOBAL":
        module, _, attr = arg.partition(" ")
      else:
        attr, module = pop(), pop()
        if type(module) is not str or type(attr) is not str:
          fail(f"STACK_GLOBAL of a {_type(module)} and a {_type(attr)}; expected two str")
      if (module, attr) not in _TORCH_GLOBALS:
        raise ValueError(
            f"{path}: refusing to load global '{_short.repr(module)[1:-1]}.{_short.repr(attr)[1:-1]}': this "
            f"reader only rebuilds tensors (the file may contain code or non-tensor objects; {member} "
            f"byte {pos})")
      stack.append(_Global(module, attr))
    elif name == "REDUCE":
      args = pop()
      stack.append(reduce(pop(), args))
    elif name == "BUILD":
      state = pop()
      if not (isinstance(top(), _ODict) and isinstance(state, (dict, type(None)))):
        fail(f"BUILD of a {_type(state)} on a {_type(top())}; torch.save only sets an OrderedDict's "
             "attributes")
    elif name == "BINPERSID":
      stack.append(persistent(pop()))
    else:
      fail(f"opcode {name} is not used by torch.save for tensors; refusing the file")


# ----------------------------------------------------------------------------------------------------
# .pth: the zip archive and the tensor views.


def _view(storage: np.ndarray, offset, size, stride) -> np.ndarray | str:
  """The view torch's `_rebuild_tensor_v2` makes, or a str saying why the arguments are refused.

  A checkpoint tensor is a non-overlapping view inside its storage: offset >= 0, sizes >= 0,
  strides >= 0, the element farthest from the start within the storage, and, with the dims of size > 1
  sorted by stride, each stride larger than the span of the dims before it (so no stride 0, no
  aliasing, and at most `storage.size` elements). Python ints: nothing here can overflow.
  """
  if type(offset) is not int or not 0 <= offset < _MAX_INT:
    return f"storage offset {_short.repr(offset)}; expected an int >= 0"
  for what, value in (("shape", size), ("strides", stride)):
    if not (type(value) is tuple and all(type(v) is int and 0 <= v < _MAX_INT for v in value)):
      return f"{what} {_short.repr(value)}; expected a tuple of ints >= 0"
  if len(size) != len(stride) or len(size) > _MAX_NDIM:
    return (f"shape {_short.repr(size)} and strides {_short.repr(stride)}; expected as many strides as dims "
            f"(at most {_MAX_NDIM})")
  numel = storage.size
  if math.prod(size) == 0:
    if offset > numel:
      return f"empty tensor at offset {offset}, past the storage's {numel} elements"
    if math.prod(n for n in size if n) * storage.dtype.itemsize >= _MAX_INT:
      return f"empty shape {size} is too large for any array"
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= numel:
    return (f"offset {offset}, shape {size}, strides {stride} reach element {last} of a storage of {numel} "
            "elements")
  span = 0
  for s, n in sorted((s, n) for n, s in zip(size, stride) if n > 1):
    if s <= span:
      return (f"shape {size} with strides {stride} makes elements overlap (stride {s} within the span "
              f"{span} of the smaller dims); a saved tensor never aliases itself")
    span += (n - 1) * s
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * itemsize for s in stride],
                                         writeable=False)


def _open_zip(path: str) -> zipfile.ZipFile:
  with open(path, "rb") as f:
    magic = f.read(4)
  try:
    return zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, NotImplementedError, UnicodeDecodeError,
          OverflowError) as e:
    if magic.startswith(b"PK"):
      raise ValueError(f"{path}: truncated or corrupt zip archive ({e}); re-download or re-save the "
                       "checkpoint") from e
    raise ValueError(f"{path}: not a zip-format PyTorch checkpoint (the legacy pre-1.6 torch.save format is "
                     "not supported; re-save it with a recent torch.save)") from e


def _read_member(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
  """The member's bytes, refusing more than `limit` (decompressing at most its declared size + 1 bytes)."""
  if info.file_size > limit:
    raise ValueError(f"{path}: zip member {info.filename} declares {info.file_size} bytes; at most {limit} "
                     "expected here")
  if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):  # deflate expands <= 1032x
    raise ValueError(f"{path}: zip member {info.filename} uses compression method {info.compress_type}; "
                     "torch.save stores members uncompressed")
  try:
    with zf.open(info) as f:
      data = f.read(info.file_size + 1)  # decompresses at most ~this much, whatever the data holds
  except Exception as e:  # bad CRC, bad local header, zlib error, encrypted, ...
    raise ValueError(f"{path}: truncated or corrupt zip member {info.filename}: {e}") from e
  if len(data) != info.file_size:
    raise ValueError(f"{path}: zip member {info.filename} holds {len(data)} bytes; its header says "
                     f"{info.file_size} (truncated or corrupt zip)")
  return data


def _stored_data_range(path: str, fp, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[int, int]:
  """[begin, end) of an uncompressed member's bytes in the file, checked against its local header."""
  if not 0 <= info.header_offset < zf.start_dir:
    raise ValueError(f"{path}: zip member {info.filename} starts at byte {info.header_offset}, outside the "
                     "archive (truncated or corrupt zip)")
  fp.seek(info.header_offset)
  header = fp.read(30)
  name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
  if len(header) != 30 or header[:4] != b"PK\x03\x04":
    raise ValueError(f"{path}: corrupt zip local header for {info.filename}")
  name_len, extra_len = struct.unpack("<HH", header[26:30])
  if fp.read(name_len) != name or info.flag_bits & 0x1:
    raise ValueError(f"{path}: corrupt zip local header for {info.filename} (name differs or encrypted)")
  begin = info.header_offset + 30 + name_len + extra_len
  end = begin + info.file_size
  if info.compress_size != info.file_size or end > min(zf.start_dir, os.fstat(fp.fileno()).st_size):
    raise ValueError(f"{path}: zip member {info.filename} claims bytes {begin}..{end}, past the end of the "
                     f"member data at {zf.start_dir} (truncated or corrupt zip)")
  return begin, end


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `torch.save` zip checkpoint holding a (possibly nested under 'state_dict') dict of tensors.

  Returns:
    {name: array}; arrays are read-only views of a memory map of the file (copies converted to
    little-endian for an archive written on a big-endian machine).
  Raises:
    FileNotFoundError if `path` does not exist; ValueError naming the file and the tensor or zip
    member for anything else (not a zip, truncated, code or unknown objects in the pickle, a view
    outside its storage, ...).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  with _open_zip(path) as zf, open(path, "rb") as fp:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
      raise ValueError(f"{path}: the zip holds several members of the same name (corrupt or crafted)")
    infos = dict(zip(names, infos))
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise ValueError(f"{path}: expected one '<archive>/data.pkl' in the zip, found {pkl or 'none'}")
    prefix = pkl[0][: -len("data.pkl")]
    obj = _unpickle(_read_member(path, zf, infos[pkl[0]], _MAX_PICKLE_BYTES), path, pkl[0])

    byteorder = "little"  # torch < 1.13 wrote no byteorder member, and only from little-endian machines
    if prefix + "byteorder" in infos:
      byteorder = _read_member(path, zf, infos[prefix + "byteorder"], 16).decode("ascii", "replace")
      if byteorder not in ("little", "big"):
        raise ValueError(f"{path}: {prefix}byteorder is {byteorder!r}; expected 'little' or 'big'")

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
      obj = obj["state_dict"]
    if not isinstance(obj, dict):
      raise ValueError(f"{path}: expected a dict of tensors, found {_type(obj)}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, _TensorRef)]
    if bad:
      raise ValueError(f"{path}: entries {_short.repr(bad[:5])} are not tensors; expected a flat state_dict")

    file_map = None  # one read-only memory map of the whole file; storages are slices of it
    storages: dict[str, np.ndarray] = {}

    def storage(ref: _StorageRef, tensor: str) -> np.ndarray:
      nonlocal file_map
      if ref.key in storages:
        return storages[ref.key]
      member, dtype = f"{prefix}data/{ref.key}", _STORAGE_DTYPES[ref.type_name]
      info = infos.get(member)
      if info is None:
        raise ValueError(f"{path}: tensor {tensor!r}: storage {member} is missing from the archive")
      nbytes = ref.numel * dtype.itemsize
      if info.file_size != nbytes:
        raise ValueError(f"{path}: tensor {tensor!r}: {member} has {info.file_size} bytes; the pickle "
                         f"declares {ref.numel} x {ref.type_name} = {nbytes}")
      if info.compress_type == zipfile.ZIP_STORED:
        begin, end = _stored_data_range(path, fp, zf, info)
        if file_map is None and nbytes:
          file_map = np.memmap(path, dtype=np.uint8, mode="r")
        raw = file_map[begin:end] if nbytes else np.zeros(0, np.uint8)
      else:  # not memory-mappable: read it, bounded by the declared size
        raw = np.frombuffer(_read_member(path, zf, info, nbytes), np.uint8)
      if byteorder == "big" and dtype.itemsize > 1:
        raw = raw.view(f">u{dtype.itemsize}").astype(f"<u{dtype.itemsize}")
      storages[ref.key] = raw.view(dtype)
      return storages[ref.key]

    out = {}
    for name, ref in obj.items():
      args = ref.args
      if not 4 <= len(args) <= 7 or not isinstance(args[0], _StorageRef):
        raise ValueError(f"{path}: tensor {name!r}: _rebuild_tensor_v2 arguments {_short.repr(args)}; "
                         "expected (storage, offset, shape, strides, ...)")
      view = _view(storage(args[0], name), *args[1:4])
      if isinstance(view, str):
        raise ValueError(f"{path}: tensor {name!r} (a view of {prefix}data/{args[0].key}): {view}; the "
                         "file is corrupt or crafted")
      out[name] = view
  return out


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


# ----------------------------------------------------------------------------------------------------
# safetensors and JSON.


def _parse_json_object(raw: bytes, where: str) -> dict:
  """`raw` (UTF-8 JSON) as a dict; ValueError starting with `where` for anything else."""
  def no_duplicates(pairs):
    d = {}
    for k, v in pairs:
      if k in d:
        raise ValueError(f"key {_short.repr(k)} appears twice")
      d[k] = v
    return d

  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{where}: not UTF-8 text ({e})") from e
  try:
    obj = json.loads(text, object_pairs_hook=no_duplicates)
  except RecursionError as e:
    raise ValueError(f"{where}: not valid JSON: nested too deeply") from e
  except ValueError as e:  # JSONDecodeError, duplicate keys, integers of more than 4300 digits
    raise ValueError(f"{where}: not valid JSON: {e}") from e
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: holds a JSON {_type(obj)}; expected an object {{...}}")
  return obj


def read_json_object(path: str | os.PathLike) -> dict:
  """A JSON file that must hold one object (config.json, model.safetensors.index.json, ...).

  Raises FileNotFoundError if it does not exist, ValueError naming the file if it is larger than
  64 MiB, not UTF-8, not JSON, has duplicate keys or is not an object.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  with open(path, "rb") as f:
    raw = f.read(_MAX_JSON_BYTES + 1)
  if len(raw) > _MAX_JSON_BYTES:
    raise ValueError(f"{path}: larger than {_MAX_JSON_BYTES} bytes; not a configuration file")
  return _parse_json_object(raw, path)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a .safetensors file (all dtypes incl. BF16) as read-only memory-mapped numpy arrays.

  The header is checked as the safetensors library does: a JSON object of
  {name: {"dtype", "shape", "data_offsets": [begin, end]}} (plus an optional "__metadata__" of
  strings), every `end - begin == numel x itemsize`, and the tensors' byte ranges, sorted, tile the
  data after the header exactly (no gaps, no overlaps, nothing left over). Anything else is a
  ValueError naming the file and the tensor or field.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such safetensors file")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) != 8:
      raise ValueError(f"{path}: too short to be a safetensors file ({size} bytes)")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > min(size - 8, _MAX_SAFETENSORS_HEADER):
      raise ValueError(f"{path}: corrupt safetensors header length {header_len}: the file has {size - 8} "
                       f"bytes after it (at most {_MAX_SAFETENSORS_HEADER} allowed); truncated or not a "
                       "safetensors file")
    header = _parse_json_object(f.read(header_len), f"{path}: safetensors header")
  base = 8 + header_len

  entries = []  # (begin, end, name, dtype, shape)
  for name, meta in header.items():
    if name == "__metadata__":
      if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ValueError(f"{path}: safetensors '__metadata__' is {_short.repr(meta)}; expected an object of "
                         "strings")
      continue
    where = f"{path}: tensor {name!r}"
    if not isinstance(meta, dict):
      raise ValueError(f"{where}: header entry is a {_type(meta)}; expected an object with 'dtype', 'shape' "
                       "and 'data_offsets'")
    for field in ("dtype", "shape", "data_offsets"):
      if field not in meta:
        raise ValueError(f"{where}: header entry has no '{field}'")
    dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{where}: unsupported dtype {_short.repr(dtype)}; expected one of "
                       f"{sorted(_SAFETENSORS_DTYPES)}")
    if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM
            and all(type(n) is int and 0 <= n < _MAX_INT for n in shape)):
      raise ValueError(f"{where}: 'shape' is {_short.repr(shape)}; expected a list of at most {_MAX_NDIM} "
                       "ints >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] < _MAX_INT):
      raise ValueError(f"{where}: 'data_offsets' is {_short.repr(offsets)}; expected [begin, end] with "
                       "0 <= begin <= end")
    dtype = _SAFETENSORS_DTYPES[dtype]
    begin, end = offsets
    if math.prod(n for n in shape if n) * dtype.itemsize >= _MAX_INT:
      raise ValueError(f"{where}: shape {shape} is too large for any array")
    if end - begin != math.prod(shape) * dtype.itemsize:
      raise ValueError(f"{where}: data_offsets {begin}..{end} hold {end - begin} bytes; shape {shape} of "
                       f"{meta['dtype']} needs {math.prod(shape) * dtype.itemsize}")
    entries.append((begin, end, name, dtype, tuple(shape)))

  expected = 0
  for begin, end, name, _, _ in sorted(entries, key=lambda e: e[:2]):
    if begin != expected:
      raise ValueError(f"{path}: tensor {name!r}: data_offsets {begin}..{end} start at byte {begin}, but the "
                       f"previous tensor ends at {expected}; tensors must tile the data without gaps or "
                       "overlaps")
    expected = end
  if expected != size - base:
    raise ValueError(f"{path}: the tensors cover {expected} bytes of data; the file holds {size - base} after "
                     "the header (truncated, or trailing bytes)")

  file_map = np.memmap(path, dtype=np.uint8, mode="r") if expected else None
  out = {}
  for begin, end, name, dtype, shape in entries:
    if end == begin:
      out[name] = np.zeros(shape, dtype)
    else:
      out[name] = file_map[base + begin:base + end].view(dtype).reshape(shape)
  return out


def _shard_file(folder: str, name, index: str) -> str:
  """`folder/name` for a shard listed in `index`, refusing names that lead outside `folder`.

  Symlinks are followed only inside the folder, or into the `blobs` folder of a Hugging Face cache
  when `folder` is one of its `snapshots/<revision>` folders (how huggingface_hub stores downloads).
  """
  if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
    raise ValueError(f"{index}: shard {_short.repr(name)} is not a relative file name inside the snapshot "
                     "folder (absolute paths and '..' are refused)")
  file = os.path.join(folder, name)
  root, real = os.path.realpath(folder), os.path.realpath(file)
  if os.path.commonpath([root, real]) != root:
    blobs = os.path.join(os.path.dirname(os.path.dirname(root)), "blobs")
    in_hf_cache = (os.path.basename(os.path.dirname(root)) == "snapshots"
                   and os.path.commonpath([blobs, real]) == blobs)
    if not in_hf_cache:
      raise ValueError(f"{file}: resolves to {real}, outside the snapshot folder {root}; refusing to read it")
  return file


def read_safetensors_dir(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads one .safetensors file, or every shard of an HF snapshot folder.

  With a `model.safetensors.index.json`, reads the shards its `weight_map` names (relative names inside
  the folder only) and checks that each listed tensor is in its shard; without one, every
  `*.safetensors` file of the folder. A tensor held by two shards is an error.
  """
  path = os.fspath(path)
  if os.path.isfile(path):
    return read_safetensors(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: neither a .safetensors file nor a folder")
  index = os.path.join(path, "model.safetensors.index.json")
  weight_map = None
  if os.path.exists(index):
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index}: 'weight_map' is {_short.repr(weight_map)}; expected a non-empty object "
                       "{tensor name: shard file}")
    files = sorted(set(_shard_file(path, name, index) for name in weight_map.values()))
  else:
    files = sorted(_shard_file(path, f, path) for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"{path}: no .safetensors files in this folder")
  out, origin = {}, {}
  for file in files:
    for name, array in read_safetensors(file).items():
      if name in out:
        raise ValueError(f"{file}: tensor {name!r} is also in {origin[name]}; each tensor must be in one shard")
      out[name], origin[name] = array, file
  for name, shard in (weight_map or {}).items():
    if origin.get(name) != os.path.join(path, shard):
      raise ValueError(f"{index}: lists tensor {name!r} in {shard}, which does not hold it")
  return out
