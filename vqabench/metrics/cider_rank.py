"""CIDEr-D of one caption predicted for every image, for many candidate captions at once.

The captioning baseline is the single training caption that scores the highest corpus CIDEr-D
against the validation references when it is the prediction for every image. pycocoevalcap's
``Cider`` scores one candidate in a Python loop over every image and reference (about a second
per candidate on a thousand images), so ranking thousands of candidates that way takes hours.
``constant_cider`` computes the same number for all candidates together with sparse n-gram
matrices, following ``pycocoevalcap.cider.cider_scorer`` term by term:

- n-grams of 1..4 tokens; document frequency = the number of images whose references hold the
  n-gram; idf = log(#images) - log(max(1, df)) (so an n-gram no reference holds gets log(#images));
- per n, vectors tf * idf, and for a candidate c and reference r the clipped cosine
  sum_g min(v_c, v_r) * v_r / (|v_c| |v_r|) (0 when a norm is 0);
- a Gaussian length penalty exp(-(l_c - l_r)^2 / (2 * 6^2)), where pycocoevalcap's "length" is the
  number of bigrams (its ``counts2vec`` counts term frequencies of n-gram index 1), i.e. words - 1;
- per image the mean over n, summed over references, divided by their number, times 10; the
  corpus score is the mean over images.

The clipped product is made linear: for integer counts a and b, min(a, b) * b is the sum over
k >= 1 of [a >= k] * [b >= k] * b (k up to the largest count of an n-gram in a candidate). The
length penalty depends on the candidate only through its length, so for all candidates of one
length the weighted sum over references collapses into one vector over n-grams first: the cost is a
few sparse matrix-vector products per distinct length, never a candidates x references matrix
(5,000 candidates against COCO's 25,000 validation references: about 4 s on one busy core, where
pycocoevalcap takes about 10 s per candidate). ``best_constant_caption`` ranks the candidates this
way and rescores the winner with pycocoevalcap's own ``Cider``, whose number it reports.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

N_GRAMS = 4
SIGMA = 6.0
# The winner is rescored by pycocoevalcap (a second or more per candidate on COCO's 5,000 images).
CONFIRM = 1
# Characters the PTB tokenizer drops or splits off; used only to group training captions for counting.
_PUNCT = re.compile(r"[^\w\s']|''|``")


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _counts(texts: Sequence[str], n: int, vocab: dict[tuple[str, ...], int]) -> sparse.csr_matrix:
    """Rows of n-gram counts (columns from ``vocab``, which grows with unseen n-grams)."""
    rows, cols, vals = [], [], []
    for i, text in enumerate(texts):
        for gram, count in _ngrams(text.split(), n).items():
            rows.append(i)
            cols.append(vocab.setdefault(gram, len(vocab)))
            vals.append(count)
    return sparse.csr_matrix((np.array(vals, float), (rows, cols)), shape=(len(texts), len(vocab)))


def _bigram_length(text: str) -> int:
    # pycocoevalcap's "length": the summed counts of n-gram index 1, i.e. bigrams.
    return max(0, len(text.split()) - 1)


def constant_cider(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """CIDEr-D (pycocoevalcap's ``Cider``) of each candidate predicted for every image.

    ``candidates`` and ``references`` (per image, at least one each) are tokenised strings, tokens
    separated by spaces, as pycocoevalcap's scorers take them after its PTB tokenizer.
    """
    if not references or any(len(refs) == 0 for refs in references):
        raise ValueError("constant_cider needs at least one image, each with at least one reference")
    flat = [r for refs in references for r in refs]
    image_of = np.repeat(np.arange(len(references)), [len(refs) for refs in references])
    n_images = len(references)
    # Per reference: its image's weight in the corpus mean (1 / (#refs of its image * #images)), x10, mean over n.
    per_image = np.array([len(refs) for refs in references], float)
    weight = 10.0 / (N_GRAMS * per_image[image_of] * n_images)
    ref_len = np.log(float(n_images))
    lengths_c = np.array([_bigram_length(c) for c in candidates])
    lengths_r = np.array([_bigram_length(r) for r in flat], float)
    # The length penalty depends on the candidate only through its length, so candidates of one length
    # share one weighted sum over references: no candidates x references matrix is ever formed.
    by_length = {int(n): np.flatnonzero(lengths_c == n) for n in np.unique(lengths_c)}
    penalty = {n: np.exp(-((n - lengths_r) ** 2) / (2 * SIGMA**2)) for n in by_length}
    by_image = sparse.csr_matrix((np.ones(len(flat)), (image_of, np.arange(len(flat)))), (n_images, len(flat)))
    total = np.zeros(len(candidates))
    for n in range(1, N_GRAMS + 1):
        vocab: dict[tuple[str, ...], int] = {}
        ref_tf = _counts(flat, n, vocab)
        cand_tf = _counts(candidates, n, vocab)
        ref_tf.resize((len(flat), len(vocab)))
        # Document frequency: images whose references (any of them) hold the n-gram.
        held = ref_tf.copy()
        held.data[:] = 1.0
        df = np.asarray(((by_image @ held) > 0).sum(axis=0)).ravel()
        idf2 = (ref_len - np.log(np.maximum(1.0, df))) ** 2
        norm_r = np.sqrt(np.asarray(ref_tf.multiply(ref_tf).multiply(idf2).sum(axis=1)).ravel())
        norm_c = np.sqrt(np.asarray(cand_tf.multiply(cand_tf).multiply(idf2).sum(axis=1)).ravel())
        # A zero norm makes pycocoevalcap skip the division; its clipped sum is 0 then anyway.
        inv_r = np.divide(1.0, norm_r, out=np.zeros_like(norm_r), where=norm_r != 0)
        inv_c = np.divide(1.0, norm_c, out=np.zeros_like(norm_c), where=norm_c != 0)
        top = int(cand_tf.max()) if cand_tf.nnz else 0
        levels = [
            ((cand_tf >= k).astype(float).tocsr(), ref_tf.multiply(ref_tf >= k).multiply(idf2).tocsc().T.tocsr())
            for k in range(1, top + 1)
        ]
        for length, rows in by_length.items():
            coef = weight * penalty[length] * inv_r
            clipped = sum(a[rows] @ (bt @ coef) for a, bt in levels) if levels else 0.0
            total[rows] += clipped * inv_c[rows]
    return total


def official_constant_cider(candidate: str, references: Sequence[Sequence[str]]) -> float:
    """pycocoevalcap's ``Cider`` of ``candidate`` predicted for every image (tokenised strings)."""
    from pycocoevalcap.cider.cider import Cider

    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [candidate] for i in range(len(references))}
    return float(Cider().compute_score(gts, res)[0])


