"""eval.py and modrwkv_jax/evaluation: batched generation against one-by-one generation, every task end to end
on a tiny random model with files written here (formats, resumption, metrics recomputed from the written
predictions with the scorers called directly), scripted answers against hand-computed scores, --report.

The model is configs/tiny.py (image, audio and series modalities) with random weights; answers are
generated with few new tokens so the whole file compiles a handful of shapes once."""

import base64
import csv
import io
import json
import os

import jax
import numpy as np
import PIL.Image
import pytest

import eval as eval_cli
from data_helpers import write_audio_manifest, write_series_csv
from modrwkv_jax.evaluation import generation, metrics, runner, tasks
from modrwkv_jax.training import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
BATCH = 4
NEW_TOKENS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  base = tmp_path_factory.mktemp("eval")
  config = config_lib.apply_overrides(config_lib.load_config_file(TINY), [f"data.cache_dir='{base / 'cache'}'"])
  from modrwkv_jax.training import data as data_lib
  data_lib.prepare(config)
  # Random weights without a mesh (eval.py's own loading, runner.load_model, runs in the CLI test).
  from modrwkv_jax.models import modrwkv
  model = config_lib.model_config(config)
  params = jax.device_get(modrwkv.init_params(model, jax.random.key(config.seed)))
  pipeline = runner.eval_pipeline(config, model, BATCH)
  return {"base": base, "config": config, "model": model, "params": params, "pipeline": pipeline}


def _png(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(np.full((24, 20, 3), value, np.uint8)).save(path)


def _jsonl(path, rows):
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def write_benchmarks(root):
  """Five questions per benchmark in LLaVA-1.5's eval layout; returns {task: data folder}."""
  out = {}
  # VQAv2 (val-style, with annotations), GQA, TextVQA, POPE: question JSONL + images + answers.
  for task, img_dir in (("vqav2", "test2015"), ("gqa", "data/images"), ("textvqa", "train_images"),
                        ("pope", "val2014")):
    d = os.path.join(root, task)
    qs = []
    for i in range(5):
      _png(os.path.join(d, img_dir, f"{i}.png"), 40 * i)
      q = {"question_id": 100 + i, "image": f"{i}.png", "text": f"What is {i}?\n{tasks.SHORT_ANSWER}"}
      if task == "pope":
        q["category"] = ("random", "adversarial")[i % 2]
        q["text"] = f"Is there a cat {i} in the image?"
      qs.append(q)
    _jsonl(os.path.join(d, tasks.TASKS[task].default_files["questions"]), qs)
    out[task] = d
  vqa = {"annotations": [{"question_id": 100 + i, "answers": [{"answer": a} for a in ["two"] * 4 + ["2"] * 6]}
                         for i in range(5)]}
  json.dump(vqa, open(os.path.join(root, "vqav2", "val_annotations.json"), "w"))
  os.makedirs(os.path.join(root, "gqa", "data"), exist_ok=True)
  json.dump({str(100 + i): {"answer": "yes"} for i in range(5)},
            open(os.path.join(root, "gqa", "data", "testdev_balanced_questions.json"), "w"))
  json.dump({"data": [{"question_id": 100 + i, "answers": ["stop"] * 10} for i in range(5)]},
            open(os.path.join(root, "textvqa", "TextVQA_0.5.1_val.json"), "w"))
  os.makedirs(os.path.join(root, "pope", "coco"), exist_ok=True)
  for cat in ("random", "adversarial"):
    _jsonl(os.path.join(root, "pope", "coco", f"coco_pope_{cat}.json"),
           [{"question_id": 100 + i, "label": ("yes", "no")[i % 3 == 0]} for i in range(5)])
  # ScienceQA: LLaVA's llava_test_CQM-A.json (two questions without an image).
  d = os.path.join(root, "scienceqa")
  items = []
  for i in range(5):
    item = {"id": str(200 + i), "conversations": [
        {"from": "human", "value": f"<image>\nContext: c{i}\nQuestion: q{i}?\nOptions: (A) x (B) y (C) z"},
        {"from": "gpt", "value": "The answer is B."}]}
    if i < 3:
      _png(os.path.join(d, "images", "test", f"{i}.png"), 30 * i)
      item["image"] = f"{i}.png"
    items.append(item)
  os.makedirs(d, exist_ok=True)
  json.dump(items, open(os.path.join(d, "llava_test_CQM-A.json"), "w"))
  out["scienceqa"] = d
  # MMBench: the TSV with base64 images, options A-D (question 3 has three options).
  d = os.path.join(root, "mmbench")
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "mmbench_dev_20230712.tsv"), "w", newline="") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"])
    for i in range(5):
      buf = io.BytesIO()
      PIL.Image.fromarray(np.full((16, 16, 3), 50 * i, np.uint8)).save(buf, format="PNG")
      w.writerow([300 + i, f"Which {i}?", "nan" if i % 2 else f"hint {i}", "a", "b", "c", "" if i == 3 else "d",
                  "C", "cat" + str(i % 2), base64.b64encode(buf.getvalue()).decode()])
  out["mmbench"] = d
  # ASR: an audio manifest.
  d = os.path.join(root, "asr")
  out["asr"] = write_audio_manifest(d, n=5, name="test")
  d = os.path.join(root, "series")
  os.makedirs(d, exist_ok=True)
  out["timeseries"] = write_series_csv(d, n=600)
  return out


