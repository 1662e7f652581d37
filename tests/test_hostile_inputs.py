"""Hostile and careless checkpoint files end in a ValueError naming the file and the field at fault.

Every file here is built byte by byte (pickle opcodes as pickletools names them, zip members through
zipfile, safetensors headers as literal JSON), so a reader sees exactly the bytes an attacker would
send. The references are the formats' own rules: what torch.save writes (`torch/serialization.py`,
`torch/_utils.py:_rebuild_tensor_v2`) and the safetensors library's header checks (contiguous
offsets covering the data exactly, `end - begin == numel x itemsize`), which
`test_safetensors_rules_match_the_safetensors_library` checks against the library itself. The last test mutates valid files
at random in a memory-capped subprocess: every mutant loads arrays lying inside the file's tensor
data, or is refused with a ValueError naming the file; nothing crashes or raises anything else.
"""

import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import ml_dtypes
import numpy as np
import pytest

from modrwkv_jax.models.encoders import hf_snapshot
from modrwkv_jax.tensor_files import read_json_object, read_pth, read_safetensors, read_safetensors_dir, write_pth

# ---------------------------------------------------------------------------------------------------
# Pickle opcodes (protocol 2), named as in Lib/pickletools.py.
PROTO_2 = b"\x80\x02"
MARK, TUPLE, TUPLE1, EMPTY_TUPLE = b"(", b"t", b"\x85", b")"
EMPTY_DICT, SETITEM, SETITEMS = b"}", b"s", b"u"
REDUCE, BUILD, BINPERSID, NEWFALSE, NONE, STOP = b"R", b"b", b"Q", b"\x89", b"N", b"."


def GLOBAL(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def BINUNICODE(s: str) -> bytes:
  data = s.encode()
  return b"X" + struct.pack("<I", len(data)) + data


def INT(n: int) -> bytes:
  if -(2**31) <= n < 2**31:
    return b"J" + struct.pack("<i", n)  # BININT
  data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(data)]) + data  # LONG1


def INTS(*ns: int) -> bytes:
  return MARK + b"".join(INT(n) for n in ns) + TUPLE


ORDERED_DICT = GLOBAL("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE  # OrderedDict()


def storage(key: str, storage_type: str, numel: int) -> bytes:
  """The persistent id torch.save writes for a storage: ('storage', torch.<type>, key, 'cpu', numel)."""
  return (MARK + BINUNICODE("storage") + GLOBAL("torch", storage_type) + BINUNICODE(key) + BINUNICODE("cpu")
          + INT(numel) + TUPLE + BINPERSID)


def tensor(key="0", storage_type="FloatStorage", numel=4, offset=0, size=(4,), stride=(1,)) -> bytes:
  """_rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, OrderedDict()).

  `size` / `stride` are tuples of ints, or raw pickle bytes to put there instead.
  """
  size = size if isinstance(size, bytes) else INTS(*size)
  stride = stride if isinstance(stride, bytes) else INTS(*stride)
  return (GLOBAL("torch._utils", "_rebuild_tensor_v2") + MARK + storage(key, storage_type, numel) + INT(offset)
          + size + stride + NEWFALSE + ORDERED_DICT + TUPLE + REDUCE)


def state_dict(**tensors: bytes) -> bytes:
  """OrderedDict({name: tensor}) as torch.save pickles a state dict."""
  items = b"".join(BINUNICODE(name) + value for name, value in tensors.items())
  return PROTO_2 + ORDERED_DICT + MARK + items + SETITEMS + STOP


def write_zip(path, members: dict[str, bytes], compress: dict[str, int] | None = None) -> None:
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in members.items():
      zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                  compress_type=(compress or {}).get(name, zipfile.ZIP_STORED))


def write_pth_bytes(path, pickle: bytes, storages: dict[str, bytes], byteorder: bytes | None = b"little",
                    compress: dict[str, int] | None = None) -> None:
  """A torch.save archive: archive/data.pkl, archive/byteorder, archive/data/<key> for each storage."""
  members = {"archive/data.pkl": pickle}
  if byteorder is not None:
    members["archive/byteorder"] = byteorder
  members.update({f"archive/data/{k}": v for k, v in storages.items()})
  write_zip(path, members, {f"archive/data/{k}": v for k, v in (compress or {}).items()})


FOUR_FLOATS = struct.pack("<4f", 10.0, 11.0, 12.0, 13.0)


# ---------------------------------------------------------------------------------------------------
# .pth: tensor views against their storage


