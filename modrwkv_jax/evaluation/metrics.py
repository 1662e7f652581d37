"""The official benchmark scorers (docs/evaluation.md), as pure functions of model outputs and references.

Each scorer follows one official file, cited in its docstring with the commit read, and says where
it differs (only ever at the boundary: we refuse malformed input where the original crashes or
silently truncates). Sources:

  VQA    GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py @ a013f00 (2021-03-11,
         "Fixed processing answers bug": the current scorer behind the VQAv2 server).
  LLaVA  haotian-liu/LLaVA @ c121f04: llava/eval/m4c_evaluator.py (EvalAIAnswerProcessor,
         TextVQAAccuracyEvaluator), scripts/convert_vqav2_for_submission.py,
         scripts/convert_gqa_for_eval.py, llava/eval/eval_pope.py, llava/eval/eval_science_qa.py,
         llava/eval/model_vqa_mmbench.py.
  GQA    eval.py of nlp.stanford.edu/data/gqa/eval.zip: `correct = (predicted == gold)`.
  MMBench open-compass/VLMEvalKit vlmeval/dataset/utils/multiple_choice.py (mcq_circular_eval).
  ASR    jiwer 4.0 (`jiwer.wer`, `jiwer.cer`, `jiwer.process_words`) over rapidfuzz 3.14
         `Levenshtein.editops`: the numbers our WER/CER must reproduce exactly.
  Series thuml/Time-Series-Library utils/metrics.py (MSE, MAE).

The generation scripts LLaVA scores (model_vqa_loader.py, model_vqa_science.py) `.strip()` the decoded
text before writing it; the scorers here take the decoded text and strip it themselves.

Pure Python + NumPy: no JAX, nothing read from disk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------------
# VQA answer normalisation (EvalAIAnswerProcessor and vqaEval.py share these tables)

# Contractions written in full. The lookup table maps each form with exactly one apostrophe dropped
# to the full form ("dont" -> "don't", "couldnt've" and "couldn'tve" -> "couldn't've"), which is the
# rule behind all 120 entries of the official table but three, added below. Keys with capitals
# ("Im", "Id've") can never match: the words are lower-cased before the lookup.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll ma'am mightn't mightn't've
might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've
they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd
where's where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't
wouldn't've y'all y'all'd've y'all'll you'd you'd've you'll you're you've
""".split()
CONTRACTIONS = {full[:k] + full[k + 1:]: full for full in _CONTRACTED for k, c in enumerate(full) if c == "'"}
# The exceptions of the official table: "let's" and "she's" map to themselves (there is no "lets"
# or "shes" key), and "somebody'd" maps the wrong way round, to "somebodyd".
CONTRACTIONS |= {"let's": "let's", "she's": "she's", "somebody'd": "somebodyd"}

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
# The punctuation of EvalAIAnswerProcessor and of vqaEval.py since 2016 (no apostrophe, no colon, no period).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")
# The official period rule is "(?!<=\d)(\.)(?!\d)". Its first group is a look-AHEAD for the text
# "<=digit", which can never match where a "." stands, so the rule is: drop every period not followed
# by a digit ("1.5" and ".5" keep theirs; "5." and "yes." lose theirs). The official call passes
# re.UNICODE (= 32) where `count` goes, so at most the first 32 such periods are dropped.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_COUNT = 32
_COMMA_EVALAI = re.compile(r"(?<=\d),+(?=\d)")  # EvalAIAnswerProcessor: digits around one or more commas
_COMMA_VQAEVAL = re.compile(r"\d,\d")  # vqaEval.py: digits around exactly one comma


