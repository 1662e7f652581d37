"""The benchmark scorers (modrwkv_jax/evaluation/metrics.py) on hand-worked examples, and WER/CER
against jiwer 4.0 on random sentences.

Every expected number below is worked by hand in the comment next to it, from the rules of the
official file each scorer cites (vqaEval.py, LLaVA's m4c_evaluator.py, eval_pope.py,
eval_science_qa.py, VLMEvalKit's circular evaluation), or comes from jiwer.
"""

import math

import jiwer
import numpy as np
import pytest

from modrwkv_jax.evaluation import metrics as M

# ----------------------------------------------------------------------------------------------------
# VQA answer normalisation (LLaVA's EvalAIAnswerProcessor)


@pytest.mark.parametrize("raw, expected", [
    ("Yes.", "yes"),  # lower-case; a period not followed by a digit goes
    ("yes", "yes"),
    ("what?", "what"),  # "?" is deleted before anything else
    ("\tyes\n", "yes"),  # tabs and newlines become spaces, then strip
    ("2,000", "2000"),  # every comma is deleted first: digit groups join, no space appears
    ("1.5", "1.5"),  # the period rule keeps a period followed by a digit ...
    (".5", ".5"),
    ("5.", "5"),  # ... and drops one that is not, even after a digit
    ("u.s.a.", "usa"),
    ("Two", "2"),  # number words one..ten, zero and none become digits
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),  # the table stops at ten
    ("a dog", "dog"),  # articles dropped wherever they stand
    ("The Dog", "dog"),
    ("dont", "don't"),  # contractions completed
    ("couldnt've", "couldn't've"),
    ("somebody'd", "somebodyd"),  # the official table maps this one the wrong way round
    ("Im", "im"),  # its capitalised keys never match: words are lower-cased first
    ("man's", "man 's"),  # "'s" is split off, the apostrophe is no punctuation mark
    ("t-shirt", "t shirt"),  # a mark touching no space becomes a space ...
    ("black - white", "black white"),  # ... one touching a space is deleted
    ("", ""),
])
def test_evalai_normalize_rules(raw, expected):
  assert M.evalai_normalize(raw) == expected


def test_evalai_period_rule_stops_after_32_periods():
  # The official call passes re.UNICODE (= 32) as re.sub's count: 40 periods, the first 32 dropped.
  assert M.evalai_normalize("a." * 40) == "a" * 32 + "a." * 8


# ----------------------------------------------------------------------------------------------------
# VQAv2 accuracy: the leave-one-out soft score


@pytest.mark.parametrize("n_match, expected", [
    (0, 0.0),
    # 1 match: its annotator sees 0 among the other 9 -> 0; the 9 others see 1 -> 1/3.
    # (1·0 + 9·1/3) / 10 = 0.3
    (1, 0.3),
    # 2 matches: each matching annotator sees 1 -> 1/3; the 8 others see 2 -> 2/3.
    # (2·1/3 + 8·2/3) / 10 = (2/3 + 16/3) / 10 = 0.6
    (2, 0.6),
    # 3 matches: each matching annotator sees 2 -> 2/3; the 7 others see 3 -> 1.
    # (3·2/3 + 7·1) / 10 = 0.9
    (3, 0.9),
    # 4 matches: the matching annotators see 3 -> 1; the others see 4 -> min(4/3, 1) = 1.
    (4, 1.0),
    (10, 1.0),
])
def test_vqa_leave_one_out(n_match, expected):
  others = ["dog", "bird", "cow", "pig", "hen", "fox", "owl", "elk", "bee", "ant"]
  answers = ["cat"] * n_match + others[n_match:]
  assert M.vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)
  assert M.textvqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_ties():
  # 5 "red" and 5 "blue": a red annotator sees 4 reds, a blue one 5 -> all 1; "blue" likewise.
  answers = ["red"] * 5 + ["blue"] * 5
  assert M.vqa_accuracy("red", answers) == 1.0
  assert M.vqa_accuracy("blue", answers) == 1.0
  assert M.vqa_accuracy("green", answers) == 0.0
  # Five answers given twice each: any of them has 2 matches -> 0.6, as in the table above.
  answers = ["a1", "b1", "c1", "d1", "e1"] * 2
  for a in ["a1", "b1", "c1", "d1", "e1"]:
    assert M.vqa_accuracy(a, answers) == pytest.approx(0.6, abs=1e-12)