@pytest.mark.parametrize("offset,size,stride,expected", [
    (0, (4,), (1,), [10, 11, 12, 13]),
    (1, (2,), (2,), [11, 13]),  # a strided slice
    (0, (2, 2), (1, 2), [[10, 12], [11, 13]]),  # a transpose
    (3, (), (), 13),  # a 0-d tensor
    (4, (0,), (1,), []),  # empty, at the end of the storage
])
def test_pth_views_inside_storage_load(tmp_path, offset, size, stride, expected):
  file = tmp_path / "ok.pth"
  write_pth_bytes(file, state_dict(w=tensor(offset=offset, size=size, stride=stride)), {"0": FOUR_FLOATS})
  np.testing.assert_array_equal(read_pth(file)["w"], np.array(expected, np.float32))


@pytest.mark.parametrize("offset,size,stride,match", [
    (4, (1,), (1,), r"reach element 4 of a storage of 4 elements"),  # offset at the end
    (9, (1,), (1,), r"reach element 9 of a storage of 4 elements"),  # offset past the end
    (0, (8,), (1,), r"reach element 7 of a storage of 4 elements"),  # view larger than its storage
    (-1, (2,), (1,), r"storage offset -1; expected an int >= 0"),
    (3, (2,), (-1,), r"strides \(-1,\); expected a tuple of ints >= 0"),  # reads before the storage
    (0, (2,), (2**40,), r"reach element 1099511627776 of a storage of 4"),  # used to SIGSEGV
    (0, (2**33,), (0,), r"makes elements overlap \(stride 0"),  # one float as a 32 GiB tensor
    (0, (2, 2), (1, 1), r"makes elements overlap \(stride 1 within the span 1"),
    (0, (2, 2), (1,), r"expected as many strides as dims"),
    (0, (-1,), (1,), r"shape \(-1,\); expected a tuple of ints >= 0"),
    (0, (2**70,), (1,), r"shape \(1180591620717411303424,\)"),
    (5, (0,), (1,), r"empty tensor at offset 5, past the storage's 4 elements"),
    (0, (0, 2**62), (1, 1), r"empty shape \(0, 4611686018427387904\) is too large for any array"),
])
def test_pth_views_outside_storage_are_refused(tmp_path, offset, size, stride, match):
  file = tmp_path / "bad.pth"
  write_pth_bytes(file, state_dict(w=tensor(offset=offset, size=size, stride=stride)), {"0": FOUR_FLOATS})
  with pytest.raises(ValueError, match=rf"bad.pth: tensor 'w' \(a view of archive/data/0\): .*{match}"):
    read_pth(file)


@pytest.mark.parametrize("w,match", [
    (tensor(size=BINUNICODE("abc")), r"tensor 'w' \(a view of archive/data/0\): shape 'abc'"),
    (tensor(stride=NONE), r"tensor 'w' \(a view of archive/data/0\): strides None"),
    (tensor(size=MARK + INT(2) + BINUNICODE("x") + TUPLE), r"tensor 'w' .*: shape \(2, 'x'\)"),
    # _rebuild_tensor_v2(storage) -- too few arguments
    (GLOBAL("torch._utils", "_rebuild_tensor_v2") + storage("0", "FloatStorage", 4) + TUPLE1 + REDUCE,
     r"tensor 'w': _rebuild_tensor_v2 arguments"),
    # _rebuild_tensor_v2(7, 0, (4,), (1,)) -- an int where the storage goes
    (GLOBAL("torch._utils", "_rebuild_tensor_v2") + MARK + INT(7) + INT(0) + INTS(4) + INTS(1) + TUPLE + REDUCE,
     r"tensor 'w': _rebuild_tensor_v2 arguments \(7, 0, \(4,\), \(1,\)\)"),
    # _rebuild_parameter(5, False, OrderedDict())
    (GLOBAL("torch._utils", "_rebuild_parameter") + MARK + INT(5) + NEWFALSE + ORDERED_DICT + TUPLE + REDUCE,
     r"entries \['w'\] are not tensors"),
    (tensor(numel=3), r"tensor 'w': archive/data/0 has 16 bytes; the pickle declares 3 x FloatStorage = 12"),
    (tensor(key="9"), r"tensor 'w': storage archive/data/9 is missing from the archive"),
])
def test_pth_bad_rebuild_arguments_name_the_tensor(tmp_path, w, match):
  file = tmp_path / "bad.pth"
  write_pth_bytes(file, state_dict(w=w), {"0": FOUR_FLOATS})
  with pytest.raises(ValueError, match=rf"bad.pth: {match}"):
    read_pth(file)


