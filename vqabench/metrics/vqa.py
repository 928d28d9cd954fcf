"""Official VQA accuracy (GT-Vision-Lab/VQA ``vqaEval.py``, master), quirks included.

Two modes share the consensus formula and differ in what gets normalised and how:

* ``"vqa"`` (VQA v2 ``vqaEval.py``): both sides are normalised only when the human answers
  are not all identical, so "Yes" against ten "yes" scores 0, exactly as the official code.
* ``"vizwiz"`` (VizWiz ``vqaEval.py``): the prediction is always normalised, the human
  answers never (not even whitespace-stripped), and its contraction table writes most
  apostrophes as U+2019 (``_VIZWIZ_CONTRACTIONS``), so "2 oclock" scores 0 against ten "2 o'clock".
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

MODES = ("vqa", "vizwiz")

# The 21 characters of the official list; apostrophe, colon and period are deliberately absent.
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# "(?!<=\d)" is the official typo for a look-behind; it is a no-op look-ahead, kept verbatim.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official code passes re.UNICODE positionally, where sub() takes it as the count (32).
_PERIOD_STRIP_COUNT = int(re.UNICODE)

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Verbatim from the official table, including keys that can never match after lowercasing.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

# The VizWiz evaluation code's own table (VizWiz API ``vqaEval.py``), verbatim: the same keys as
# VQA v2's, but most keys and values write the apostrophe as the typographic U+2019 ("dont" ->
# "don’t"), while a few keep the ASCII one ("cant" -> "can't", "weve" -> "we've"). So "2 oclock"
# becomes "2 o’clock" and never equals a human "2 o'clock", which the official score counts as 0.
_VIZWIZ_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn’t’ve",
    "couldnt’ve": "couldn’t’ve",
    "didnt": "didn’t",
    "doesnt": "doesn’t",
    "dont": "don’t",
    "hadnt": "hadn’t",
    "hadnt’ve": "hadn’t’ve",
    "hadn'tve": "hadn’t’ve",
    "hasnt": "hasn’t",
    "havent": "haven’t",
    "hed": "he’d",
    "hed’ve": "he’d’ve",
    "he’dve": "he’d’ve",
    "hes": "he’s",
    "howd": "how’d",
    "howll": "how’ll",
    "hows": "how’s",
    "Id’ve": "I’d’ve",
    "I’dve": "I’d’ve",
    "Im": "I’m",
    "Ive": "I’ve",
    "isnt": "isn’t",
    "itd": "it’d",
    "itd’ve": "it’d’ve",
    "it’dve": "it’d’ve",
    "itll": "it’ll",
    "let’s": "let’s",
    "maam": "ma’am",
    "mightnt": "mightn’t",
    "mightnt’ve": "mightn’t’ve",
    "mightn’tve": "mightn’t’ve",
    "mightve": "might’ve",
    "mustnt": "mustn’t",
    "mustve": "must’ve",
    "neednt": "needn’t",
    "notve": "not’ve",
    "oclock": "o’clock",
    "oughtnt": "oughtn’t",
    "ow’s’at": "’ow’s’at",
    "’ows’at": "’ow’s’at",
    "’ow’sat": "’ow’s’at",
    "shant": "shan’t",
    "shed’ve": "she’d’ve",
    "she’dve": "she’d’ve",
    "she’s": "she’s",
    "shouldve": "should’ve",
    "shouldnt": "shouldn’t",
    "shouldnt’ve": "shouldn’t’ve",
    "shouldn’tve": "shouldn’t’ve",
    "somebody’d": "somebodyd",
    "somebodyd’ve": "somebody’d’ve",
    "somebody’dve": "somebody’d’ve",
    "somebodyll": "somebody’ll",
    "somebodys": "somebody’s",
    "someoned": "someone’d",
    "someoned’ve": "someone’d’ve",
    "someone’dve": "someone’d’ve",
    "someonell": "someone’ll",
    "someones": "someone’s",
    "somethingd": "something’d",
    "somethingd’ve": "something’d’ve",
    "something’dve": "something’d’ve",
    "somethingll": "something’ll",
    "thats": "that’s",
    "thered": "there’d",
    "thered’ve": "there’d’ve",
    "there’dve": "there’d’ve",
    "therere": "there’re",
    "theres": "there’s",
    "theyd": "they’d",
    "theyd’ve": "they’d’ve",
    "they’dve": "they’d’ve",
    "theyll": "they’ll",
    "theyre": "they’re",
    "theyve": "they’ve",
    "twas": "’twas",
    "wasnt": "wasn’t",
    "wed’ve": "we’d’ve",
    "we’dve": "we’d’ve",
    "weve": "we've",
    "werent": "weren’t",
    "whatll": "what’ll",
    "whatre": "what’re",
    "whats": "what’s",
    "whatve": "what’ve",
    "whens": "when’s",
    "whered": "where’d",
    "wheres": "where's",
    "whereve": "where’ve",
    "whod": "who’d",
    "whod’ve": "who’d’ve",
    "who’dve": "who’d’ve",
    "wholl": "who’ll",
    "whos": "who’s",
    "whove": "who've",
    "whyll": "why’ll",
    "whyre": "why’re",
    "whys": "why’s",
    "wont": "won’t",
    "wouldve": "would’ve",
    "wouldnt": "wouldn’t",
    "wouldnt’ve": "wouldn’t’ve",
    "wouldn’tve": "wouldn’t’ve",
    "yall": "y’all",
    "yall’ll": "y’all’ll",
    "y’allll": "y’all’ll",
    "yall’d’ve": "y’all’d’ve",
    "y’alld’ve": "y’all’d’ve",
    "y’all’dve": "y’all’d’ve",
    "youd": "you’d",
    "youd’ve": "you’d’ve",
    "you’dve": "you’d’ve",
    "youll": "you’ll",
    "youre": "you’re",
    "youve": "you’ve",
}
_TABLES = {"vqa": _CONTRACTIONS, "vizwiz": _VIZWIZ_CONTRACTIONS}


def _clean_whitespace(s: str) -> str:
    return s.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    out = text
    # The official code tests the original string, not the one being rewritten.
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str, contractions: dict[str, str]) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(contractions.get(w, w) for w in words)


def normalize_answer(s: str, mode: str = "vqa") -> str:
    """Return ``s`` normalised exactly as the official evaluation of ``mode`` normalises an answer.

    The two modes differ only in their contraction tables (see ``_VIZWIZ_CONTRACTIONS``).
    """
    _check_mode(mode)
    return _process_digit_article(_process_punctuation(s), _TABLES[mode])


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def vqa_score(prediction: str, answers: Sequence[str], mode: str = "vqa") -> float:
    """Return the consensus accuracy in [0, 1] of one prediction against the human answers.

    Leave-one-out average of min(1, matches / 3); with a single reference it is exact match
    after the mode's normalisation (the prediction always normalised, the reference too in
    mode "vqa").
    """
    _check_mode(mode)
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError("answers must be a non-empty sequence of strings")
    pred = _clean_whitespace(prediction)
    if mode == "vizwiz":
        refs = list(answers)
        pred = normalize_answer(pred, mode)
    else:
        refs = [_clean_whitespace(a) for a in answers]
        if len(set(refs)) > 1 or len(refs) == 1:
            refs = [normalize_answer(a) for a in refs]
            pred = normalize_answer(pred)
    if len(refs) == 1:
        return float(refs[0] == pred)
    matches = sum(ref == pred for ref in refs)
    total = sum(min(1.0, (matches - (ref == pred)) / 3) for ref in refs)
    return total / len(refs)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def vqa_accuracy(
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
    mode: str = "vqa",
) -> dict[str, Any]:
    """Return {"vqa_accuracy", "per_question_type", "per_answer_type"}: unrounded means of vqa_score.

    A per-type dict is empty when its types are not given.
    """
    _check_mode(mode)
    if len(predictions) == 0:
        raise ValueError("predictions must not be empty")
    if len(answers) != len(predictions):
        raise ValueError(f"answers has {len(answers)} items but predictions has {len(predictions)}")
    for name, types in (("question_types", question_types), ("answer_types", answer_types)):
        if types is not None and len(types) != len(predictions):
            raise ValueError(f"{name} has {len(types)} items but predictions has {len(predictions)}")
    scores = [vqa_score(p, a, mode) for p, a in zip(predictions, answers)]
    return {
        "vqa_accuracy": _mean(scores),
        "per_question_type": _per_type(scores, question_types),
        "per_answer_type": _per_type(scores, answer_types),
    }


def _per_type(scores: list[float], types: Sequence[str] | None) -> dict[str, float]:
    if types is None:
        return {}
    grouped: dict[str, list[float]] = defaultdict(list)
    for score, t in zip(scores, types):
        grouped[t].append(score)
    return {t: _mean(v) for t, v in grouped.items()}