@pytest.mark.parametrize("prediction, answers, expected", [
    # Every case has 3 matching answers among 10 once normalised -> 0.9 (worked above), or none -> 0.
    ("yes.", ["yes"] * 3 + ["no"] * 7, 0.9),  # period dropped from the prediction
    ("Two", ["2"] * 3 + ["3"] * 7, 0.9),  # "Two" -> "2"
    ("a dog", ["the dog"] * 3 + ["cat"] * 7, 0.9),  # articles dropped on both sides
    ("dont", ["don't"] * 3 + ["no"] * 7, 0.9),  # "dont" -> "don't"; the answers keep their apostrophe
    ("2,000", ["2,000"] * 3 + ["many"] * 7, 0.9),  # answers: digit,digit -> commas deleted -> "2000"
    ("1.5", ["1.5"] * 3 + ["2"] * 7, 0.9),  # the period before a digit stays on both sides
    ("15", ["1.5"] * 3 + ["2"] * 7, 0.0),
    ("", ["yes"] * 10, 0.0),  # an empty prediction matches no answer ...
    ("", [""] * 3 + ["yes"] * 7, 0.9),  # ... but an empty answer
])
def test_vqa_normalisation_both_sides(prediction, answers, expected):
  assert M.vqa_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_answers_processed_only_when_they_disagree():
  # vqaEval.py processes the answers (and again the prediction) only when they are not all the same.
  # The prediction was already submitted as evalai_normalize("t-shirt") = "t shirt".
  # Ten raw "t-shirt" stay "t-shirt": no match -> 0.
  assert M.vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
  # One "shirt" among them: all become "t shirt" -> 9 matches -> 1.
  assert M.vqa_accuracy("t-shirt", ["t-shirt"] * 9 + ["shirt"]) == 1.0
  # TextVQA's m4c evaluator normalises the answers always: 10 matches -> 1.
  assert M.textvqa_accuracy("T-Shirt", ["t-shirt"] * 10) == 1.0


def test_textvqa_normalises_both_sides():
  # "Coca-Cola." -> "coca cola"; the answers "coca cola" (3) and "Coca-Cola" (1) both -> "coca cola":
  # 4 matches -> 1. "pepsi" alone has 1 match -> 0.3.
  answers = ["coca cola"] * 3 + ["Coca-Cola"] + ["pepsi"] + ["soda"] * 5
  assert M.textvqa_accuracy("Coca-Cola.", answers) == 1.0
  assert M.textvqa_accuracy("PEPSI", answers) == pytest.approx(0.3, abs=1e-12)


def test_vqa_rejects_missing_answers():
  for fn in (M.vqa_accuracy, M.textvqa_accuracy):
    with pytest.raises(ValueError, match="non-empty list"):
      fn("yes", [])
    with pytest.raises(ValueError, match="non-empty list"):
      fn("yes", "yes")


# ----------------------------------------------------------------------------------------------------
# GQA


@pytest.mark.parametrize("prediction, answer, expected", [
    ("Yes.", "yes", 1.0),  # rstrip('.') then lower()
    ("yes...", "yes", 1.0),  # every trailing period goes
    (" Table.\n", "table", 1.0),  # the generation script's strip()
    ("yes", "no", 0.0),
    ("a table", "table", 0.0),  # no article rule in GQA
    ("yes", "Yes", 0.0),  # the gold side is compared as given
    ("", "yes", 0.0),
])
def test_gqa_accuracy(prediction, answer, expected):
  assert M.gqa_accuracy(prediction, answer) == expected