@pytest.mark.parametrize("pickle,match", [
    (PROTO_2 + GLOBAL("os", "system") + BINUNICODE("echo hi") + TUPLE1 + REDUCE + STOP,
     r"refusing to load global 'os.system'"),
    (PROTO_2 + GLOBAL("builtins", "eval") + STOP, r"refusing to load global 'builtins.eval'"),
    (PROTO_2 + MARK + b"i" + b"os\nsystem\n" + STOP, r"opcode INST is not used by torch.save"),
    (PROTO_2 + GLOBAL("collections", "OrderedDict") + EMPTY_TUPLE + b"\x81" + STOP, r"opcode NEWOBJ"),
    (PROTO_2 + b"\x82\x01" + STOP, r"opcode EXT1"),
    (PROTO_2 + b"\xff", r"corrupt pickle: at position 2, opcode b'\\xff' unknown"),
    (PROTO_2 + EMPTY_DICT, r"corrupt pickle: pickle exhausted before seeing STOP"),
    (PROTO_2 + SETITEM + STOP, r"SETITEM on an empty stack"),
    (PROTO_2 + b"h\x05" + STOP, r"BINGET 5 of a memo entry that was never stored"),
    # REDUCE of a storage type: torch.FloatStorage() -- not a rebuild function
    (PROTO_2 + GLOBAL("torch", "FloatStorage") + EMPTY_TUPLE + REDUCE + STOP,
     r"REDUCE calls torch.FloatStorage, which torch.save never calls"),
    # {(((...(),),),): None} 100000 tuples deep as a dict key: hashing it would recurse in C
    (PROTO_2 + EMPTY_DICT + EMPTY_TUPLE + TUPLE1 * 100_000 + NONE + SETITEM + STOP,
     r"dict key of type tuple"),
    # A persistent id that is not a storage
    (PROTO_2 + BINUNICODE("x") + BINPERSID + STOP, r"unsupported persistent id 'x'"),
    (state_dict(w=tensor(storage_type="FloatStorage"), v=tensor(storage_type="HalfStorage", numel=8)),
     r"storage '0' declared as 8 x HalfStorage and as 4 x FloatStorage"),
])
def test_pth_pickle_is_refused_beyond_what_torch_save_writes(tmp_path, pickle, match):
  file = tmp_path / "evil.pth"
  write_pth_bytes(file, pickle, {"0": FOUR_FLOATS})
  with pytest.raises(ValueError, match=rf"evil.pth: .*{match}"):
    read_pth(file)


@pytest.mark.parametrize("attack", [
    # torch.HalfStorage.__dict__.update({'dtype': torch.BFloat16Storage}) -- BUILD with a dict state
    GLOBAL("torch", "HalfStorage") + EMPTY_DICT + BINUNICODE("dtype") + GLOBAL("torch", "BFloat16Storage")
    + SETITEM + BUILD,
    # setattr(torch.HalfStorage, 'name', 'BFloat16Storage') -- BUILD with (None, slot state)
    GLOBAL("torch", "HalfStorage") + NONE + EMPTY_DICT + BINUNICODE("name") + BINUNICODE("BFloat16Storage")
    + SETITEM + b"\x86" + BUILD,
    # setattr(_rebuild_tensor_v2, '__defaults__', (True,)) -- module functions are not reachable either
    GLOBAL("torch._utils", "_rebuild_tensor_v2") + NONE + EMPTY_DICT + BINUNICODE("__defaults__")
    + b"\x88" + TUPLE1 + SETITEM + b"\x86" + BUILD,
])
def test_pth_build_cannot_change_later_loads(tmp_path, attack):
  """A file that BUILDs on the allow-listed globals is refused, and a later fp16 file still reads as fp16."""
  evil = tmp_path / "evil.pth"
  write_pth_bytes(evil, PROTO_2 + attack + STOP, {})
  with pytest.raises(ValueError, match=r"evil.pth: archive/data.pkl byte \d+: BUILD of a \w+ on a _Global"):
    read_pth(evil)
  good = tmp_path / "good.pth"
  w = np.array([1.5, -2.0, 65504.0], np.float16)
  write_pth({"w": w}, good)
  got = read_pth(good)["w"]
  assert got.dtype == np.float16
  np.testing.assert_array_equal(got, w)