@pytest.fixture(scope="module")
def bench(setup):
  return write_benchmarks(str(setup["base"] / "bench"))


def _rows(out):
  return [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]


def _metrics(out):
  return json.load(open(os.path.join(out, "metrics.json")))


# ---------------------------------------------------------------------------------------------


def test_batched_generation_equals_one_by_one(setup):
  """A batch of prompts of different lengths and modalities (right-padded to the longest) gives the tokens
  each prompt gives alone (test_generate.py checks that padding on either side never changes an answer)."""
  task = tasks.make_task("demo", setup["config"])
  qs = [q for q in task.questions() if isinstance(q, tasks.Question) and q.meta["kind"] != "forecast"]
  # An ASR prompt and two image prompts, all of different lengths, so that the padding is exercised.
  prepared = [generation.prepare_prompt(next(q for q in qs if q.meta["kind"] == "audio").record, setup["pipeline"])]
  for q in qs:
    p = generation.prepare_prompt(q.record, setup["pipeline"]) if q.meta["kind"] == "llava" else None
    if p is not None and len(p.example) not in {len(x.example) for x in prepared}:
      prepared.append(p)
    if len(prepared) == 3:
      break
  assert len({len(p.example) for p in prepared}) == 3, [len(p.example) for p in prepared]
  g = generation.BatchGenerator(setup["model"], setup["params"], setup["pipeline"], batch_size=BATCH,
                                max_new_tokens=6)
  batched = g(prepared)
  alone = generation.generate_one_by_one(setup["model"], setup["params"], setup["pipeline"], prepared,
                                         max_new_tokens=6)
  assert [a.token_ids for a in batched] == [a.token_ids for a in alone]


def test_prompt_tokens_are_the_inference_prompt(setup):
  """The prepared prompt is [image tokens] ++ tok("\\x16User: q\\x17") ++ tok("\\x16Assistant:") (docs/architecture.md)."""
  from modrwkv_jax.data import conversation
  from modrwkv_jax.tokenizer import world_tokenizer
  tok = world_tokenizer()
  task = tasks.make_task("demo", setup["config"])
  q = next(q for q in task.questions() if isinstance(q, tasks.Question) and q.meta["kind"] == "llava")
  p = generation.prepare_prompt(q.record, setup["pipeline"])
  n_img = p.example.num_tokens["image"][0]
  want = tok.encode(f"\x16User: {conversation.strip_placeholders(q.prompt)}\x17") + tok.encode("\x16Assistant:")
  assert list(p.example.tokens[n_img:]) == want
  assert (p.example.positions["image"][:n_img] >= 0).all() and (p.example.labels < 0).all()