# ----------------------------------------------------------------------------------------------------
# ScienceQA


@pytest.mark.parametrize("text, n_options, expected", [
    ("B", 4, "B"),  # an exact letter
    ("  B\n", 4, "B"),  # after the generation script's strip()
    ("B. blue", 4, "B"),  # letter, period, space
    ("The answer is C.", 4, "C"),
    ("Because of the heat. The answer is C, I think", 4, "C"),  # the pattern's "." is any character
    ("The answer is C", 4, None),  # ... but there must be one after the letter
    ("I think B or C", 4, None),  # no rule applies: failed
    ("B.", 4, None),  # too short for "X. ", not a bare letter
    ("b", 4, None),  # letters are upper-case
    ("The answer is A. The answer is B.", 4, None),  # the pattern must match exactly once
    ("The answer is A. No, the answer is B.", 4, "A"),  # ... and is case-sensitive: "the answer" is no match
    ("the answer is B.", 4, None),
    ("D", 3, None),  # a letter beyond the question's choices
    ("The answer is E.", 5, "E"),
    ("The answer is Z.", 5, None),  # the pattern reads any capital, the choices stop at E
    ("F", 5, None),
    ("", 2, None),
])
def test_scienceqa_letter(text, n_options, expected):
  assert M.scienceqa_letter(text, n_options) == expected


@pytest.mark.parametrize("n_options", [0, 6])
def test_scienceqa_rejects_impossible_option_count(n_options):
  with pytest.raises(ValueError, match="1 to 5 choices"):
    M.scienceqa_letter("A", n_options)


# ----------------------------------------------------------------------------------------------------
# POPE


@pytest.mark.parametrize("text, expected", [
    ("No, there is not.", "no"),  # first sentence "No there is not": "No" and "not"
    ("Yes.", "yes"),
    ("There is no dog", "no"),
    ("no.", "no"),
    ("The dog is not there.", "no"),
    ("Yes, there is a dog. No other animals.", "yes"),  # only the first sentence counts
    ("NO", "yes"),  # only "No", "not", "no" exactly
    ("Not really", "yes"),
    ("There isn't", "yes"),
    ("", "yes"),
])
def test_pope_answer(text, expected):
  assert M.pope_answer(text) == expected


def test_pope_metrics_on_a_confusion_matrix():
  rows = [  # (model answer, gold label): TP = 3, FP = 1, TN = 4, FN = 2
      ("Yes.", "yes"),  # TP
      ("No.", "no"),  # TN
      ("NO", "no"),  # FP: "NO" reads as yes
      ("Yes, there is a dog.", "yes"),  # TP
      ("no", "yes"),  # FN
      ("No, there is not.", "no"),  # TN
      ("There is a cat", "yes"),  # TP
      ("There is no dog.", "no"),  # TN
      ("I do not think so.", "yes"),  # FN
      ("The dog is not there", "no"),  # TN
  ]
  got = M.pope_metrics([p for p, _ in rows], [l for _, l in rows])
  assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (3, 1, 4, 2)
  assert got["accuracy"] == pytest.approx(0.7, abs=1e-12)  # (3 + 4) / 10
  assert got["precision"] == pytest.approx(0.75, abs=1e-12)  # 3 / (3 + 1)
  assert got["recall"] == pytest.approx(0.6, abs=1e-12)  # 3 / (3 + 2)
  assert got["f1"] == pytest.approx(2 / 3, abs=1e-12)  # 2·0.75·0.6 / 1.35 = 0.9 / 1.35
  assert got["yes_ratio"] == pytest.approx(0.4, abs=1e-12)  # (3 + 1) / 10


