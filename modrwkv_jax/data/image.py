"""Image preprocessing for the vision encoders, in numpy + PIL: the SigLIP, SigLIP2 (NaFlex) and CLIP processors.

Each processor equals its transformers counterpart (`SiglipImageProcessorPil`,
`Siglip2ImageProcessorPil`, `CLIPImageProcessorPil`, transformers 5.x) on the same inputs, step by step:
1. to RGB uint8 (`to_rgb`): PIL `convert("RGB")`, images with transparency composited onto white;
2. resize with PIL (`resample` code from preprocessor_config.json: 2 bilinear, 3 bicubic, ...) to
   - SigLIP: size {height, width} (384×384 for siglip2-base-patch16-384);
   - CLIP: the shorter side to size.shortest_edge (aspect kept, long side truncated), then a centre crop;
   - SigLIP2 NaFlex: the largest patch-aligned size with at most max_num_patches patches
     (`naflex_size`, HF's binary search);
3. rescale: uint8 · rescale_factor (in float64, then float32);
4. normalise: (x − mean) / std in float32.
SigLIP2 NaFlex then cuts the image into p×p patches flattened (py, px, channel), pads them to
max_num_patches and returns the patch mask and the (rows, cols) patch grid.

Outputs are channels-last: float32[H, W, 3] per image (HF gives [3, H, W]), the layout
`siglip.forward` and `clip.forward` take.

Differences from HF, on purpose: every image is converted to RGB, also for SigLIP2 whose HF processor
leaves `do_convert_rgb` unset and then fails on grayscale / RGBA / palette images (HF's result with
`do_convert_rgb=True` is what we return). 16-bit and 32-bit integer images ("I;16", "I") follow HF by
default: PIL's conversion saturates values above 255 (`high_bit_depth="clip"`); "scale" maps
0..65535 to 0..255 (÷257; "I" samples outside 0..65535 are refused) and "error" refuses them.
Float images (mode "F", e.g. a float TIFF) never go through PIL's conversion, which rounds samples in
[0, 1] to 0 or 1 (an all-black image, all −1 after normalisation): under "clip" and "scale" samples in
[0, 1] become round(255·x); a float image with samples outside [0, 1] or NaN/inf is refused.

Untrusted files (every limit raises `ImageError`, a ValueError naming the image, with a `reason` the
data pipeline counts skipped records under):
  * decoding: `open_image` reads only the header and refuses more than `max_pixels` pixels
    (`MAX_IMAGE_PIXELS` = 8192² ≈ 67 Mpx, 192 MiB as RGB uint8) before any pixel is decoded; PIL's own
    decompression-bomb check (`PIL.Image.MAX_IMAGE_PIXELS`) and every decoder error (truncated or
    corrupt files, bad headers) become an ImageError too ("image_too_large", "corrupt_image");
  * resizing: a "shortest_edge" resize keeps the aspect ratio, so a 1×20000 image would become
    224×4,480,000. Images whose long side exceeds `max_aspect_ratio` (`MAX_ASPECT_RATIO` = 200, the
    bound of Qwen2-VL's processor) times their short side are refused there ("bad_aspect_ratio"), and
    every resize target must hold at least one and at most `max_pixels` pixels ("image_too_large").
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import struct
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import PIL.Image
import PIL.ImageOps

from modrwkv_jax.models.encoders.hf_snapshot import read_preprocessor_config

# PIL resampling codes as stored in preprocessor_config.json ("resample": 3).
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

IMAGENET_STANDARD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

MAX_IMAGE_PIXELS = 8192 * 8192  # most pixels of a decoded image or a resize target (192 MiB as RGB uint8)
MAX_ASPECT_RATIO = 200.0  # most long side / short side for a shortest-edge resize (Qwen2-VL's bound)

# What PIL's decoders raise on a bad file: UnidentifiedImageError and "image file is truncated" are
# OSErrors; plugins also leak SyntaxError (bad headers), EOFError, struct.error and zlib.error.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
BOMB_ERRORS = (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning)


class ImageError(ValueError):
  """An image that cannot be used, named in the message; `reason` is the pipeline's skip counter key."""

  def __init__(self, message: str, reason: str = "corrupt_image"):
    super().__init__(message)
    self.reason = reason

  def __reduce__(self):  # survives the trip from a worker process
    return ImageError, (str(self), self.reason)


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
  """Settings of one image processor (the fields of preprocessor_config.json). Frozen, hashable.

  kind: "siglip" (fixed size), "siglip2" (NaFlex patches) or "clip" (shortest edge + centre crop).
  size: {"height": h, "width": w} or {"shortest_edge": s} [+ "longest_edge"], HF's size dict (stored
    as its items so the config stays hashable; see `size_dict`).
  crop_size: (height, width) of the centre crop (CLIP); a {"height", "width"} dict is accepted.
  high_bit_depth: "clip" | "scale" | "error", how 16/32-bit and float images become 8-bit (module docstring).
  max_pixels, max_aspect_ratio: limits for untrusted files (module docstring); not HF fields.
  """
  kind: str
  do_resize: bool = True
  size: tuple[tuple[str, int], ...] = (("height", 224), ("width", 224))
  resample: int = 3
  do_center_crop: bool = False
  crop_size: tuple[int, int] | None = None
  do_rescale: bool = True
  rescale_factor: float = 1 / 255
  do_normalize: bool = True
  image_mean: tuple[float, ...] = IMAGENET_STANDARD
  image_std: tuple[float, ...] = IMAGENET_STANDARD
  patch_size: int = 16
  max_num_patches: int = 256
  high_bit_depth: str = "clip"
  max_pixels: int = MAX_IMAGE_PIXELS
  max_aspect_ratio: float = MAX_ASPECT_RATIO

  def __post_init__(self):
    if isinstance(self.size, Mapping):  # accept HF's dict form, store hashable items
      object.__setattr__(self, "size", tuple(self.size.items()))
    if isinstance(self.crop_size, Mapping):
      object.__setattr__(self, "crop_size", (self.crop_size["height"], self.crop_size["width"]))
    if self.kind not in KINDS:
      raise ValueError(f"ImageProcessorConfig.kind must be one of {sorted(KINDS)}, got {self.kind!r}")
    if self.resample not in RESAMPLE_NAMES:
      raise ValueError(f"ImageProcessorConfig.resample={self.resample!r} is not a PIL resampling code "
                       f"{RESAMPLE_NAMES}")
    if self.high_bit_depth not in ("clip", "scale", "error"):
      raise ValueError(f"ImageProcessorConfig.high_bit_depth must be 'clip', 'scale' or 'error', "
                       f"got {self.high_bit_depth!r}")
    if len(self.image_mean) != 3 or len(self.image_std) != 3:
      raise ValueError(f"ImageProcessorConfig: image_mean {self.image_mean} and image_std {self.image_std} "
                       "need 3 values (RGB)")
    if self.do_center_crop and self.crop_size is None:
      raise ValueError("ImageProcessorConfig: do_center_crop needs crop_size (height, width)")
    if not (isinstance(self.max_pixels, int) and self.max_pixels > 0 and self.max_aspect_ratio >= 1):
      raise ValueError(f"ImageProcessorConfig: max_pixels={self.max_pixels!r} must be a positive int and "
                       f"max_aspect_ratio={self.max_aspect_ratio!r} at least 1")

  @property
  def size_dict(self) -> dict[str, int]:
    return dict(self.size)

  def replace(self, **kwargs) -> ImageProcessorConfig:
    return dataclasses.replace(self, **kwargs)