def _process_punctuation(text: str, comma_rule: re.Pattern) -> str:
  """processPunctuation of vqaEval.py / process_punctuation of EvalAIAnswerProcessor.

  Each mark is deleted where it touches a space somewhere in the text (or anywhere once the text holds
  a digit-comma-digit run: "2,000" -> "2000"), otherwise replaced by a space ("t-shirt" -> "t shirt").
  The tests look at the original text, the replacements at the running result.
  """
  out = text
  for mark in PUNCTUATION:
    if mark + " " in text or " " + mark in text or comma_rule.search(text):
      out = out.replace(mark, "")
    else:
      out = out.replace(mark, " ")
  return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def _process_digit_article(text: str) -> str:
  """processDigitArticle: lower-case, split on whitespace, number words -> digits, drop articles,
  then map contractions word by word."""
  words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def evalai_normalize(answer: str) -> str:
  """An answer as LLaVA's EvalAIAnswerProcessor writes it (llava/eval/m4c_evaluator.py, from mmf).

  In order: lower-case; delete every "," and "?"; "'s" -> " 's"; strip; "\\n" and "\\t" -> " ";
  strip; punctuation rule; periods not followed by a digit dropped; number words "none", "zero" ..
  "ten" -> "0" .. "10"; articles a/an/the dropped; contractions completed ("dont" -> "don't").
  Examples: "Two dogs." -> "2 dogs", "2,000" -> "2000", "T-Shirt" -> "t shirt", "None" -> "0".
  """
  text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
  text = text.replace("\n", " ").replace("\t", " ").strip()
  return _process_digit_article(_process_punctuation(text, _COMMA_EVALAI))


def _leave_one_out(prediction: str, answers: Sequence[str]) -> float:
  """mean over the n annotators i of min(1, #{j != i : answers[j] == prediction} / 3).

  With n = 10 and m matching answers this is 0, 0.3, 0.6, 0.9 for m = 0..3 and 1 for m >= 4.
  """
  matches = sum(a == prediction for a in answers)
  # An annotator who gave the prediction leaves m - 1 matches among the others; one who did not, m.
  per_annotator = [min(1.0, (matches - (a == prediction)) / 3) for a in answers]
  return sum(per_annotator) / len(per_annotator)


def _check_answers(answers: Sequence[str], name: str) -> None:
  if isinstance(answers, str) or not answers:
    raise ValueError(f"{name}: answers must be a non-empty list of strings (the human answers); "
                     f"got {answers!r}")


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """VQAv2 accuracy of one answer, as LLaVA-1.5 submits it and the VQA server scores it.

  1. LLaVA (scripts/convert_vqav2_for_submission.py) submits `evalai_normalize(prediction)`.
  2. The server (vqaEval.py @ a013f00) replaces "\\n"/"\\t" by spaces and strips both sides; then,
     only when the human answers are not all identical, it runs processPunctuation and
     processDigitArticle on every human answer and on the prediction. Ten identical answers are
     compared raw: ten times "t-shirt" gives 0 to any prediction, since step 1 made it "t shirt".
  3. Accuracy = mean over the annotators of min(1, #matches among the other answers / 3).

  Args:
    prediction: the decoded model answer.
    answers: the human answers (ten in VQAv2).
  Returns:
    accuracy in [0, 1].
  Differs: none in the numbers. The official script takes dicts and question ids; this takes one
  question. The 2015 release processed only the answers' punctuation; the current one, used here,
  processes both sides as stated.
  """
  _check_answers(answers, "vqa_accuracy")
  submitted = evalai_normalize(prediction)
  gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
  res = submitted.replace("\n", " ").replace("\t", " ").strip()
  if len(set(gts)) > 1:
    gts = [_process_digit_article(_process_punctuation(a, _COMMA_VQAEVAL)) for a in gts]
    res = _process_digit_article(_process_punctuation(res, _COMMA_VQAEVAL))
  return _leave_one_out(res, gts)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """TextVQA accuracy of one answer (llava/eval/m4c_evaluator.py TextVQAAccuracyEvaluator).

  Prediction and every human answer go through `evalai_normalize`, unconditionally; accuracy is
  the leave-one-out soft score of `vqa_accuracy` step 3 (m4c computes it per distinct answer and
  looks the prediction up, 0 when absent: the same number).

  Args:
    prediction: the decoded model answer.
    answers: the human answers (ten in TextVQA).
  Returns:
    accuracy in [0, 1].
  Differs: m4c asserts exactly ten answers; this accepts any non-empty list.
  """
  _check_answers(answers, "textvqa_accuracy")
  return _leave_one_out(evalai_normalize(prediction), [evalai_normalize(a) for a in answers])