@pytest.mark.parametrize("name", ["vqav2", "gqa", "textvqa", "pope", "scienceqa", "mmbench", "asr", "timeseries"])
def test_task_end_to_end(setup, bench, name):
  """Real model, real files: every question answered once, the formats written, metrics.json equal to the
  scorers applied to predictions.jsonl, and a re-run answers nothing new."""
  out = str(setup["base"] / "out" / name)
  files = {"annotations": os.path.join(bench["vqav2"], "val_annotations.json")} if name == "vqav2" else {}
  data = bench[name]
  task = tasks.make_task(name, setup["config"], data=data if name not in ("asr",) else None,
                         files={"questions": data} if name == "asr" else files, season=12)
  res = runner.run(task, setup["model"], setup["params"], setup["pipeline"], out, batch_size=BATCH,
                   max_new_tokens=NEW_TOKENS, progress=False)
  rows = _rows(out)
  n = {"mmbench": 4 * 4 + 3, "timeseries": len(getattr(task, "source", ()))}.get(name, 5)
  assert len(rows) == n == res["n_answered"] and len({r["id"] for r in rows}) == n
  assert _metrics(out)["scores"] == res["scores"]
  s = res["scores"]
  if name == "vqav2":
    assert s["accuracy"] == pytest.approx(100 * np.mean([metrics.vqa_accuracy(r["output"], ["two"] * 4 + ["2"] * 6)
                                                         for r in rows]))
    upload = json.load(open(os.path.join(out, "vqav2_answers_upload.json")))
    assert [u["question_id"] for u in upload] == list(range(100, 105))
    assert [u["answer"] for u in upload] == [metrics.evalai_normalize(r["output"]) for r in rows]
  elif name == "gqa":
    assert s["accuracy"] == pytest.approx(100 * np.mean([metrics.gqa_accuracy(r["output"], "yes") for r in rows]))
    pred = json.load(open(os.path.join(out, "testdev_balanced_predictions.json")))
    assert pred[0] == {"questionId": "100", "prediction": rows[0]["output"].strip().rstrip(".").lower()}
  elif name == "textvqa":
    assert s["accuracy"] == pytest.approx(100 * np.mean([metrics.textvqa_accuracy(r["output"], ["stop"] * 10)
                                                         for r in rows]))
  elif name == "pope":
    for cat in ("random", "adversarial"):
      rs = [r for r in rows if r["meta"]["category"] == cat]
      want = metrics.pope_metrics([r["output"] for r in rs], [r["reference"] for r in rs])
      assert s["per_category"][cat] == pytest.approx(want, nan_ok=True)
  elif name == "scienceqa":
    assert all(r["reference"] == "B" and r["meta"]["n_options"] == 3 for r in rows)
    assert s["accuracy"] == pytest.approx(100 * np.mean([metrics.scienceqa_letter(r["output"], 3) == "B" for r in rows]))
    assert sum(r["meta"]["has_image"] for r in rows) == 3
    assert all(r["prompt"].endswith(tasks.LETTER_ANSWER) and "<image>" not in r["prompt"] for r in rows)
  elif name == "mmbench":
    assert s["accuracy"] == pytest.approx(100 * metrics.mmbench_circular(
        [{"index": r["meta"]["index"], "rotation": r["meta"]["rotation"], "answer": r["reference"],
          "prediction": r["parsed"], "category": r["meta"]["category"]} for r in rows])["accuracy"])
  elif name == "asr":
    assert s["wer"] == pytest.approx(100 * metrics.wer([f"answer a{i}" for i in range(5)],
                                                       [r["output"] for r in rows], normalize=True))
  elif name == "timeseries":
    assert n >= 2 and all(len(r["output"]) == 12 for r in rows)
    assert np.isfinite(s["mse"]) and s["naive_mse"] >= 0
  # Resumption: nothing left to answer; the scores are recomputed from the file alone.
  again = runner.run(task, setup["model"], setup["params"], setup["pipeline"], out, batch_size=BATCH,
                     max_new_tokens=NEW_TOKENS, progress=False)
  assert again["throughput"]["questions"] == 0 and again["scores"] == res["scores"] and len(_rows(out)) == n


class Scripted:
  """Stands in for the model: answers by a function of the question id; counts what it is asked."""

  def __init__(self, answer):
    self.answer, self.asked = answer, []

  def install(self, monkeypatch):
    def call(gen, prepared):
      self.asked += [p.id for p in prepared]
      return [generation.Answer(self.answer(p.id), (), True) for p in prepared]
    monkeypatch.setattr(generation.BatchGenerator, "__call__", call)