def test_pope_metrics_zero_denominators():
  # No answer reads yes: precision undefined (eval_pope.py divides by zero), recall 0/2.
  got = M.pope_metrics(["No.", "no", "No"], ["yes", "yes", "no"])
  assert math.isnan(got["precision"]) and got["recall"] == 0.0 and math.isnan(got["f1"])
  assert got["yes_ratio"] == 0.0 and got["accuracy"] == pytest.approx(1 / 3, abs=1e-12)
  # Yes answered, but only wrongly: p = 0/1, r = 0/1, f1 = 0 by convention.
  got = M.pope_metrics(["Yes", "No"], ["no", "yes"])
  assert (got["precision"], got["recall"], got["f1"]) == (0.0, 0.0, 0.0)


def test_pope_metrics_rejects_bad_input():
  with pytest.raises(ValueError, match="2 predictions for 3 labels"):
    M.pope_metrics(["Yes", "No"], ["yes", "no", "yes"])
  with pytest.raises(ValueError, match="'yes' or 'no'"):
    M.pope_metrics(["Yes"], ["Yes"])


# ----------------------------------------------------------------------------------------------------
# MMBench circular evaluation


def _rotations(index, n_options, gold, wrong_at=(), unread_at=(), category=None):
  """Records of one question asked in all its rotations, as LLaVA's model_vqa_mmbench.py asks it.

  Each round rotates the options left by one (options[1:] + options[:1]), so the gold option at
  position g of the original order sits at (g − k) mod N in rotation k: gold "C" of 4 options reads
  C, B, A, D. The model answers right except at `wrong_at` (another letter) and `unread_at` (None).
  """
  letters = "ABCD"[:n_options]
  out = []
  for k in range(n_options):
    answer = letters[(letters.index(gold) - k) % n_options]
    prediction = answer
    if k in wrong_at:
      prediction = letters[(letters.index(answer) + 1) % n_options]
    if k in unread_at:
      prediction = None
    rec = {"index": index, "rotation": k, "prediction": prediction, "answer": answer}
    if category is not None:
      rec["category"] = category
    out.append(rec)
  return out


def test_mmbench_rotation_letters():
  assert [r["answer"] for r in _rotations(7, 4, "C")] == ["C", "B", "A", "D"]


def test_mmbench_circular():
  records = (
      _rotations(1, 4, "C", category="CP")  # all 4 right: counts
      + _rotations(2, 4, "A", wrong_at=(2,), category="CP")  # one rotation wrong: does not count
      + _rotations(3, 2, "B", category="LR")  # both right: counts
      + _rotations(4, 3, "A", unread_at=(0,), category="LR")  # rotation 0 unreadable: does not count
      + _rotations(5, 2, "A", category="LR"))  # counts
  got = M.mmbench_circular(records)
  assert got["n_questions"] == 5 and got["n_correct"] == 3
  assert got["accuracy"] == pytest.approx(3 / 5, abs=1e-12)  # questions 1, 3, 5
  # Rotation 0 alone: questions 1, 2, 3, 5 right, 4 not -> 4/5.
  assert got["vanilla_accuracy"] == pytest.approx(4 / 5, abs=1e-12)
  # CP: 1 of questions {1, 2}; LR: 2 of {3, 4, 5}.
  assert got["per_category"] == pytest.approx({"CP": 1 / 2, "LR": 2 / 3}, abs=1e-12)
  # Shuffled records give the same result; without categories there is no per-category table.
  plain = [{k: v for k, v in r.items() if k != "category"} for r in records[::-1]]
  got = M.mmbench_circular(plain)
  assert got["accuracy"] == pytest.approx(3 / 5, abs=1e-12) and "per_category" not in got


def test_mmbench_circular_rejects_malformed_records():
  with pytest.raises(ValueError, match="rotation 1 twice"):
    M.mmbench_circular(_rotations(1, 2, "A") + _rotations(1, 2, "A")[1:])
  with pytest.raises(ValueError, match="not rotation 0"):
    M.mmbench_circular(_rotations(1, 3, "A")[1:])
  with pytest.raises(ValueError, match="expected one"):
    M.mmbench_circular(_rotations(1, 2, "A", category="CP")[:1] + _rotations(1, 2, "A", category="LR")[1:])
  with pytest.raises(ValueError, match="some records and not on others"):
    M.mmbench_circular(_rotations(1, 2, "A", category="CP") + _rotations(2, 2, "A"))
  with pytest.raises(ValueError, match="no records"):
    M.mmbench_circular([])