def test_pth_big_endian_archive_decodes_to_the_same_values(tmp_path):
  """An archive written on a big-endian machine (byteorder 'big') reads as native little-endian values."""
  file = tmp_path / "be.pth"
  pickle = state_dict(
      f32=tensor("0", "FloatStorage", 3, size=(3,)),
      i64=tensor("1", "LongStorage", 2, size=(2,)),
      bf16=tensor("2", "BFloat16Storage", 2, size=(2,)),
      f16_t=tensor("3", "HalfStorage", 4, size=(2, 2), stride=(1, 2)))
  write_pth_bytes(file, pickle, {
      "0": struct.pack(">3f", 1.5, -2.0, 3.25),
      "1": struct.pack(">2q", -3, 2**40 + 7),
      "2": b"\x3f\xc0" + b"\xc1\x20",  # bfloat16 1.5 and -10.0, big-endian
      "3": struct.pack(">4e", 1.0, 2.0, 3.0, 4.0),
  }, byteorder=b"big")
  got = read_pth(file)
  np.testing.assert_array_equal(got["f32"], np.array([1.5, -2.0, 3.25], np.float32))
  np.testing.assert_array_equal(got["i64"], np.array([-3, 2**40 + 7], np.int64))
  assert got["bf16"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(got["bf16"].astype(np.float32), [1.5, -10.0])
  np.testing.assert_array_equal(got["f16_t"], np.array([[1, 3], [2, 4]], np.float16))
  assert all(a.dtype.byteorder in "=|<" for a in got.values())

  write_pth_bytes(file, pickle, {}, byteorder=b"middle")
  with pytest.raises(ValueError, match=r"be.pth: archive/byteorder is 'middle'; expected 'little' or 'big'"):
    read_pth(file)


@pytest.mark.parametrize("keep", [0.5, 0.999, -1, -22, 3])
def test_pth_truncated_file_is_reported_as_truncated(tmp_path, keep):
  full = tmp_path / "full.pth"
  write_pth({"w": np.arange(1000, dtype=np.float32)}, full)
  data = full.read_bytes()
  n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
  cut = tmp_path / "cut.pth"
  cut.write_bytes(data[:n])
  with pytest.raises(ValueError, match=r"cut.pth: truncated or corrupt zip archive"):
    read_pth(cut)


def test_pth_not_a_zip(tmp_path):
  file = tmp_path / "old.pth"
  file.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")  # the legacy torch.save magic number
  with pytest.raises(ValueError, match=r"old.pth: not a zip-format PyTorch checkpoint \(the legacy pre-1.6"):
    read_pth(file)


def test_pth_pickle_bomb_is_refused_before_it_expands(tmp_path):
  """A 64 MiB + 2 byte data.pkl deflates to ~65 KB; it is refused from its declared size, and a lying
  declared size stops decompression early (tracemalloc peak stays in the kilobytes)."""
  bomb = PROTO_2 + NONE * (64 << 20) + STOP
  file = tmp_path / "bomb.pth"
  write_zip(file, {"archive/data.pkl": bomb}, {"archive/data.pkl": zipfile.ZIP_DEFLATED})
  assert file.stat().st_size < 100_000
  tracemalloc.start()
  try:
    with pytest.raises(ValueError, match=r"bomb.pth: zip member archive/data.pkl declares 67108867 bytes; "
                                         r"at most 67108864"):
      read_pth(file)
    # The same member with its central-directory size patched to 1000 bytes.
    data = bytearray(file.read_bytes())
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 24:cd + 28] = struct.pack("<I", 1000)  # uncompressed size
    file.write_bytes(bytes(data))
    tracemalloc.reset_peak()
    with pytest.raises(ValueError, match=r"bomb.pth: truncated or corrupt zip member archive/data.pkl: Bad CRC"):
      read_pth(file)
    assert tracemalloc.get_traced_memory()[1] < 4 << 20
  finally:
    tracemalloc.stop()


def test_pth_compressed_storages(tmp_path):
  """A deflated storage is read (bounded by its declared size); other compressions are refused."""
  file = tmp_path / "z.pth"
  write_pth_bytes(file, state_dict(w=tensor()), {"0": FOUR_FLOATS}, compress={"0": zipfile.ZIP_DEFLATED})
  np.testing.assert_array_equal(read_pth(file)["w"], [10, 11, 12, 13])
  write_pth_bytes(file, state_dict(w=tensor()), {"0": FOUR_FLOATS}, compress={"0": zipfile.ZIP_BZIP2})
  with pytest.raises(ValueError, match=r"z.pth: zip member archive/data/0 uses compression method 12"):
    read_pth(file)


# ---------------------------------------------------------------------------------------------------
# safetensors: [8-byte little-endian header length][JSON header][tensor data]


def safetensors_bytes(header: bytes, data: bytes) -> bytes:
  return struct.pack("<Q", len(header)) + header + data


TWO_FLOATS = struct.pack("<2f", 1.0, 2.0)


