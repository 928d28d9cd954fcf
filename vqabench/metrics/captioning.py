"""COCO caption metrics through pycocoevalcap: PTB tokenisation, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

The tokenizer and METEOR run bundled Java jars, so Java must be on PATH. SPICE is optional:
pycocoevalcap downloads Stanford CoreNLP on first use and SPICE only runs on Java 8.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import get_stanford_models as _spice_models
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

# Where pycocoevalcap's SPICE expects CoreNLP; checked first so nothing is downloaded implicitly.
_CORENLP_JAR = Path(_spice_models.SPICEDIR) / _spice_models.SPICELIB / f"{_spice_models.JAR}.jar"

_SPICE_HELP = (
    f"SPICE needs the Stanford CoreNLP 3.6.0 jars in {_CORENLP_JAR.parent} (fetch them once, "
    'with network access, by running `python -c "from pycocoevalcap.spice.get_stanford_models '
    'import get_stanford_models; get_stanford_models()"`) and Java 8 as `java` on PATH. '
    "Without them, run caption_metrics(..., spice=False), the default, to get BLEU, METEOR, "
    "ROUGE-L and CIDEr."
)


def _require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            "caption metrics need Java on PATH: pycocoevalcap's PTB tokenizer and METEOR are "
            "Java programs. Install a JRE (e.g. `apt-get install default-jre-headless`)."
        )


def _check_inputs(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> None:
    if len(predictions) == 0:
        raise ValueError("predictions must not be empty")
    if set(predictions) != set(references):
        missing = sorted(map(str, set(predictions) - set(references)))[:5]
        extra = sorted(map(str, set(references) - set(predictions)))[:5]
        raise ValueError(
            "references must have exactly the ids of predictions "
            f"(ids without references: {missing}; references without prediction: {extra})"
        )
    for key, refs in references.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{key!r}] must be a non-empty sequence of strings")


@functools.lru_cache(maxsize=1)
def _meteor_scorer() -> Meteor:
    # Starting METEOR loads a 60 MB paraphrase table (about 13 s on two cores), so one JVM
    # serves every call in the process; it exits when our end of its stdin closes.
    return Meteor()


def _meteor(gts: dict, res: dict) -> float:
    scorer = _meteor_scorer()
    try:
        score, _ = scorer.compute_score(gts, res)
    except Exception:
        # compute_score keeps its lock when the jar misbehaves, and Meteor.__del__ would then
        # block forever on it; stop the JVM, free the lock and start afresh next time.
        _meteor_scorer.cache_clear()
        scorer.meteor_p.kill()
        if scorer.lock.locked():
            scorer.lock.release()
        raise
    return float(score)


def _require_spice() -> None:
    if not _CORENLP_JAR.exists():
        raise RuntimeError(f"SPICE cannot run: {_CORENLP_JAR} is missing. {_SPICE_HELP}")


def _spice(gts: dict, res: dict) -> float:
    try:
        score, _ = Spice().compute_score(gts, res)
    except (subprocess.CalledProcessError, OSError, ValueError) as err:
        raise RuntimeError(f"SPICE failed ({err}). {_SPICE_HELP}") from err
    return float(score)


def caption_metrics(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    spice: bool = False,
    meteor: bool = True,
) -> dict[str, float]:
    """Return corpus-level {"bleu_1".."bleu_4"[, "meteor"], "rouge_l", "cider"[, "spice"]} per pycocoevalcap.

    ``predictions`` maps an id to one caption, ``references`` the same ids to their captions.
    ``meteor=False`` skips METEOR, whose first call in a process costs a ~13 s JVM start.
    """
    _check_inputs(predictions, references)
    _require_java()
    if spice:
        _require_spice()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in references[k]] for k in predictions})
    res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in predictions})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    result = {f"bleu_{n}": float(b) for n, b in enumerate(bleu, start=1)}
    if meteor:
        result["meteor"] = _meteor(gts, res)
    result["rouge_l"] = float(rouge)
    result["cider"] = float(cider)
    if spice:
        result["spice"] = _spice(gts, res)
    return result