def gqa_accuracy(prediction: str, answer: str) -> float:
  """GQA accuracy of one answer: 1.0 when `prediction.rstrip('.').lower() == answer`, else 0.0.

  LLaVA's scripts/convert_gqa_for_eval.py writes `text.rstrip('.').lower()`; GQA's own eval.py then
  compares `predicted == gold` with no further normalisation (the gold answers are lower-case), so
  "Yes." scores for "yes", but "a dog" does not for "dog" and nothing lower-cases the gold side.
  The decoded text is stripped first, as LLaVA's model_vqa_loader.py does before writing it.
  """
  return float(prediction.strip().rstrip(".").lower() == answer)


# ----------------------------------------------------------------------------------------------------
# Multiple choice and yes/no

SCIENCEQA_OPTIONS = ("A", "B", "C", "D", "E")
# The official pattern, period unescaped: any character after the letter, but there must be one.
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def scienceqa_letter(text: str, n_options: int) -> str | None:
  """The option letter LLaVA's llava/eval/eval_science_qa.py reads from a model answer, or None.

  In order: the text is exactly one of "A".."E"; or it starts with such a letter followed by ". "
  ("B. blue"); or the pattern "The answer is ([A-Z])." occurs exactly once in it. Anything else is
  "FAILED" there and None here, as is a letter beyond the question's `n_options` choices (the
  official get_pred_idx gives -1, never correct). The pattern's period is unescaped, so
  "The answer is C," and "The answer is Cat" both read C, while a text ending in "The answer is C"
  reads nothing. The text is stripped first, as model_vqa_science.py does before writing it.

  Args:
    text: the decoded model answer.
    n_options: the number of choices of the question, 1..5.
  Returns:
    "A".."E", or None when no letter can be read or it names no choice.
  """
  if not 1 <= n_options <= len(SCIENCEQA_OPTIONS):
    raise ValueError(f"scienceqa_letter: n_options = {n_options}; ScienceQA questions have 1 to 5 choices")
  text = text.strip()
  if text in SCIENCEQA_OPTIONS:
    letter = text
  elif len(text) >= 3 and text[0] in SCIENCEQA_OPTIONS and text[1:3] == ". ":
    letter = text[0]
  else:
    found = _SQA_ANSWER_IS.findall(text)
    letter = found[0] if len(found) == 1 else None
  return letter if letter in SCIENCEQA_OPTIONS[:n_options] else None