def test_safetensors_good_file(tmp_path):
  file = tmp_path / "ok.safetensors"
  file.write_bytes(safetensors_bytes(
      b'{"__metadata__":{"format":"pt"},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]},'
      b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', TWO_FLOATS))
  got = read_safetensors(file)
  np.testing.assert_array_equal(got["a"], [1.0, 2.0])
  assert got["e"].shape == (0, 3)


_BAD_SAFETENSORS = {
    "negative offset": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}', TWO_FLOATS,
                        r"tensor 'a': 'data_offsets' is \[-4, 0\]; expected \[begin, end\] with 0 <= begin <= end"),
    "begin after end": (b'{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}', TWO_FLOATS,
                        r"tensor 'a': 'data_offsets' is \[8, 4\]"),
    "overlap": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                b'"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', TWO_FLOATS,
                r"tensor '[ab]': data_offsets \d\.\.8 start at byte \d, but the previous tensor ends at [48]"),
    "gap": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', TWO_FLOATS,
            r"tensor 'a': data_offsets 4\.\.8 start at byte 4, but the previous tensor ends at 0"),
    "trailing bytes": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', TWO_FLOATS,
                       r"the tensors cover 4 bytes of data; the file holds 8 after the header"),
    "data past the end": (b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', TWO_FLOATS,
                          r"the tensors cover 16 bytes of data; the file holds 8"),
    "size mismatch": (b'{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', TWO_FLOATS,
                      r"tensor 'a': data_offsets 0\.\.8 hold 8 bytes; shape \[3\] of F32 needs 12"),
    "numel overflows int64": (b'{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}',
                              TWO_FLOATS, r"tensor 'a': shape \[4294967296, 4294967296\] is too large"),
    "header is a list": (b'[{"dtype":"F32","shape":[2],"data_offsets":[0,8]}]', TWO_FLOATS,
                         r"safetensors header: holds a JSON list; expected an object"),
    "string offsets": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":["0","8"]}}', TWO_FLOATS,
                       r"tensor 'a': 'data_offsets' is \['0', '8'\]"),
    "missing offsets": (b'{"a":{"dtype":"F32","shape":[2]}}', TWO_FLOATS,
                        r"tensor 'a': header entry has no 'data_offsets'"),
    "missing dtype": (b'{"a":{"shape":[2],"data_offsets":[0,8]}}', TWO_FLOATS,
                      r"tensor 'a': header entry has no 'dtype'"),
    "entry is a list": (b'{"a":[0,8]}', TWO_FLOATS, r"tensor 'a': header entry is a list"),
    "unknown dtype": (b'{"a":{"dtype":"F99","shape":[2],"data_offsets":[0,8]}}', TWO_FLOATS,
                      r"tensor 'a': unsupported dtype 'F99'"),
    "float shape": (b'{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', TWO_FLOATS,
                    r"tensor 'a': 'shape' is \[2\.0\]"),
    "negative shape": (b'{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', TWO_FLOATS,
                       r"tensor 'a': 'shape' is \[-2\]"),
    "not UTF-8": (b'{"\xff":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', TWO_FLOATS,
                  r"safetensors header: not UTF-8 text"),
    "not JSON": (b'{"a":{"dtype":"F32",', TWO_FLOATS, r"safetensors header: not valid JSON"),
    "duplicate name": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                       b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', TWO_FLOATS,
                       r"safetensors header: not valid JSON: key 'a' appears twice"),
    "deep nesting": (b"[" * 100_000, b"", r"safetensors header: not valid JSON: nested too deeply"),
    "metadata of numbers": (b'{"__metadata__":{"n":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
                            TWO_FLOATS, r"safetensors '__metadata__' is \{'n': 1\}; expected an object of strings"),
}


@pytest.mark.parametrize("case", list(_BAD_SAFETENSORS))
def test_safetensors_bad_header_names_file_and_field(tmp_path, case):
  header, data, match = _BAD_SAFETENSORS[case]
  file = tmp_path / "bad.safetensors"
  file.write_bytes(safetensors_bytes(header, data))
  with pytest.raises(ValueError, match=rf"bad.safetensors: {match}"):
    read_safetensors(file)


def test_safetensors_rules_match_the_safetensors_library(tmp_path):
  """Reference: safetensors.numpy.load_file refuses the layout cases above too (and loads the good one)."""
  from safetensors.numpy import load_file
  file = tmp_path / "x.safetensors"
  for case in ("negative offset", "begin after end", "overlap", "gap", "trailing bytes", "data past the end",
               "size mismatch", "header is a list", "string offsets", "missing offsets", "not UTF-8"):
    file.write_bytes(safetensors_bytes(*_BAD_SAFETENSORS[case][:2]))
    try:
      load_file(file)
    except Exception:  # safetensors_rust.SafetensorError
      continue
    pytest.fail(f"the safetensors library loads the {case!r} file, which read_safetensors refuses")