# ----------------------------------------------------------------------------------------------------
# WER and CER


def test_edit_counts_by_hand():
  # "the cat sat on the mat" -> "the cat sit on mat": sat/sit substituted, the second "the" deleted.
  ref, hyp = "the cat sat on the mat".split(), "the cat sit on mat".split()
  assert M.edit_counts(ref, hyp) == (1, 1, 0)
  assert M.wer([" ".join(ref)], [" ".join(hyp)]) == pytest.approx(2 / 6, abs=1e-15)
  assert M.edit_counts("a b c".split(), "a x b c".split()) == (0, 0, 1)
  assert M.edit_counts([], "a b".split()) == (0, 0, 2)
  assert M.edit_counts("a b".split(), []) == (0, 2, 0)
  assert M.edit_counts("kitten", "sitting") == (2, 0, 1)  # k->s, e->i, +g


def test_wer_normalisation():
  # Default: whitespace split only, case and punctuation kept: both words differ -> 2/2.
  assert M.wer(["HELLO WORLD"], ["hello, world!"]) == 1.0
  # english_normalize: "hello world" on both sides -> 0.
  assert M.wer(["HELLO WORLD"], ["hello, world!"], normalize=True) == 0.0
  assert M.english_normalize("It’s twenty-one, isn't it?") == "it's twenty one isn't it"
  assert M.wer(["a b"], ["A B"], normalize=str.lower) == 0.0


def test_wer_cer_reject_bad_input():
  with pytest.raises(ValueError, match="2 references for 1 hypotheses"):
    M.wer(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="no units"):
    M.wer(["", " "], ["a", "b"])
  with pytest.raises(ValueError, match="no units"):
    M.cer([" "], ["a"])
  with pytest.raises(ValueError, match="lists of sentences"):
    M.wer("a b", "a b")


def _random_pairs(rng, vocab, n_pairs, joiner):
  """Reference/hypothesis pairs: each reference unit is kept, substituted (10 %) or deleted (10 %),
  and a random unit is inserted after it 10 % of the time."""
  refs, hyps = [], []
  for _ in range(n_pairs):
    ref = list(rng.choice(vocab, size=rng.integers(1, 16)))
    hyp = []
    for unit in ref:
      u = rng.random()
      if u < 0.1:
        hyp.append(str(rng.choice(vocab)))
      elif u >= 0.2:
        hyp.append(unit)
      if rng.random() < 0.1:
        hyp.append(str(rng.choice(vocab)))
    refs.append(joiner(ref))
    hyps.append(joiner(hyp))
  return refs, hyps


def test_wer_equals_jiwer_on_random_sentences():
  rng = np.random.default_rng(0)
  vocab = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
  refs, hyps = _random_pairs(rng, vocab, 200, " ".join)
  out = jiwer.process_words(refs, hyps)
  subs = dels = ins = 0
  for r, h in zip(refs, hyps):
    s, d, i = M.edit_counts(r.split(), h.split())
    subs, dels, ins = subs + s, dels + d, ins + i
  print(f"\nS/D/I ours {subs}/{dels}/{ins}, jiwer {out.substitutions}/{out.deletions}/{out.insertions}")
  assert (subs, dels, ins) == (out.substitutions, out.deletions, out.insertions)
  assert subs > 0 and dels > 0 and ins > 0  # the sample exercises all three
  ours, ref_wer = M.wer(refs, hyps), jiwer.wer(refs, hyps)
  print(f"WER ours {ours!r}, jiwer {ref_wer!r}")
  assert ours == ref_wer  # the same integers divided: bit-identical