def pope_answer(text: str) -> str:
  """"yes" or "no" as LLaVA's llava/eval/eval_pope.py reads a model answer.

  Keep the text before the first "."; delete ","; split on single spaces; "no" if one of the words
  is exactly "No", "not" or "no", else "yes". So "No, there is not." and "There is no dog" are no;
  "Yes.", "NO", "Not really" and "There isn't" are yes. The text is stripped first, as LLaVA's
  model_vqa_loader.py does before writing it.
  """
  words = text.strip().split(".")[0].replace(",", "").split(" ")
  return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict:
  """POPE scores of one split (llava/eval/eval_pope.py eval_pope), positive class "yes".

  Args:
    predictions: the decoded model answers, read with `pope_answer`.
    labels: the gold labels, "yes" or "no", in the same order.
  Returns:
    {"accuracy", "precision", "recall", "f1", "yes_ratio"} as floats and the confusion counts
    {"tp", "fp", "tn", "fn"} as ints; precision = tp/(tp+fp), recall = tp/(tp+fn),
    f1 = 2pr/(p+r), yes_ratio = share of answers read as yes.
  Differs: eval_pope.py treats any label but "no" as yes, zips lists of different lengths, and
  divides by zero when a split has no predicted or no gold yes; here such labels and lengths are a
  ValueError, and precision (no predicted yes), recall (no gold yes) and then f1 are NaN, with
  f1 = 0 when p = r = 0.
  """
  if len(predictions) != len(labels) or not labels:
    raise ValueError(f"pope_metrics: {len(predictions)} predictions for {len(labels)} labels; "
                     "need the same non-zero number")
  bad = sorted({label for label in labels if label not in ("yes", "no")})
  if bad:
    raise ValueError(f"pope_metrics: labels must be 'yes' or 'no'; found {bad}")
  pred_yes = [pope_answer(p) == "yes" for p in predictions]
  gold_yes = [label == "yes" for label in labels]
  tp = sum(p and g for p, g in zip(pred_yes, gold_yes))
  fp = sum(p and not g for p, g in zip(pred_yes, gold_yes))
  tn = sum(not p and not g for p, g in zip(pred_yes, gold_yes))
  fn = sum(not p and g for p, g in zip(pred_yes, gold_yes))
  precision = tp / (tp + fp) if tp + fp else float("nan")
  recall = tp / (tp + fn) if tp + fn else float("nan")
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall, "f1": f1,
          "yes_ratio": sum(pred_yes) / len(pred_yes), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def mmbench_circular(records: Iterable[Mapping]) -> dict:
  """MMBench CircularEval: a question counts only if every rotation of its options is answered right.

  Each question with N options is asked N times, the options rotated by one place each time
  (llava/eval/model_vqa_mmbench.py --all-rounds), so the gold letter moves. VLMEvalKit
  (vlmeval/dataset/utils/multiple_choice.py, mcq_circular_eval) groups the rotations of a question
  by g_index = index % 1e6 (rotation k is stored at index + k·1e6), scores a group hit = 1 iff every
  rotation's letter equals that rotation's gold letter, and reports the mean hit overall and per
  category over the rotation-0 rows.

  Args:
    records: one mapping per (question, rotation), with keys
      "index": the question's id, shared by its rotations (LLaVA's question_id; VLMEvalKit's g_index);
      "rotation": int, 0 for the options in their original order (LLaVA's round_id; VLMEvalKit's
        index // 1e6);
      "prediction": the option letter read from the model's answer ("A".."D"), or None when none
        could be read (counts wrong);
      "answer": the gold letter of this rotation;
      "category": optional; when given, on every record, the same within a question.
  Returns:
    {"accuracy": circular accuracy, "vanilla_accuracy": accuracy on rotation 0 alone,
     "n_questions": int, "n_correct": int, and "per_category": {category: circular accuracy}
     when categories are given}.
  Differs: VLMEvalKit reads the letter from free text itself (and may ask an LLM); here the letter
  is read by the caller. A question whose rotation 0 is missing is ignored there and a ValueError
  here, as are a rotation given twice and a question with two categories.
  """
  groups: dict = {}
  for r in records:
    key, rot = r["index"], int(r["rotation"])
    group = groups.setdefault(key, {})
    if rot in group:
      raise ValueError(f"mmbench_circular: question {key!r} has rotation {rot} twice")
    group[rot] = r
  if not groups:
    raise ValueError("mmbench_circular: no records")
  with_category = {"category" in r for g in groups.values() for r in g.values()}
  if with_category == {True, False}:
    raise ValueError("mmbench_circular: 'category' is on some records and not on others")
  hits, vanilla, categories = {}, {}, {}
  for key, group in groups.items():
    if 0 not in group:
      raise ValueError(f"mmbench_circular: question {key!r} has rotations {sorted(group)} but not rotation 0")
    hits[key] = all(r["prediction"] is not None and r["prediction"] == r["answer"] for r in group.values())
    vanilla[key] = group[0]["prediction"] is not None and group[0]["prediction"] == group[0]["answer"]
    if with_category == {True}:
      cats = {r["category"] for r in group.values()}
      if len(cats) != 1:
        raise ValueError(f"mmbench_circular: question {key!r} has categories {sorted(cats)}; expected one")
      categories[key] = cats.pop()
  out = {"accuracy": sum(hits.values()) / len(hits), "vanilla_accuracy": sum(vanilla.values()) / len(vanilla),
         "n_questions": len(hits), "n_correct": sum(hits.values())}
  if categories:
    per = {}
    for key, cat in categories.items():
      per.setdefault(cat, []).append(hits[key])
    out["per_category"] = {cat: sum(h) / len(h) for cat, h in sorted(per.items())}
  return out


# ----------------------------------------------------------------------------------------------------
# Speech recognition: word and character error rates