@pytest.mark.parametrize("raw,match", [
    (struct.pack("<Q", 1000) + b"{}", r"corrupt safetensors header length 1000: the file has 2 bytes after it"),
    (struct.pack("<Q", 2**64 - 1) + b"{}", r"corrupt safetensors header length 18446744073709551615"),
    (b"\x02\x00\x00", r"too short to be a safetensors file \(3 bytes\)"),
])
def test_safetensors_header_length(tmp_path, raw, match):
  file = tmp_path / "len.safetensors"
  file.write_bytes(raw)
  with pytest.raises(ValueError, match=rf"len.safetensors: {match}"):
    read_safetensors(file)


# ---------------------------------------------------------------------------------------------------
# Snapshot folders: model.safetensors.index.json and config.json

A_FILE = safetensors_bytes(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', TWO_FLOATS)


def _index(folder, weight_map) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors", "ABSOLUTE"])
def test_index_cannot_point_outside_the_folder(tmp_path, shard):
  (tmp_path / "outside.safetensors").write_bytes(A_FILE)
  shard = str(tmp_path / "outside.safetensors") if shard == "ABSOLUTE" else shard
  _index(tmp_path / "snap", {"a": shard})
  with pytest.raises(ValueError, match=r"snap/model.safetensors.index.json: shard '.*outside.safetensors' is "
                                       r"not a relative file name inside the snapshot folder"):
    read_safetensors_dir(tmp_path / "snap")


@pytest.mark.parametrize("with_index", [True, False])
def test_symlink_outside_the_folder_is_refused(tmp_path, with_index):
  (tmp_path / "outside.safetensors").write_bytes(A_FILE)
  (tmp_path / "snap").mkdir()
  (tmp_path / "snap" / "model.safetensors").symlink_to(tmp_path / "outside.safetensors")
  if with_index:
    _index(tmp_path / "snap", {"a": "model.safetensors"})
  with pytest.raises(ValueError, match=r"snap/model.safetensors: resolves to .*outside.safetensors, outside "
                                       r"the snapshot folder"):
    read_safetensors_dir(tmp_path / "snap")


def test_hugging_face_cache_symlinks_are_followed(tmp_path):
  """huggingface_hub's cache: snapshots/<rev>/model.safetensors -> ../../blobs/<sha256>."""
  repo = tmp_path / "models--org--name"
  (repo / "blobs").mkdir(parents=True)
  (repo / "blobs" / "0123abcd").write_bytes(A_FILE)
  snap = repo / "snapshots" / "rev1"
  snap.mkdir(parents=True)
  (snap / "model.safetensors").symlink_to("../../blobs/0123abcd")
  np.testing.assert_array_equal(read_safetensors_dir(snap)["a"], [1.0, 2.0])


@pytest.mark.parametrize("index,match", [
    (b'{"metadata": {}}', r"'weight_map' is None; expected a non-empty object"),
    (b'{"weight_map": ["model.safetensors"]}', r"'weight_map' is \['model.safetensors'\]"),
    (b'{"weight_map": {"a": 3}}', r"shard 3 is not a relative file name"),
    (b'{"weight_map": {"a": "model.safetensors", "b": "model.safetensors"}}',
     r"lists tensor 'b' in model.safetensors, which does not hold it"),
    (b'[]', r"holds a JSON list; expected an object"),
    (b'{"weight_map": ', r"not valid JSON"),
])
def test_bad_index(tmp_path, index, match):
  (tmp_path / "model.safetensors").write_bytes(A_FILE)
  (tmp_path / "model.safetensors.index.json").write_bytes(index)
  with pytest.raises(ValueError, match=rf"model.safetensors.index.json: {match}"):
    read_safetensors_dir(tmp_path)


def test_tensor_in_two_shards(tmp_path):
  (tmp_path / "a.safetensors").write_bytes(A_FILE)
  (tmp_path / "b.safetensors").write_bytes(A_FILE)
  with pytest.raises(ValueError, match=r"b.safetensors: tensor 'a' is also in .*a.safetensors"):
    read_safetensors_dir(tmp_path)


@pytest.mark.parametrize("text,match", [
    (b"[1, 2]", r"holds a JSON list; expected an object"),
    (b'"siglip"', r"holds a JSON str; expected an object"),
    (b"\xff\xfe{}", r"not UTF-8 text"),
    (b'{"hidden_size": ', r"not valid JSON"),
    (b'{"a": 1, "a": 2}', r"not valid JSON: key 'a' appears twice"),
])
def test_config_json_must_be_an_object(tmp_path, text, match):
  (tmp_path / "config.json").write_bytes(text)
  (tmp_path / "preprocessor_config.json").write_bytes(text)
  with pytest.raises(ValueError, match=rf"config.json: {match}"):
    hf_snapshot.read_config(tmp_path)
  with pytest.raises(ValueError, match=rf"preprocessor_config.json: {match}"):
    hf_snapshot.read_preprocessor_config(tmp_path)
  with pytest.raises(ValueError, match=rf"config.json: {match}"):
    hf_snapshot.Snapshot(tmp_path)


def test_sub_config_must_be_an_object():
  with pytest.raises(ValueError, match=r"config.json: 'vision_config' is a list; expected an object"):
    hf_snapshot.sub_config({"vision_config": [1]}, "vision_config")
  assert hf_snapshot.sub_config({"vision_config": {"a": 1}}, "vision_config") == {"a": 1}
  with pytest.raises(FileNotFoundError):
    read_json_object("/nonexistent/config.json")


# ---------------------------------------------------------------------------------------------------
# Mutation fuzzing in a memory-capped child process

_FUZZ_CHILD = r'''
import json, os, pickletools, random, resource, struct, sys, zipfile
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a runaway allocation fails instead of swapping
import numpy as np
from modrwkv_jax.tensor_files import read_pth, read_safetensors

base_pth, base_st, out, seed, count = sys.argv[1:]
rng, count = random.Random(int(seed)), int(count)
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 0x7f, 0x80, 0xff]
NUMBERS = [b"0", b"1", b"-1", b"7", b"4294967296", b"18446744073709551616", b'"8"', b"1.5", b"[]", b"null"]


def mutate(data, int_positions=(), kinds=("flip", "byte", "insert", "delete", "truncate", "number")):
  data = bytearray(data)
  for _ in range(rng.randint(1, 3)):
    kind = rng.choice(kinds)
    pos = rng.randrange(max(len(data), 1))
    if kind == "flip" and data:
      data[pos] ^= 1 << rng.randrange(8)
    elif kind == "byte" and data:
      data[pos] = rng.choice(INTERESTING + [rng.randrange(256)])
    elif kind == "insert":
      data[pos:pos] = rng.randbytes(rng.randint(1, 8))
    elif kind == "delete":
      del data[pos:pos + rng.randint(1, 8)]
    elif kind == "truncate":
      del data[pos:]
    elif kind == "number":  # a decimal number in a JSON header (or anywhere) -> another token
      import re
      spans = [m.span() for m in re.finditer(rb"-?\d+", bytes(data[:4096]))]
      if spans:
        a, b = rng.choice(spans)
        data[a:b] = rng.choice(NUMBERS)
    elif kind == "int" and int_positions:  # the argument byte of a BININT1 in a pickle
      p = rng.choice(int_positions)
      if p < len(data):
        data[p] = rng.choice(INTERESTING + [rng.randrange(256)])
  return bytes(data)


def storage_ranges(file):
  """[begin, end) of each */data/* zip member's bytes, read from the file's own zip headers."""
  ranges = []
  with zipfile.ZipFile(file) as zf, open(file, "rb") as f:
    for info in zf.infolist():
      if "/data/" in info.filename and info.compress_type == zipfile.ZIP_STORED:
        f.seek(info.header_offset + 26)
        n, m = struct.unpack("<HH", f.read(4))
        begin = info.header_offset + 30 + n + m
        ranges.append((begin, begin + info.file_size))
  return ranges


def file_span(a, file):
  """[lo, hi) of the bytes array `a` reads, as offsets into a memory map of `file`; None if not one."""
  chain, obj = [], a
  while obj is not None:
    chain.append(obj)
    obj = getattr(obj, "base", None)
  maps = [o for o in chain if isinstance(o, np.memmap)]
  if not maps or maps[-1].filename != os.path.abspath(file) or maps[-1].size != os.path.getsize(file):
    return None
  lo, hi = np.lib.array_utils.byte_bounds(a)
  start = np.lib.array_utils.byte_bounds(maps[-1])[0]
  return lo - start, hi - start


stats, failures = {}, []


def check(mode, file, allowed):
  stats.setdefault(mode, {"loaded": 0, "refused": 0})
  print(mode, file, flush=True)  # the last line names the file if this process dies
  try:
    arrays = (read_pth if file.endswith(".pth") else read_safetensors)(file)
  except ValueError as e:
    if file not in str(e):
      failures.append(f"{file}: ValueError without the file name: {e}")
    stats[mode]["refused"] += 1
    return
  except Exception as e:
    failures.append(f"{file}: {type(e).__name__}: {e}")
    return
  stats[mode]["loaded"] += 1
  ranges = allowed(file)
  for name, a in arrays.items():
    if not isinstance(a, np.ndarray):
      failures.append(f"{file}: {name!r} is a {type(a).__name__}")
    elif a.size:
      span = file_span(a, file)
      if span is None or a.flags.writeable or not any(b <= span[0] and span[1] <= e for b, e in ranges):
        failures.append(f"{file}: {name!r} reads bytes {span}, outside the tensor data {ranges}")


with zipfile.ZipFile(base_pth) as zf:
  members = {i.filename: zf.read(i) for i in zf.infolist()}
pkl_name = next(n for n in members if n.endswith("data.pkl"))
pkl = members[pkl_name]
int_positions = [pos + 1 for op, _, pos in pickletools.genops(pkl) if op.name == "BININT1"]
pth_bytes, st_bytes = open(base_pth, "rb").read(), open(base_st, "rb").read()

for i in range(count):  # the whole archive, mutated: zip structure, CRCs, local headers, data
  file = os.path.join(out, f"raw{i}.pth")
  open(file, "wb").write(mutate(pth_bytes))
  check("pth: mutated file", file, storage_ranges)
for i in range(count):  # the pickle mutated and re-zipped with a valid CRC: the pickle machine, the views
  file = os.path.join(out, f"pkl{i}.pth")
  with zipfile.ZipFile(file, "w") as zf:
    for name, data in members.items():
      # Half the mutants change only BININT1 arguments (offsets, sizes, strides, numels), so they
      # reach the view checks instead of stopping at a malformed opcode.
      kinds = ("int",) if i % 2 else ("flip", "byte", "insert", "delete", "truncate", "int")
      zf.writestr(name, mutate(data, int_positions, kinds) if name == pkl_name else data)
  check("pth: mutated pickle", file, storage_ranges)
for i in range(count):
  file = os.path.join(out, f"st{i}.safetensors")
  open(file, "wb").write(mutate(st_bytes))
  check("safetensors", file, lambda f: [(8 + struct.unpack("<Q", open(f, "rb").read(8))[0], os.path.getsize(f))])
print(json.dumps({"stats": stats, "failures": failures[:20]}))
'''


def test_mutation_fuzz_loads_inside_the_file_or_refuses(tmp_path):
  """200 seeded mutations per mode of a torch.save file (whole file / pickle only) and a safetensors file.

  In a child with RLIMIT_AS = 2 GiB and a timeout: each mutant either loads arrays that are read-only
  views lying inside the file's tensor data (storage members / the data after the safetensors header)
  or raises ValueError naming the file. A signal, a timeout or any other exception fails the test.
  """
  torch = pytest.importorskip("torch")
  from safetensors.numpy import save_file
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  state = torch.nn.Linear(4, 3).state_dict()  # an OrderedDict with `_metadata`, which torch.save BUILDs
  state.update({"t": base.t(), "s": base[1:3, ::2], "h": torch.randn(5, generator=g).half(),
                "b": torch.ones(3, dtype=torch.bfloat16), "i": torch.arange(4), "z": torch.tensor(1.5),
                "e": torch.zeros(0, 3), "p": torch.nn.Parameter(torch.ones(2))})
  torch.save(state, tmp_path / "base.pth")
  save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4), "h": np.ones(5, np.float16),
             "i": np.arange(4), "e": np.zeros((0, 3), np.float32)}, str(tmp_path / "base.safetensors"))
  out = tmp_path / "mutants"
  out.mkdir()
  env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _FUZZ_CHILD, str(tmp_path / "base.pth"),
                         str(tmp_path / "base.safetensors"), str(out), "13", "200"],
                        capture_output=True, text=True, timeout=120, env=env,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  last = proc.stdout.strip().splitlines()[-1:] or [""]
  assert proc.returncode == 0, (f"fuzz child exited with {proc.returncode} (negative: killed by that signal) "
                                f"while reading: {last[0]}\n{proc.stderr[-3000:]}")
  report = json.loads(last[0])
  print(report["stats"])
  assert not report["failures"], "\n".join(report["failures"])
  for mode, counts in report["stats"].items():  # both outcomes occur, so the checks above are exercised
    assert counts["loaded"] > 0 and counts["refused"] > 0, (mode, counts)