def test_scripted_scores_and_resumption(setup, bench, monkeypatch, tmp_path):
  """Known answers give hand-computed scores; an interrupted run (a torn last line) resumes with only the
  missing questions."""
  # POPE: labels no/yes/yes/no/yes (question_id % 3 == 0 -> no: 102, 105 are ... ids 100..104: 102 -> no).
  script = Scripted(lambda rid: {"100": "Yes, there is.", "101": "No.", "102": "There is not a cat.",
                                 "103": "yes", "104": "Yes"}[rid])
  script.install(monkeypatch)
  task = tasks.make_task("pope", setup["config"], data=bench["pope"])
  out = str(tmp_path / "pope")
  runner.run(task, setup["model"], setup["params"], setup["pipeline"], out, batch_size=BATCH, limit=3,
             progress=False)
  assert script.asked == ["100", "101", "102"]
  with open(os.path.join(out, "predictions.jsonl"), "a") as f:
    f.write('{"id": "103", "prompt": "torn')  # a crash mid-write
  res = runner.run(task, setup["model"], setup["params"], setup["pipeline"], out, batch_size=BATCH, progress=False)
  assert script.asked == ["100", "101", "102", "103", "104"]
  assert [r["id"] for r in _rows(out)] == ["100", "101", "102", "103", "104"]
  # labels: 100 yes? ids 100..104 -> i = 0..4, label no when i % 3 == 0: no, yes, yes, no, yes.
  # categories: i even random (i = 0, 2, 4), odd adversarial (1, 3).
  # random: preds yes, no, yes vs labels no, yes, yes -> acc 1/3, tp 1, fp 1, fn 1: precision 1/2, recall 1/2.
  # adversarial: preds no, yes vs labels yes, no -> acc 0, tp 0 fp 1 fn 1.
  per = res["scores"]["per_category"]
  assert per["random"]["accuracy"] == pytest.approx(1 / 3)
  assert per["random"]["precision"] == pytest.approx(0.5) and per["random"]["recall"] == pytest.approx(0.5)
  assert per["random"]["yes_ratio"] == pytest.approx(2 / 3)
  assert per["adversarial"]["accuracy"] == 0.0
  assert res["scores"]["accuracy"] == pytest.approx(100 * (1 / 3 + 0) / 2)


def test_scripted_mmbench_circular(setup, bench, monkeypatch, tmp_path):
  """MMBench: a question counts only if every rotation is right. Gold is "C" (index 2); rotation k puts it at
  letter (2 − k) mod n. Question 300 answered right in every rotation, 301 wrong in rotation 1 only."""
  def answer(rid):
    qid, k = rid.split("@")
    n = 3 if qid == "303" else 4
    right = "ABCD"[(2 - int(k)) % n]
    return "A" if (qid == "301" and k == "1") or qid in ("302", "303", "304") else f"{right}. text"
  Scripted(answer).install(monkeypatch)
  task = tasks.make_task("mmbench", setup["config"], data=bench["mmbench"])
  res = runner.run(task, setup["model"], setup["params"], setup["pipeline"], str(tmp_path / "mmb"),
                   batch_size=BATCH, progress=False)
  s = res["scores"]
  assert s["accuracy"] == pytest.approx(100 * 1 / 5)  # only 300
  assert s["vanilla_accuracy"] == pytest.approx(100 * 2 / 5)  # 300 and 301 right in rotation 0
  rows = _rows(str(tmp_path / "mmb"))
  first = next(r for r in rows if r["id"] == "300@1")
  assert first["prompt"] == "hint 0\nWhich 0?\nA. b\nB. c\nC. d\nD. a\n" + tasks.LETTER_ANSWER


def test_bad_questions_are_named_or_counted(setup, bench, monkeypatch, tmp_path):
  """A question whose image is missing stops the run naming file, id and field, or is a counted skip."""
  from modrwkv_jax.data.sources import RecordError
  Scripted(lambda rid: "yes").install(monkeypatch)
  d = tmp_path / "gqa"
  d.mkdir()
  _jsonl(str(d / "q.jsonl"), [{"question_id": 1, "image": "none.png", "text": "q"},
                              {"question_id": 2, "image": "../../etc/passwd", "text": "q"}, "not an object"])
  task = tasks.make_task("gqa", setup["config"], files={"questions": str(d / "q.jsonl"), "images": str(d)})
  with pytest.raises(RecordError, match=r"q.jsonl: record 2: field 'image'.*outside the data root"):
    runner.run(task, setup["model"], setup["params"], setup["pipeline"], str(tmp_path / "o1"), progress=False)
  res = runner.run(task, setup["model"], setup["params"], setup["pipeline"], str(tmp_path / "o2"), on_error="skip",
                   progress=False)
  assert res["n_answered"] == 0 and res["skipped"] == {"missing_image": 1, "path_outside_root": 1, "bad_json": 1}


def test_cli_demo_task_and_report(setup, tmp_path, capsys):
  """eval.py end to end on configs/tiny.py (weights from config.init: random), the demo task, then --report."""
  out = str(tmp_path / "demo")
  args = ["--config", TINY, "--task", "demo", "--out", out, "--limit", "6", "--batch-size", str(BATCH),
          "--max-new-tokens", str(NEW_TOKENS), f"--config.data.cache_dir='{setup['base'] / 'cache'}'"]
  assert eval_cli.main(args) == 0
  printed = capsys.readouterr().out
  assert "questions/s at batch 4" in printed and "shapes_vqa" in printed
  m = _metrics(out)
  parts = {r["meta"]["part"] for r in _rows(out)}
  assert parts == {"shapes_vqa", "spoken_digits", "co2"} and set(m["scores"]) == parts
  assert m["scores"]["co2"]["naive_mse"] >= 0 and "wer" in m["scores"]["spoken_digits"]
  assert eval_cli.main(["--report", out]) == 0
  table = capsys.readouterr().out
  assert table.startswith("| metric | demo |") and "| demo/shapes_vqa/exact_match |" in table