def edit_counts(ref_units: Sequence, hyp_units: Sequence) -> tuple[int, int, int]:
  """(substitutions S, deletions D, insertions I) of a minimal alignment of hyp_units to ref_units.

  S + D + I is the Levenshtein distance (unit costs). Where several minimal alignments exist
  ("a b" vs "b c": two substitutions, or a deletion and an insertion) the split is the one rapidfuzz
  reports, and with it jiwer: a common prefix and suffix are matched first, then the dynamic
  programme is traced back from the end, preferring at each cell a deletion, then an insertion,
  then the diagonal, under the tests of rapidfuzz's Levenshtein.editops (Hyyrö 2004). D counts
  reference units missing from the hypothesis, I hypothesis units not in the reference.
  """
  ref, hyp = list(ref_units), list(hyp_units)
  start = 0
  while start < min(len(ref), len(hyp)) and ref[start] == hyp[start]:
    start += 1
  end = 0
  while end < min(len(ref), len(hyp)) - start and ref[-1 - end] == hyp[-1 - end]:
    end += 1
  ref, hyp = ref[start:len(ref) - end], hyp[start:len(hyp) - end]
  n, m = len(ref), len(hyp)
  # dist[j][i] = edit distance between ref[:i] and hyp[:j].
  dist = [list(range(n + 1))]
  for j in range(1, m + 1):
    prev, row, h = dist[-1], [j], hyp[j - 1]
    for i in range(1, n + 1):
      row.append(min(prev[i] + 1, row[i - 1] + 1, prev[i - 1] + (ref[i - 1] != h)))
    dist.append(row)
  subs = dels = ins = 0
  i, j = n, m
  while i and j:
    if dist[j][i] - dist[j][i - 1] == 1:  # ref[i-1] deleted
      dels += 1
      i -= 1
      continue
    j -= 1
    if j and dist[j][i] - dist[j][i - 1] == -1:  # hyp[j] inserted
      ins += 1
    else:  # ref[i-1] aligned with hyp[j]: a match or a substitution
      i -= 1
      subs += ref[i] != hyp[j]
  return subs, dels + i, ins + j


_NOT_WORD = re.compile(r"[^\w\s']|_")


def english_normalize(text: str) -> str:
  """A simple English normaliser for WER: lower-case, "’" -> "'", every other punctuation mark
  (anything not a letter, digit, apostrophe or space) -> space, whitespace collapsed.

  "Hello, World!" -> "hello world"; "twenty-one" -> "twenty one"; "don't" stays. LibriSpeech
  references (upper-case, apostrophes only) pass unchanged but for case. Not Whisper's
  EnglishTextNormalizer: no spelling, number or contraction rewriting.
  """
  text = _NOT_WORD.sub(" ", text.lower().replace("\u2019", "'"))
  return " ".join(text.split())


def _corpus_rate(ref_units: list[list], hyp_units: list[list], name: str) -> float:
  total = sum(len(r) for r in ref_units)
  if total == 0:
    raise ValueError(f"{name}: the references hold no units; the error rate is undefined")
  return sum(sum(edit_counts(r, h)) for r, h in zip(ref_units, hyp_units)) / total


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str], name: str) -> None:
  if isinstance(references, str) or isinstance(hypotheses, str):
    raise ValueError(f"{name}: pass lists of sentences, not one string")
  if len(references) != len(hypotheses):
    raise ValueError(f"{name}: {len(references)} references for {len(hypotheses)} hypotheses")


def wer(references: Sequence[str], hypotheses: Sequence[str], *,
        normalize: bool | Callable[[str], str] = False) -> float:
  """Corpus word error rate: Σ(S + D + I) / Σ(reference words), over all sentence pairs.

  Words are the whitespace-separated pieces of each sentence, case and punctuation kept
  (LibriSpeech transcripts are upper-case without punctuation: normalise the hypotheses to match, or
  pass normalize=True to run `english_normalize` on both sides, or a function of your own).

  Args:
    references: the reference transcripts.
    hypotheses: the model transcripts, same order.
    normalize: False, True (`english_normalize`) or a str -> str function applied to both sides.
  Returns:
    WER as a fraction (0.0243 for 2.43 %); above 1 when the hypotheses insert many words.
  Equals `jiwer.wer(references, hypotheses)` (jiwer 4.0), whose default transform collapses runs of
  whitespace and splits on single spaces: the same words, unless a lone tab or newline separates
  two words, which jiwer keeps as one. An all-empty reference side is a ValueError here (jiwer
  returns the insertion count).
  """
  _check_pairs(references, hypotheses, "wer")
  if normalize is True:
    normalize = english_normalize
  if normalize:
    references, hypotheses = [normalize(r) for r in references], [normalize(h) for h in hypotheses]
  return _corpus_rate([r.split() for r in references], [h.split() for h in hypotheses], "wer")