def test_cer_equals_jiwer_on_random_chinese_with_spaces_removed():
  rng = np.random.default_rng(1)
  chars = list("我们今天去北京天安门广场看")

  def spaced(units):  # Chinese transcripts are spaced inconsistently: random spaces between characters
    return "".join(u + (" " if rng.random() < 0.3 else "") for u in units)

  refs, hyps = _random_pairs(rng, chars, 200, spaced)
  no_space = jiwer.Compose([jiwer.RemoveWhiteSpace(replace_by_space=False),
                            jiwer.ReduceToListOfListOfChars()])
  ref_cer = jiwer.cer(refs, hyps, reference_transform=no_space, hypothesis_transform=no_space)
  ours = M.cer(refs, hyps)
  print(f"\nCER ours {ours!r}, jiwer {ref_cer!r}")
  assert ours == ref_cer


def test_cer_keeping_spaces_equals_jiwer_default():
  rng = np.random.default_rng(2)
  refs, hyps = _random_pairs(rng, ["the", "cat", "sat", "on", "a", "mat"], 200, " ".join)
  ours, ref_cer = M.cer(refs, hyps, remove_spaces=False), jiwer.cer(refs, hyps)
  print(f"\nCER with spaces ours {ours!r}, jiwer {ref_cer!r}")
  assert ours == ref_cer


# ----------------------------------------------------------------------------------------------------
# Time series


def test_mse_mae_masked():
  pred = np.array([[1.0, 2.0], [3.0, 4.0]])
  target = np.array([[1.0, 0.0], [0.0, 4.0]])  # errors [[0, 2], [3, 0]]
  assert M.mse(pred, target) == pytest.approx(13 / 4, abs=1e-15)  # (0 + 4 + 9 + 0) / 4
  assert M.mae(pred, target) == pytest.approx(5 / 4, abs=1e-15)  # (0 + 2 + 3 + 0) / 4
  mask = np.array([[1, 1], [0, 1]])
  assert M.mse(pred, target, mask) == pytest.approx(4 / 3, abs=1e-15)  # (0 + 4 + 0) / 3
  assert M.mae(pred, target, mask) == pytest.approx(2 / 3, abs=1e-15)  # (0 + 2 + 0) / 3
  rows = np.array([[True], [False]])  # broadcast over the last axis: row 0 only
  assert M.mse(pred, target, rows) == pytest.approx(2.0, abs=1e-15)  # (0 + 4) / 2
  assert M.mae(pred, target, rows) == pytest.approx(1.0, abs=1e-15)  # (0 + 2) / 2


def test_mse_mae_reject_bad_input():
  with pytest.raises(ValueError, match=r"shape \(2,\) for a target of shape \(3,\)"):
    M.mse(np.zeros(2), np.zeros(3))
  with pytest.raises(ValueError, match="selects no value"):
    M.mae(np.zeros(2), np.zeros(2), np.zeros(2, bool))
  with pytest.raises(ValueError, match="does not broadcast"):
    M.mse(np.zeros((2, 2)), np.zeros((2, 2)), np.ones(3, bool))


def test_word_position_accuracy_by_hand():
  refs = ["one two three", "four five", "six seven eight nine"]
  hyps = ["One, two four.", "four", "six eight seven nine ten"]
  got = M.word_position_accuracy(refs, hyps, normalize=True)
  # position 0: one/one, four/four, six/six -> 3/3; 1: two/two, five/- , seven/eight -> 1/3;
  # 2: three/four, eight/seven -> 0/2; 3: nine/nine -> 1/1 (the extra "ten" is not a position of a reference).
  assert got == [{"position": 0, "accuracy": 1.0, "n": 3}, {"position": 1, "accuracy": 1 / 3, "n": 3},
                 {"position": 2, "accuracy": 0.0, "n": 2}, {"position": 3, "accuracy": 1.0, "n": 1}]
  # Without normalisation "One," is not "one".
  assert M.word_position_accuracy(refs, hyps)[0]["accuracy"] == 2 / 3
  assert M.word_position_accuracy([], []) == []
  with pytest.raises(ValueError):
    M.word_position_accuracy(["a"], ["a", "b"])
