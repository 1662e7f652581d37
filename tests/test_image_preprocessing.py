"""Image preprocessing (modrwkv_jax.data.image) against transformers' Pil processors.

References: `SiglipImageProcessorPil`, `Siglip2ImageProcessorPil` and `CLIPImageProcessorPil`
(transformers 5.x, numpy + PIL backends). Inputs are PIL-drawn scenes (gradients, noise, shapes, text)
written to PNG / JPEG files and decoded again, in several sizes and modes (RGB, L, RGBA, P with and
without transparency, LA, I;16) plus uint8 arrays. Tolerance: max |ours − HF| < 1e-5 after
normalisation (in practice the outputs are bit-identical: both run the same PIL resize).
"""

import json
import os

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest

from modrwkv_jax.data import image as im

TOL = 1e-5


def draw_scene(width: int, height: int, seed: int) -> PIL.Image.Image:
  """An RGB test scene: colour gradients with Gaussian noise, filled ellipses and a line of text."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width]
  base = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], -1)
  base = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
  image = PIL.Image.fromarray(base)
  draw = PIL.ImageDraw.Draw(image)
  for _ in range(6):
    x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
    box = [x0, y0, x0 + int(rng.integers(5, width // 2 + 6)), y0 + int(rng.integers(5, height // 2 + 6))]
    draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
  draw.text((width // 5, height // 3), "ModRWKV", fill=(255, 255, 0))
  return image


def in_mode(scene: PIL.Image.Image, mode: str) -> PIL.Image.Image:
  if mode == "RGBA":  # a horizontal alpha ramp, fully transparent on the left
    rgba = np.array(scene.convert("RGBA"))
    rgba[..., 3] = np.linspace(0, 255, scene.width).astype(np.uint8)[None]
    return PIL.Image.fromarray(rgba)
  if mode == "I;16":  # 16-bit grayscale, values up to 765 (> 255: HF saturates them)
    return PIL.Image.fromarray(np.array(scene.convert("L")).astype(np.uint16) * 3)
  if mode == "P+transparency":  # palette image whose colour 0 is transparent (tRNS)
    p = scene.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=16)
    p.info["transparency"] = 0
    return p
  return scene.convert(mode)


# (width, height, mode, file extension): sizes above and below the targets, portrait and landscape.
CASES = [(64, 48, "RGB", "jpg"), (200, 150, "RGB", "png"), (33, 90, "L", "png"), (120, 41, "RGBA", "png"),
         (57, 57, "P", "png"), (45, 30, "P+transparency", "png"), (16, 16, "LA", "png"), (40, 70, "I;16", "png"),
         (19, 23, "RGB", "jpg")]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  files = []
  for width, height, mode, ext in CASES:
    image = in_mode(draw_scene(width, height, seed=width * height), mode)
    file = folder / f"{width}x{height}_{mode.replace(';', '').replace('+', '_')}.{ext}"
    image.save(file, transparency=image.info["transparency"]) if "transparency" in image.info else image.save(file)
    files.append(str(file))
  return files


def _processors():
  from transformers import CLIPImageProcessorPil, Siglip2ImageProcessorPil, SiglipImageProcessorPil
  return [
      ("siglip", SiglipImageProcessorPil(size={"height": 24, "width": 24}),
       im.default_config("siglip", size=(("height", 24), ("width", 24)))),
      ("siglip-bilinear-nonsquare", SiglipImageProcessorPil(size={"height": 16, "width": 40}, resample=2),
       im.default_config("siglip", size={"height": 16, "width": 40}, resample=2)),
      ("clip", CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 28, "width": 28}),
       im.default_config("clip", size=(("shortest_edge", 30),), crop_size=(28, 28))),
      # crop larger than the resized image: HF zero-pads (before normalisation)
      ("clip-pad", CLIPImageProcessorPil(size={"shortest_edge": 20}, crop_size={"height": 26, "width": 24}),
       im.default_config("clip", size=(("shortest_edge", 20),), crop_size=(26, 24))),
      ("clip-longest-edge", CLIPImageProcessorPil(size={"shortest_edge": 30, "longest_edge": 40}, do_center_crop=False),
       im.default_config("clip", size=(("shortest_edge", 30), ("longest_edge", 40)), do_center_crop=False)),
      # HF Siglip2 leaves do_convert_rgb unset and then fails on non-RGB images; we always convert.
      ("siglip2", Siglip2ImageProcessorPil(patch_size=8, max_num_patches=20, do_convert_rgb=True),
       im.default_config("siglip2", patch_size=8, max_num_patches=20)),
  ]


def _max_diff(kind, ref, ours) -> float:
  """max |ours − HF|, checking the NaFlex mask and spatial shapes exactly."""
  if kind.startswith("siglip2"):
    np.testing.assert_array_equal(np.asarray(ref["pixel_attention_mask"]).astype(bool), ours["pixel_attention_mask"])
    np.testing.assert_array_equal(np.asarray(ref["spatial_shapes"]), ours["spatial_shapes"])
    return float(np.abs(np.asarray(ref["pixel_values"]) - ours["pixel_values"]).max())
  ref = np.asarray(ref["pixel_values"]).transpose(0, 2, 3, 1)  # HF is channels-first
  assert ref.shape == ours["pixel_values"].shape, (ref.shape, ours["pixel_values"].shape)
  return float(np.abs(ref - ours["pixel_values"]).max())


def test_processors_match_transformers_on_image_files(image_files):
  """Every processor x every file: max |ours − HF Pil processor| < 1e-5."""
  errors = {}
  for name, hf, config in _processors():
    for file in image_files:
      pil = im.load_image(file)
      err = _max_diff(name, hf(pil), im.preprocess_batch([pil], config))
      errors[(name, os.path.basename(file))] = err
  worst = max(errors.items(), key=lambda kv: kv[1])
  print(f"preprocessing max abs diff over {len(errors)} (processor, image) pairs: {worst[1]:.3g} at {worst[0]}")
  assert worst[1] < TOL, f"max diff {worst[1]} at {worst[0]}"


def test_uint8_arrays_match_transformers():
  """uint8 arrays [H, W, 3] and [H, W, 4] (HF's numpy RGB conversion rounds alpha blending)."""
  rgb = np.array(draw_scene(37, 29, seed=3))
  rgba = np.concatenate([rgb, np.random.default_rng(0).integers(0, 256, (29, 37, 1), dtype=np.uint8)], -1)
  for name, hf, config in _processors():
    for array in (rgb, rgba):
      err = _max_diff(name, hf(array), im.preprocess_batch([array], config))
      assert err < TOL, (name, array.shape, err)


def test_batch_of_mixed_images_siglip2(image_files):
  from transformers import Siglip2ImageProcessorPil
  hf = Siglip2ImageProcessorPil(patch_size=4, max_num_patches=64, do_convert_rgb=True)
  config = im.default_config("siglip2", patch_size=4, max_num_patches=64)
  images = [im.load_image(f) for f in image_files]
  ours = im.preprocess_batch(images, config)
  assert ours["pixel_values"].shape == (len(images), 64, 48)
  assert _max_diff("siglip2", hf(images), ours) < TOL


def test_configs_from_preprocessor_json(tmp_path, image_files):
  """Processors saved by transformers (and a legacy CLIP file with int sizes) load with the same behaviour."""
  from transformers import CLIPImageProcessorPil, Siglip2ImageProcessorPil, SiglipImageProcessorPil
  saved = [("siglip", SiglipImageProcessorPil(size={"height": 32, "width": 32}, resample=2)),
           ("siglip2", Siglip2ImageProcessorPil(patch_size=4, max_num_patches=30)),
           ("clip", CLIPImageProcessorPil(size={"shortest_edge": 26}, crop_size={"height": 26, "width": 26}))]
  legacy = tmp_path / "legacy_clip"  # openai/clip-vit-large-patch14-336 style
  legacy.mkdir()
  (legacy / "preprocessor_config.json").write_text(json.dumps({
      "crop_size": 22, "do_center_crop": True, "do_normalize": True, "do_resize": True,
      "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(im.OPENAI_CLIP_MEAN),
      "image_std": list(im.OPENAI_CLIP_STD), "resample": 3, "size": 22}))
  folders = []
  for kind, processor in saved:
    processor.save_pretrained(tmp_path / kind)
    folders.append((kind, tmp_path / kind, type(processor)))
  folders.append(("clip", legacy, CLIPImageProcessorPil))
  rgb_files = [f for f in image_files if "RGB." in f or f.endswith(".jpg")]
  for kind, folder, cls in folders:
    config = im.load_processor_config(folder)
    assert config.kind == kind
    hf = cls.from_pretrained(folder)
    for file in rgb_files:
      pil = im.load_image(file)
      assert _max_diff(kind, hf(pil), im.preprocess_batch([pil], config)) < TOL, (folder, file)
  assert im.load_processor_config(legacy).crop_size == (22, 22)
  assert im.load_processor_config(legacy).size_dict == {"shortest_edge": 22}


def test_siglip2_384_style_defaults():
  """SigLIP2-B/16-384 preprocessing (docs/architecture.md#encoders): 384×384 bilinear, 1/255, mean = std = 0.5 -> values in [−1, 1]."""
  config = im.processor_config_from_hf({"image_processor_type": "SiglipImageProcessor", "resample": 2,
                                        "size": {"height": 384, "width": 384}, "image_mean": [0.5] * 3,
                                        "image_std": [0.5] * 3, "rescale_factor": 1 / 255})
  x = im.preprocess(draw_scene(500, 300, seed=1), config)
  assert x.shape == (384, 384, 3) and x.dtype == np.float32
  assert -1.0 <= x.min() and x.max() <= 1.0


def test_high_bit_depth_policies(image_files):
  file = next(f for f in image_files if "I16" in f)
  pil = im.load_image(file)
  assert pil.mode in im.HIGH_BIT_DEPTH_MODES
  with pytest.raises(ValueError, match=r"I16.*more than 8 bits"):
    im.preprocess(file, im.default_config("siglip", high_bit_depth="error"))
  scaled = im.to_rgb(pil, "scale")
  np.testing.assert_array_equal(scaled[..., 0], np.clip(np.round(np.asarray(pil, np.float64) / 257), 0, 255))
  clipped = im.to_rgb(pil, "clip")  # HF: PIL saturates at 255
  np.testing.assert_array_equal(clipped[..., 0], np.minimum(np.asarray(pil), 255))


def test_truncated_and_bad_files_name_the_file(tmp_path, image_files):
  jpg = next(f for f in image_files if f.endswith(".jpg"))
  data = open(jpg, "rb").read()
  truncated = tmp_path / "truncated.jpg"
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"truncated\.jpg: truncated or corrupt"):
    im.load_image(truncated)
  png = next(f for f in image_files if f.endswith(".png"))
  cut_png = tmp_path / "cut.png"
  cut_png.write_bytes(open(png, "rb").read()[:200])
  with pytest.raises(ValueError, match=r"cut\.png"):
    im.preprocess(cut_png, im.default_config("clip"))
  text = tmp_path / "notes.png"
  text.write_text("not an image")
  with pytest.raises(ValueError, match=r"notes\.png: not an image"):
    im.load_image(text)
  with pytest.raises(FileNotFoundError):
    im.load_image(tmp_path / "missing.png")


def test_bad_arrays_and_configs():
  with pytest.raises(ValueError, match=r"dtype float32; expected uint8"):
    im.preprocess(np.zeros((8, 8, 3), np.float32), im.default_config("siglip"))
  with pytest.raises(ValueError, match=r"shape \(3, 8, 8, 2\)"):
    im.preprocess(np.zeros((3, 8, 8, 2), np.uint8), im.default_config("siglip"))
  with pytest.raises(ValueError, match=r"preprocessor_config.json: image_processor_type 'ViTImageProcessor'"):
    im.processor_config_from_hf({"image_processor_type": "ViTImageProcessor"})
  with pytest.raises(ValueError, match=r"different sizes"):
    im.preprocess_batch([np.zeros((10, 20, 3), np.uint8), np.zeros((20, 10, 3), np.uint8)],
                        im.default_config("clip", do_center_crop=False, size=(("shortest_edge", 8),)))
  with pytest.raises(ValueError, match=r"does not cut into"):
    im.preprocess(np.zeros((10, 16, 3), np.uint8), im.default_config("siglip2", do_resize=False, patch_size=8))