# The class defaults of the HF Pil processors (used for keys a preprocessor_config.json omits).
# default_to_square: how an int `size` is read (True: a square, False: the shortest edge).
KINDS: dict[str, dict] = {
    "siglip": dict(size={"height": 224, "width": 224}, resample=3, image_mean=IMAGENET_STANDARD,
                   image_std=IMAGENET_STANDARD, do_center_crop=False, default_to_square=False),
    "siglip2": dict(size=None, resample=2, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                    do_center_crop=False, patch_size=16, max_num_patches=256, default_to_square=True),
    "clip": dict(size={"shortest_edge": 224}, resample=3, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                 do_center_crop=True, crop_size={"height": 224, "width": 224}, default_to_square=False),
}

# preprocessor_config.json image_processor_type / feature_extractor_type -> kind ("Fast"/"Pil" suffixes dropped).
PROCESSOR_TYPES = {"SiglipImageProcessor": "siglip", "Siglip2ImageProcessor": "siglip2",
                   "CLIPImageProcessor": "clip", "CLIPFeatureExtractor": "clip"}


def _size_dict(size, default_to_square: bool, source: str, name: str) -> dict[str, int]:
  """HF `get_size_dict`: an int is a square (default_to_square) or the shortest edge; a list is (h, w)."""
  if isinstance(size, Mapping):
    out = {k: int(v) for k, v in size.items() if v is not None}
  elif isinstance(size, int):
    out = {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
  elif isinstance(size, (list, tuple)) and len(size) == 2:
    out = {"height": int(size[0]), "width": int(size[1])}
  else:
    raise ValueError(f"{source}: {name}={size!r} is not an int, [height, width] or a dict")
  valid = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"})
  if set(out) not in valid:
    raise ValueError(f"{source}: {name}={size!r} has keys {sorted(out)}; supported: {[sorted(v) for v in valid]}")
  return out


def processor_config_from_hf(hf: Mapping, source: str = "preprocessor_config.json", **overrides) -> ImageProcessorConfig:
  """An ImageProcessorConfig from a parsed preprocessor_config.json; `overrides` replace fields."""
  type_name = hf.get("image_processor_type") or hf.get("feature_extractor_type")
  base = str(type_name)
  for suffix in ("Fast", "Pil"):
    base = base.removesuffix(suffix)
  if base not in PROCESSOR_TYPES:
    raise ValueError(f"{source}: image_processor_type {type_name!r} is not supported; expected one of "
                     f"{sorted(PROCESSOR_TYPES)} (optionally with a 'Fast'/'Pil' suffix)")
  kind = PROCESSOR_TYPES[base]
  defaults = KINDS[kind]
  get = lambda key, default=None: hf[key] if hf.get(key) is not None else defaults.get(key, default)
  default_to_square = bool(get("default_to_square"))
  fields = dict(kind=kind, do_resize=bool(get("do_resize", True)), resample=int(get("resample")),
                do_rescale=bool(get("do_rescale", True)), rescale_factor=float(get("rescale_factor", 1 / 255)),
                do_normalize=bool(get("do_normalize", True)),
                image_mean=tuple(float(v) for v in np.broadcast_to(get("image_mean"), (3,))),
                image_std=tuple(float(v) for v in np.broadcast_to(get("image_std"), (3,))),
                do_center_crop=bool(get("do_center_crop", False)))
  if kind == "siglip2":
    fields.update(patch_size=int(get("patch_size")), max_num_patches=int(get("max_num_patches")))
  else:
    fields["size"] = tuple(_size_dict(get("size"), default_to_square, source, "size").items())
  if fields["do_center_crop"]:
    crop = _size_dict(get("crop_size"), True, source, "crop_size")
    if set(crop) != {"height", "width"}:
      raise ValueError(f"{source}: crop_size={get('crop_size')!r} must give a height and a width")
    fields["crop_size"] = (crop["height"], crop["width"])
  if kind != "siglip2" and fields["do_resize"] and get("size") is None:
    raise ValueError(f"{source}: do_resize is set but there is no size")
  return ImageProcessorConfig(**{**fields, **overrides})


def load_processor_config(path: str | os.PathLike, **overrides) -> ImageProcessorConfig:
  """The processor of a snapshot folder, from its preprocessor_config.json."""
  file = os.path.join(os.fspath(path), "preprocessor_config.json")
  return processor_config_from_hf(read_preprocessor_config(path), file, **overrides)


def default_config(kind: str, **overrides) -> ImageProcessorConfig:
  """The HF class defaults of a processor kind, e.g. default_config("siglip", size={"height": 384, "width": 384})."""
  if kind not in KINDS:
    raise ValueError(f"unknown image processor kind {kind!r}; choose one of {sorted(KINDS)}")
  return processor_config_from_hf({"image_processor_type": {"siglip": "SiglipImageProcessor",
                                                            "siglip2": "Siglip2ImageProcessor",
                                                            "clip": "CLIPImageProcessor"}[kind]}, **overrides)


# ---------------------------------------------------------------------------------------------
# Decoding and RGB conversion.


def open_image(file, *, source: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> PIL.Image.Image:
  """Opens an image (a path or encoded bytes) reading only its header, and checks its pixel count.

  Returns a lazy PIL image (call `.load()` or use `load_image`; close it when done). Raises
  FileNotFoundError for a missing path and ImageError for anything else: not an image, a corrupt
  header, or more than `max_pixels` pixels (reason "image_too_large", before a pixel is decoded).
  """
  if isinstance(file, (bytes, bytearray, memoryview)):
    fp, source = io.BytesIO(bytes(file)), source or "image bytes"
  else:
    fp = os.fspath(file)
    source = source or fp
  try:
    image = PIL.Image.open(fp)
  except FileNotFoundError:
    raise
  except PIL.UnidentifiedImageError as e:
    raise ImageError(f"{source}: not an image file PIL can read ({e})") from e
  except BOMB_ERRORS as e:  # PIL's own check of the header size (PIL.Image.MAX_IMAGE_PIXELS)
    raise ImageError(f"{source}: refused as a decompression bomb ({e})", "image_too_large") from e
  except DECODE_ERRORS as e:
    raise ImageError(f"{source}: truncated or corrupt image file ({type(e).__name__}: {e})") from e
  width, height = image.size
  if width <= 0 or height <= 0 or width * height > max_pixels:
    image.close()
    raise ImageError(f"{source}: the header gives {width}×{height} = {width * height:,} pixels; at most "
                     f"{max_pixels:,} are decoded (max_pixels); shrink the image first", "image_too_large")
  return image


def load_image(file, *, source: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> PIL.Image.Image:
  """Opens and fully decodes an image (a path or encoded bytes), applying its EXIF orientation (as HF
  `load_image` does).

  The mode is kept (RGB conversion happens in `to_rgb`). A missing file raises FileNotFoundError; an
  unreadable, truncated or too large one (`open_image`) raises an ImageError naming the file.
  """
  image = open_image(file, source=source, max_pixels=max_pixels)
  source = source or (os.fspath(file) if isinstance(file, (str, os.PathLike)) else "image bytes")
  try:
    with image:
      image.load()
      return PIL.ImageOps.exif_transpose(image)
  except BOMB_ERRORS as e:
    raise ImageError(f"{source}: refused as a decompression bomb ({e})", "image_too_large") from e
  except DECODE_ERRORS as e:
    raise ImageError(f"{source}: truncated or corrupt image file ({type(e).__name__}: {e})") from e


def _from_high_bit_depth(image: PIL.Image.Image, policy: str, source: str) -> PIL.Image.Image:
  if policy == "error":
    raise ImageError(f"{source}: image mode {image.mode!r} has more than 8 bits per sample; convert it to 8-bit "
                     "first or pass high_bit_depth='clip' (HF behaviour: saturate at 255) or 'scale' (÷257)",
                     "unsupported_image_mode")
  if image.mode == "F":  # floats: [0, 1] -> round(255·x) under "clip" and "scale"; anything else is refused
    x = np.asarray(image, dtype=np.float64)
    if not np.isfinite(x).all():
      raise ImageError(f"{source}: float image (mode 'F') has {int((~np.isfinite(x)).sum())} NaN/inf samples",
                       "unsupported_image_mode")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
      raise ImageError(f"{source}: float image (mode 'F') has samples in [{lo:g}, {hi:g}]; only floats in "
                       "[0, 1] are read (as round(255·x)); convert it to 8-bit first", "unsupported_image_mode")
    return PIL.Image.fromarray(np.round(x * 255).astype(np.uint8))
  if policy == "clip":
    return image  # PIL's own conversion below saturates above 255, like HF
  x = np.asarray(image, dtype=np.float64)
  lo, hi = float(x.min()), float(x.max())
  if lo < 0 or hi > 65535:
    raise ImageError(f"{source}: image mode {image.mode!r} has samples in [{lo:g}, {hi:g}]; "
                     "high_bit_depth='scale' maps 0..65535 to 0..255; convert it to 8-bit first",
                     "unsupported_image_mode")
  return PIL.Image.fromarray(np.clip(np.round(x / 257.0), 0, 255).astype(np.uint8))


def to_rgb(image, high_bit_depth: str = "clip", source: str = "image") -> np.ndarray:
  """An image as uint8[H, W, 3] RGB, the way HF's `convert_to_rgb` does.

  Args:
    image: a PIL image of any mode, or a uint8 array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (RGBA).
    high_bit_depth: "clip" | "scale" | "error" for 16/32-bit PIL modes (see the module docstring).
    source: how errors name the image (its file).
  """
  if isinstance(image, PIL.Image.Image):
    try:
      if image.mode in HIGH_BIT_DEPTH_MODES:
        image = _from_high_bit_depth(image, high_bit_depth, source)
      if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(PIL.Image.alpha_composite(white, rgba).convert("RGB"))
      return np.array(image.convert("RGB"))
    except ImageError:
      raise
    except BOMB_ERRORS as e:
      raise ImageError(f"{source}: refused as a decompression bomb ({e})", "image_too_large") from e
    except DECODE_ERRORS as e:  # a lazily opened image decodes here; some modes have no RGB conversion
      raise ImageError(f"{source}: cannot convert the {image.mode!r} image to RGB ({type(e).__name__}: {e})") from e
  x = np.asarray(image)
  if x.dtype != np.uint8:
    raise ImageError(f"{source}: image array has dtype {x.dtype}; expected uint8 [H, W(, C)] "
                     "(or pass a PIL image)", "bad_image")
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] not in (1, 3, 4) or min(x.shape[:2]) == 0:
    raise ImageError(f"{source}: image array has shape {x.shape}; expected channels-last [H, W], [H, W, 1], "
                     "[H, W, 3] or [H, W, 4]", "bad_image")
  if x.shape[-1] == 1:
    return np.repeat(x, 3, axis=-1)
  if x.shape[-1] == 4:  # HF's numpy path: round(alpha·rgb + (1 − alpha)·255)
    alpha = x[..., 3:4] / 255
    return np.round(alpha * x[..., :3] + (1 - alpha) * 255).astype(np.uint8)
  return x


# ---------------------------------------------------------------------------------------------
# Geometry.


def resize(image: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
  """uint8[h, w, 3] -> uint8[height, width, 3] with PIL (`resample` a PIL code)."""
  out = PIL.Image.fromarray(image).resize((width, height), resample=PIL.Image.Resampling(resample))
  return np.array(out)


def resize_output_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
  """The (height, width) HF's Pil backend resizes to for a size dict."""
  if "shortest_edge" in size and "longest_edge" in size:  # HF get_size_with_aspect_ratio
    target, max_size = size["shortest_edge"], size["longest_edge"]
    raw = None
    small, large = float(min(height, width)), float(max(height, width))
    if large / small * target > max_size:
      raw = max_size * small / large
      target = int(round(raw))
    if (height <= width and height == target) or (width <= height and width == target):
      return height, width
    if width < height:
      return (int(raw * height / width) if raw is not None else int(target * height / width)), target
    return target, (int(raw * width / height) if raw is not None else int(target * width / height))
  if "shortest_edge" in size:  # HF get_resize_output_image_size(default_to_square=False)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)
  return size["height"], size["width"]


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """HF's centre crop of [H, W, C]: the top-left offset is ⌊(H − h)/2⌋; a too small image is zero-padded."""
  H, W = image.shape[:2]
  top, left = (H - height) // 2, (W - width) // 2
  if top >= 0 and left >= 0:
    return image[top:top + height, left:left + width]
  new_h, new_w = max(height, H), max(width, W)
  padded = np.zeros((new_h, new_w) + image.shape[2:], image.dtype)
  pad_top, pad_left = math.ceil((new_h - H) / 2), math.ceil((new_w - W) / 2)
  padded[pad_top:pad_top + H, pad_left:pad_left + W] = image
  top, left = top + pad_top, left + pad_left
  return padded[max(0, top):min(new_h, top + height), max(0, left):min(new_w, left + width)]


def naflex_size(height: int, width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5) -> tuple[int, int]:
  """HF's `get_image_size_for_max_num_patches`: binary search for the largest scale whose patch-aligned
  size (each side rounded up to a multiple of patch_size, at least one patch) has <= max_num_patches patches."""
  def scaled(scale: float, size: int) -> int:
    return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

  lo, hi = eps / 10, 100.0
  while hi - lo >= eps:
    scale = (lo + hi) / 2
    if (scaled(scale, height) / patch_size) * (scaled(scale, width) / patch_size) <= max_num_patches:
      lo = scale
    else:
      hi = scale
  return scaled(lo, height), scaled(lo, width)


# ---------------------------------------------------------------------------------------------
# The processors.


def _rescale_normalize(image: np.ndarray, config: ImageProcessorConfig) -> np.ndarray:
  """uint8[H, W, 3] -> float32[H, W, 3]: x·rescale_factor (float64 then float32), then (x − mean)/std (float32)."""
  x = image.astype(np.float64) * config.rescale_factor if config.do_rescale else image
  x = x.astype(np.float32)
  if config.do_normalize:
    x = (x - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)
  return x


@dataclasses.dataclass(frozen=True)
class NaFlexPatches:
  """One image for a SigLIP2 NaFlex encoder.

  pixel_values: float32[max_num_patches, p·p·3] patches row-major, each flattened (py, px, channel),
    zero rows after the real ones; pixel_attention_mask: bool[max_num_patches]; spatial_shape:
    (rows, cols) of real patches.
  """
  pixel_values: np.ndarray
  pixel_attention_mask: np.ndarray
  spatial_shape: tuple[int, int]


def _check_pixels(height: int, width: int, config: ImageProcessorConfig, source: str, what: str) -> None:
  if height < 1 or width < 1 or height * width > config.max_pixels:
    raise ImageError(f"{source}: {what} {width}×{height} = {width * height:,} pixels; at least 1 and at most "
                     f"{config.max_pixels:,} are allowed (max_pixels)", "image_too_large")


def resize_target(height: int, width: int, config: ImageProcessorConfig, source: str = "image") -> tuple[int, int]:
  """`resize_output_size` for a SigLIP / CLIP processor, bounded for untrusted images.

  A "shortest_edge" resize keeps the aspect ratio, so the long side grows with it (1×20000 at
  shortest_edge 224 gives 224×4,480,000): a long side more than `config.max_aspect_ratio` times the
  short side raises ImageError "bad_aspect_ratio", and any target outside 1..`config.max_pixels` pixels
  raises ImageError "image_too_large".
  """
  size = config.size_dict
  long, short = max(height, width), min(height, width)
  if "shortest_edge" in size and long > config.max_aspect_ratio * short:
    raise ImageError(f"{source}: a {width}×{height} image has an aspect ratio of {long / max(short, 1):.0f}:1, more "
                     f"than max_aspect_ratio={config.max_aspect_ratio:g}; its shortest_edge={size['shortest_edge']} "
                     "resize would stretch the long side out of bounds; crop or pad the image first",
                     "bad_aspect_ratio")
  h, w = resize_output_size(height, width, size)
  _check_pixels(h, w, config, source, f"resizing {width}×{height} to {size} gives")
  return h, w


def preprocess(image, config: ImageProcessorConfig, source: str = "image"):
  """One image through the processor.

  Args:
    image: PIL image (any mode) or uint8 array [H, W(, C)] channels-last; or a path (str / PathLike),
      which is decoded with `load_image`.
    config: the processor settings (`load_processor_config(snapshot)`).
    source: how errors name the image.
  Returns:
    float32[H', W', 3] for "siglip" / "clip"; NaFlexPatches for "siglip2".
  Raises:
    ImageError (a ValueError with a `reason`) for an image that cannot be used: unreadable, too many
    pixels, an extreme aspect ratio for a shortest-edge resize, an unsupported mode (module docstring).
  """
  if isinstance(image, (str, os.PathLike)):
    source = os.fspath(image)
    image = load_image(image, max_pixels=config.max_pixels)
  if isinstance(image, PIL.Image.Image):
    _check_pixels(image.height, image.width, config, source, "the image has")
  x = to_rgb(image, config.high_bit_depth, source)
  H, W = x.shape[:2]
  _check_pixels(H, W, config, source, "the image has")
  if config.kind == "siglip2":
    p = config.patch_size
    if config.do_resize:
      x = resize(x, *naflex_size(H, W, p, config.max_num_patches), config.resample)
    elif H % p or W % p or (H // p) * (W // p) > config.max_num_patches:
      raise ImageError(f"{source}: image of {H}×{W} pixels does not cut into at most {config.max_num_patches} "
                       f"{p}×{p} patches; enable do_resize", "bad_image_size")
    x = _rescale_normalize(x, config)
    rows, cols = x.shape[0] // p, x.shape[1] // p
    patches = x.reshape(rows, p, cols, p, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, p * p * 3)
    n = config.max_num_patches
    values = np.zeros((n, p * p * 3), np.float32)
    values[:rows * cols] = patches
    return NaFlexPatches(values, np.arange(n) < rows * cols, (rows, cols))
  if config.do_resize:
    x = resize(x, *resize_target(H, W, config, source), config.resample)
  if config.do_center_crop:
    x = center_crop(x, *config.crop_size)
  return _rescale_normalize(x, config)


def preprocess_batch(images: Sequence, config: ImageProcessorConfig) -> dict[str, np.ndarray]:
  """Several images, stacked.

  Returns:
    {"pixel_values": float32[B, H, W, 3]} for "siglip" / "clip", or for "siglip2"
    {"pixel_values": float32[B, N, p·p·3], "pixel_attention_mask": bool[B, N], "spatial_shapes": int32[B, 2]}
    with N = max_num_patches: the keyword arguments of `siglip.forward` / `clip.forward`.
  """
  if not len(images):
    raise ValueError("preprocess_batch: no images")
  out = [preprocess(image, config, source=f"image {i}") for i, image in enumerate(images)]
  if config.kind == "siglip2":
    return {"pixel_values": np.stack([o.pixel_values for o in out]),
            "pixel_attention_mask": np.stack([o.pixel_attention_mask for o in out]),
            "spatial_shapes": np.array([o.spatial_shape for o in out], np.int32)}
  shapes = {o.shape for o in out}
  if len(shapes) > 1:
    raise ValueError(f"preprocess_batch: images come out with different sizes {sorted(shapes)}; set a fixed "
                     "size or a centre crop")
  return {"pixel_values": np.stack(out)}