def word_position_accuracy(references: Sequence[str], hypotheses: Sequence[str], *,
                           normalize: bool | Callable[[str], str] = False) -> list[dict]:
  """Accuracy of each word position, without alignment: for position i (0-based), over the pairs whose
  reference has more than i words, the fraction whose hypothesis has the same word at position i.

  Where WER says how many words are wrong, this says which: a model that hears the first word of a clip
  and guesses the rest scores high at position 0 and near chance after it. A hypothesis that drops or
  inserts a word is wrong from that position on (no alignment, unlike WER).

  Returns:
    [{"position": i, "accuracy": float, "n": pairs with a reference word at i}, ...] for i = 0 to the
    longest reference's last position.
  """
  _check_pairs(references, hypotheses, "word_position_accuracy")
  if normalize is True:
    normalize = english_normalize
  if normalize:
    references, hypotheses = [normalize(r) for r in references], [normalize(h) for h in hypotheses]
  pairs = [(r.split(), h.split()) for r, h in zip(references, hypotheses)]
  out = []
  for i in range(max((len(r) for r, _ in pairs), default=0)):
    hits = [i < len(h) and h[i] == r[i] for r, h in pairs if i < len(r)]
    out.append({"position": i, "accuracy": sum(hits) / len(hits), "n": len(hits)})
  return out


def cer(references: Sequence[str], hypotheses: Sequence[str], *, remove_spaces: bool = True) -> float:
  """Corpus character error rate: Σ(S + D + I) / Σ(reference characters).

  With remove_spaces (the default, for Chinese, e.g. Aishell, whose transcripts are spaced
  inconsistently) every whitespace character is deleted before counting; without it each sentence
  is stripped and its inner spaces count as characters, as `jiwer.cer` does by default.

  Returns:
    CER as a fraction. Equals jiwer.cer on the same strings (with, for remove_spaces,
    jiwer.RemoveWhiteSpace(replace_by_space=False) in its transform).
  """
  _check_pairs(references, hypotheses, "cer")

  def units(sentence: str) -> list[str]:
    return [c for c in sentence if not c.isspace()] if remove_spaces else list(sentence.strip())

  return _corpus_rate([units(r) for r in references], [units(h) for h in hypotheses], "cer")


# ----------------------------------------------------------------------------------------------------
# Time series


def _masked_mean(err: np.ndarray, mask, name: str) -> float:
  if mask is None:
    return float(err.mean())
  try:
    mask = np.broadcast_to(np.asarray(mask, bool), err.shape)
  except ValueError as e:
    raise ValueError(f"{name}: mask of shape {np.shape(mask)} does not broadcast to {err.shape}") from e
  if not mask.any():
    raise ValueError(f"{name}: the mask selects no value; the mean is undefined")
  return float(err[mask].mean())


def _errors(pred, target, name: str) -> np.ndarray:
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  if pred.shape != target.shape:
    raise ValueError(f"{name}: prediction of shape {pred.shape} for a target of shape {target.shape}")
  return pred - target


def mse(pred, target, mask=None) -> float:
  """Mean squared error, mean((pred − target)²), over the values where mask is true (all if None).

  Time-Series-Library utils/metrics.py MSE, in float64, on series already normalised as the
  benchmark prescribes. Args: pred, target: arrays of one shape, e.g. float[B, T, C]; mask: bool
  array broadcastable to it, e.g. bool[B, T, 1] for padded steps. Differs: the original broadcasts
  mismatched shapes silently; here they are a ValueError.
  """
  return _masked_mean(_errors(pred, target, "mse") ** 2, mask, "mse")


def mae(pred, target, mask=None) -> float:
  """Mean absolute error, mean(|pred − target|), over the values where mask is true (all if None).

  Time-Series-Library utils/metrics.py MAE; arguments and differences as for `mse`.
  """
  return _masked_mean(np.abs(_errors(pred, target, "mae")), mask, "mae")
