"""SigLIP2 NaFlex as a first-class ModRWKV encoder: the data pipeline's NaFlex batches (patches, patch masks,
patch grids, empty image slots of text-only rows) through the loss (eager equal to jitted), batched answering
(eval.py's engine) and `Chat` (NaFlexPatches from `data.image.preprocess`), which must give the same answer."""

import os

import jax
import numpy as np
import pytest

from data_helpers import write_llava
from modrwkv_jax.chat import Chat
from modrwkv_jax.data import image as image_lib
from modrwkv_jax.data import pipeline as P
from modrwkv_jax.data import sources
from modrwkv_jax.evaluation import generation
from modrwkv_jax.models import modrwkv, rwkv7
from modrwkv_jax.models import projector as proj
from modrwkv_jax.models.encoders import siglip

RWKV = rwkv7.RWKV7Config(vocab_size=65536, n_layer=2, n_embd=32, head_size=16, dim_w=8, dim_a=8, dim_v=4, dim_g=8,
                         dim_ffn=64)
NAFLEX = siglip.SiglipConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, patch_size=4,
                             image_size=None, naflex=True, num_patches=16)
CONFIG = modrwkv.ModRWKVConfig(RWKV, (("image", modrwkv.ModalityConfig("siglip", NAFLEX,
                                                                        proj.ProjectorConfig("vision", 16, 32, None, 2))),),
                               max_length=128)
PROC = image_lib.default_config("siglip2", max_num_patches=16, patch_size=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("naflex"))
  path = write_llava(root, n=6)  # records with 0, 1 and 2 images of 12×16 px
  params = modrwkv.init_params(CONFIG, jax.random.key(0))
  pc = P.PipelineConfig(sources=(P.SourceConfig("llava", path),), batch_size=3, shuffle=False, max_length=128,
                        image=P.ImageConfig(PROC, modrwkv.pipeline_num_tokens(CONFIG, "image"), max_items=2))
  return {"root": root, "params": params, "pipeline": pc}


def test_pipeline_batch_and_loss_eager_equals_jit(setup):
  """A NaFlex batch holding a text-only row (its image slots empty, grid (0, 0)) gives the same loss
  eagerly and under jit; the token count of an image follows its real patches."""
  batch = next(iter(P.make_pipeline(setup["pipeline"], "train")))
  assert batch["image"].shape == (3, 2, 16, 48) and batch["image_spatial_shapes"].shape == (3, 2, 2)
  counts = batch["image_count"].tolist()
  text_only, with_image = counts.index(0), counts.index(1)
  assert (batch["image_spatial_shapes"][text_only] == 0).all()  # empty image slots
  rows, cols = batch["image_spatial_shapes"][with_image, 0]
  assert (batch["image_pos"][with_image] >= 0).sum() == rows * cols == modrwkv.pipeline_num_tokens(CONFIG, "image")(
      rows * cols * 16)
  eager, _ = modrwkv.loss(CONFIG, setup["params"], batch)
  jitted, _ = jax.jit(modrwkv.loss, static_argnums=0)(CONFIG, setup["params"], batch)
  assert np.isfinite(float(eager)) and abs(float(eager) - float(jitted)) <= 1e-5 * abs(float(jitted))


def test_chat_and_batched_answers_agree(setup):
  """`Chat` with the NaFlex preprocessing and eval.py's batched answering give the same greedy tokens."""
  image = os.path.join(setup["root"], "img", "train_1_0.png")
  chat = Chat(CONFIG, setup["params"], max_new_tokens=4,
              preprocess={"image": lambda p: image_lib.preprocess(image_lib.load_image(p), PROC)})
  chat.ask("What is shown?", image=image)
  records = [sources.make_record("t", i, [{"from": "human", "value": q}], image=[image])
             for i, q in enumerate(["What is shown?", "Which colour?"])]
  g = generation.BatchGenerator(CONFIG, setup["params"], setup["pipeline"], batch_size=3, max_new_tokens=4)
  answers = g([generation.prepare_prompt(r, setup["pipeline"]) for r in records])
  want = chat.answer_ids[0][:-1] if chat.answer_ids[0][-1:] == [24] else chat.answer_ids[0]
  assert list(answers[0].token_ids) == list(want)