def group_key(caption: str) -> str:
    """A caption lowercased, without punctuation, one space between words: how captions are counted."""
    return " ".join(_PUNCT.sub(" ", caption.lower()).split())


def frequent_captions(captions: Sequence[str], limit: int) -> list[str]:
    """The ``limit`` most frequent training captions (grouped by ``group_key``), most frequent first.

    Each group is represented by its most frequent spelling; ties go to the alphabetically first.
    """
    spellings: dict[str, Counter] = {}
    for caption in captions:
        key = group_key(caption)
        if key:
            spellings.setdefault(key, Counter())[caption] += 1
    order = sorted(spellings, key=lambda k: (-sum(spellings[k].values()), k))[:limit]
    return [min(spellings[k].items(), key=lambda kv: (-kv[1], kv[0]))[0] for k in order]


@dataclass(frozen=True)
class BestCaption:
    """The winning caption, its CIDEr-D (pycocoevalcap's) and how many candidates were ranked."""

    caption: str
    cider: float
    ranked: int


def ptb_tokenize(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """Candidates, and references per image, through pycocoevalcap's PTB tokenizer as the caption metrics
    tokenise them (one JVM call for both: starting Java costs more than the tokenising)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from vqabench.metrics.captioning import _require_java

    _require_java()
    texts = {("c", i): [{"caption": t}] for i, t in enumerate(candidates)}
    texts.update({("r", i): [{"caption": c} for c in refs] for i, refs in enumerate(references)})
    out = PTBTokenizer().tokenize(texts)
    return [out["c", i][0] for i in range(len(candidates))], [out["r", i] for i in range(len(references))]


def best_constant_caption(
    captions: Sequence[str], references: Sequence[Sequence[str]], max_candidates: int = 5000
) -> BestCaption | None:
    """Of the ``max_candidates`` most frequent ``captions``, the one with the highest CIDEr-D when
    predicted for every image of ``references`` (raw strings, PTB-tokenised here); None without any.

    The vectorised score ranks them; pycocoevalcap's ``Cider`` rescores the first ``CONFIRM`` and decides.
    """
    pool = frequent_captions(captions, max_candidates)
    if not pool or not references:
        return None
    tokens, refs = ptb_tokenize(pool, references)
    kept = [i for i, t in enumerate(tokens) if t.strip()]  # a caption of punctuation only has no tokens
    if not kept:
        return None
    scores = constant_cider([tokens[i] for i in kept], refs)
    # Stable: among equal scores the more frequent caption leads.
    leaders = [kept[j] for j in np.argsort(-scores, kind="stable")[:CONFIRM]]
    official = [official_constant_cider(tokens[i], refs) for i in leaders]
    for i, value in zip(leaders, official):
        fast = scores[kept.index(i)]
        if abs(fast - value) > 1e-6:
            warnings.warn(
                f"vectorised CIDEr-D {fast:.8f} differs from pycocoevalcap's {value:.8f} for {pool[i]!r}; "
                f"the baseline uses pycocoevalcap's",
                RuntimeWarning,
                stacklevel=2,
            )
    best = max(range(len(leaders)), key=lambda j: (official[j], -j))
    return BestCaption(pool[leaders[best]], official[best], len(kept))
