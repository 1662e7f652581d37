"""An lmms-eval model class over our batched generation, so lmms-eval's task suite runs on ModRWKV.

    from lmms_eval.evaluator import simple_evaluate
    from modrwkv_jax.evaluation.lmms import ModRWKV
    lm = ModRWKV(checkpoint="runs/p2", batch_size=16)            # a train.py run folder, or config= + checkpoint=
    results = simple_evaluate(model=lm, tasks=["pope", "scienceqa_img"], batch_size=16)

`generate_until` takes lmms-eval's `Instance`s (args = (context, generation kwargs, doc_to_visual, doc_id,
task, split)), reads each document's images through `doc_to_visual(self.task_dict[task][split][doc_id])`,
and answers them in batches with `generation.BatchGenerator` (same preprocessing and prompt as eval.py:
[image tokens] ++ "\\x16User: {context}\\x17\\x16Assistant:"), greedy, cut at the first `until` string. Only
greedy decoding (temperature 0) and images are supported; `loglikelihood` and multi-round generation raise.
lmms-eval differs from LLaVA's scripts in prompts and scorers (docs/evaluation.md): report which produced a number.

Needs `lmms-eval` (`pip install lmms-eval`; the test environment installs only its API package, see the
Makefile).
"""

from __future__ import annotations

import collections

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from modrwkv_jax.data import sources
from modrwkv_jax.evaluation import generation, runner


class ModRWKV(lmms):
  """lmms-eval model: `ModRWKV(checkpoint=..., config=None, batch_size=8, max_new_tokens=128)`.

  checkpoint / config: as eval.py's --checkpoint / --config (a config file path or a ConfigDict).
  loaded: (config, ModRWKVConfig, params) already in memory (tests, notebooks) instead of loading.
  """

  def __init__(self, checkpoint: str | None = None, config=None, batch_size: int | str = 8,
               max_new_tokens: int | str = 128, prompt_format: str = "design", loaded=None, **kwargs):
    super().__init__()
    if loaded is None:
      from modrwkv_jax.training import config as config_lib
      if isinstance(config, str):
        config = config_lib.load_config_file(config)
      loaded = runner.load_model(config, checkpoint)[:3]
    self.config, self.model, self.params = loaded
    self.batch_size = int(batch_size)
    self.max_new_tokens = int(max_new_tokens)
    self.prompt_format = prompt_format
    self.pipeline = runner.eval_pipeline(self.config, self.model, self.batch_size)
    self.task_dict = {}

  def generate_until(self, requests: list[Instance]) -> list[str]:
    out = [None] * len(requests)
    groups = collections.defaultdict(list)  # requests with the same generation settings share batches
    for i, req in enumerate(requests):
      context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
      gen_kwargs = dict(gen_kwargs or {})
      if float(gen_kwargs.get("temperature", 0) or 0) != 0 or gen_kwargs.get("do_sample"):
        raise ValueError(f"ModRWKV.generate_until: {task}/{doc_id} asks for sampling; only greedy decoding is supported")
      until = gen_kwargs.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
      visuals = [v for v in (visuals or []) if v is not None]
      if any(isinstance(v, (dict, str)) for v in visuals):
        raise ValueError(f"ModRWKV.generate_until: {task}/{doc_id} has non-image inputs; only images are supported")
      record = sources.make_record("lmms-eval", f"{task}/{split}/{doc_id}", i,
                                   [{"from": "human", "value": context}], image=visuals)
      n = int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))
      groups[n].append((i, record, until))
    for n, items in groups.items():
      gen = generation.BatchGenerator(self.model, self.params, self.pipeline, batch_size=self.batch_size,
                                      max_new_tokens=n)
      prepared = [generation.prepare_prompt(record, self.pipeline, self.prompt_format) for _, record, _ in items]
      for (i, _, until), answer in zip(items, gen(prepared)):
        text = answer.text
        for stop in until:
          if stop and stop in text:
            text = text[:text.index(stop)]
        out[i] = text
    return out

  def loglikelihood(self, requests):
    raise NotImplementedError("ModRWKV (lmms-eval): loglikelihood tasks are not supported; use generation tasks")

  def generate_until_multi_round(self, requests):
    raise NotImplementedError("ModRWKV (lmms-eval): multi-round generation is not supported")