def test_report_with_paper_numbers(tmp_path):
  """--report: runs side by side, the paper's column for the model size the runs share (docs/evaluation.md)."""
  for name, score in (("a", 70.0), ("b", 71.5)):
    os.makedirs(tmp_path / name)
    json.dump({"task": "vqav2", "model_size": "0.4B", "scores": {"accuracy": score, "n_scored": 5}},
              open(tmp_path / name / "metrics.json", "w"))
  table = runner.report([str(tmp_path / "a"), str(tmp_path / "b")])
  assert table.splitlines()[0] == "| metric | a | b | paper (0.4B) |"
  assert "| vqav2/accuracy | 70.00 | 71.50 | 72.04 |" in table
  with pytest.raises(FileNotFoundError, match="metrics.json"):
    runner.report([str(tmp_path / "missing")])


def test_worldrwkv_prompt_format(setup):
  """The released checkpoints' prompt: [image tokens] ++ tok("\\x16User: {q}\\x17Assistant:") as one string."""
  from modrwkv_jax.tokenizer import world_tokenizer
  task = tasks.make_task("demo", setup["config"])
  q = next(q for q in task.questions() if isinstance(q, tasks.Question) and q.meta["kind"] == "llava"
           and len(q.record["conversations"]) == 1)
  p = generation.prepare_prompt(q.record, setup["pipeline"], "worldrwkv")
  n_img = p.example.num_tokens["image"][0]
  question = q.prompt.replace("<image>", "").strip()
  assert list(p.example.tokens[n_img:]) == world_tokenizer().encode(f"\x16User: {question}\x17Assistant:")
  assert (p.example.positions["image"][:n_img] == np.arange(n_img)).all()
  assert (p.example.positions["image"][n_img:] == -1).all()


def test_lmms_eval_model_class(setup):
  """lmms-eval's own Instance objects through ModRWKV.generate_until equal our batched answers; `until` cuts."""
  lmms_api = pytest.importorskip("lmms_eval.api.instance", reason="lmms-eval is installed by `make venv`")
  from modrwkv_jax.evaluation.lmms import ModRWKV
  lm = ModRWKV(loaded=(setup["config"], setup["model"], setup["params"]), batch_size=BATCH, max_new_tokens=5)
  images = [np.full((20, 24, 3), 60 * i, np.uint8) for i in range(3)]
  lm.task_dict = {"toy": {"test": [{"img": im} for im in images]}}
  to_visual = lambda doc: [PIL.Image.fromarray(doc["img"])]
  reqs = [lmms_api.Instance("generate_until", (f"Question {i}?", {"max_new_tokens": 5, "until": []}, to_visual, i,
                                               "toy", "test"), idx=0, metadata={"task": "toy", "doc_id": i, "repeats": 1})
          for i in range(3)]
  got = lm.generate_until(reqs)
  records = [{"id": f"toy/test/{i}", "source": "x", "index": i, "conversations": [{"from": "human", "value": f"Question {i}?"}],
              "preamble": "", "image": [PIL.Image.fromarray(images[i])], "audio": [], "series": [], "target": []}
             for i in range(3)]
  g = generation.BatchGenerator(setup["model"], setup["params"], setup["pipeline"], batch_size=BATCH, max_new_tokens=5)
  want = [a.text for a in g([generation.prepare_prompt(r, setup["pipeline"]) for r in records])]
  assert got == want
  stop = want[0][1:3] if len(want[0]) >= 3 else None
  if stop:
    reqs[0].arguments = (reqs[0].arguments[0], {"max_new_tokens": 5, "until": [stop]}, *reqs[0].arguments[2:])
    assert lm.generate_until(reqs[:1])[0] == want[0][:want[0].index(stop)]
  with pytest.raises(ValueError, match="only greedy"):
    lm.generate_until([lmms_api.Instance("generate_until", ("q", {"temperature": 0.7}, None, 0, "toy", "test"), idx=0,
                                         metadata={"task": "toy", "doc_id": 0, "repeats": 1})])
