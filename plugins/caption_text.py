"""Caption tokenizers shared by the caption-decoder families.

GPT-2's byte-level BPE when its files can be loaded (a hub name that is cached, or a local
directory), otherwise open_clip's BPE vocabulary, which ships in the open_clip wheel and so works
offline. Both become the same small interface: ids with a begin and an end token, padding, and
decoding back to text that stops at the end token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

OPEN_CLIP_BPE = "open_clip"


@dataclass
class CaptionTokenizer:
    """Text <-> ids for a decoder: ``encode`` adds begin and end tokens and pads; ``decode`` inverts it."""

    name: str  # what the tokenizer is, for the record ("gpt2 BPE", "open_clip BPE (bundled)")
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    _encode: Any
    _decode: Any
    ids: tuple[int, ...] = ()  # the ids of the tokenizer this one is restricted to (empty: not restricted)

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [N, L], mask [N, L]): ``bos`` + tokens + ``eos``, cut to ``max_len``, padded to the longest."""
        if max_len < 2:
            raise ValueError(f"caption max_len={max_len} must be >= 2 (begin and end tokens)")
        rows = [[self.bos_id, *self._encode(t)][: max_len - 1] + [self.eos_id] for t in texts]
        width = max((len(r) for r in rows), default=2)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        """The text of generated ids: up to the first end token, without begin or padding tokens."""
        out = []
        for i in [int(x) for x in ids]:
            if i == self.eos_id:
                break
            if i not in (self.bos_id, self.pad_id):
                out.append(i)
        return _tidy(self._decode(out))


def _tidy(text: str) -> str:
    # open_clip's decoder leaves a space before punctuation ("a cube ."): captions read as written.
    return re.sub(r"\s+([.,!?;:])", r"\1", " ".join(text.split()))


def open_clip_tokenizer() -> CaptionTokenizer:
    """open_clip's bundled BPE (lower-cased, 49,408 ids): its start and end of text as begin and end."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    # open_clip pads with 0 ("!"), a real token; the end token pads here, so padding never decodes.
    return CaptionTokenizer(
        "open_clip BPE (bundled)",
        len(tok.encoder),
        tok.sot_token_id,
        tok.eot_token_id,
        tok.eot_token_id,
        tok.encode,
        tok.decode,
    )


def hf_tokenizer(source: str) -> CaptionTokenizer:
    """A transformers tokenizer (GPT-2's BPE) from a hub name or directory; OSError when not there."""
    from transformers import AutoTokenizer

    from vqabench.weights import local_source

    path = local_source(source)  # a directory, or the cached snapshot: never a download
    if path is None:
        raise OSError(f"tokenizer {source!r} is neither a directory nor in the local hub cache")
    tok = AutoTokenizer.from_pretrained(path)
    eos = tok.eos_token_id
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos
    # GPT-2 has one special token (<|endoftext|>) for begin, end and padding.
    return CaptionTokenizer(
        f"{source} BPE",
        len(tok),
        bos,
        eos,
        tok.pad_token_id if tok.pad_token_id is not None else eos,
        lambda t: tok.encode(t, add_special_tokens=False),
        lambda ids: tok.decode(ids, skip_special_tokens=True),
    )


def load_caption_tokenizer(source: str) -> CaptionTokenizer:
    """The tokenizer ``source`` names: ``open_clip`` (bundled), or a transformers name or directory,
    falling back to open_clip's bundled BPE when that cannot be loaded offline."""
    if source == OPEN_CLIP_BPE:
        return open_clip_tokenizer()
    try:
        return hf_tokenizer(source)
    except (OSError, ValueError):
        return open_clip_tokenizer()


VOCABULARY = "vocabulary.json"  # beside a decoder restricted to a corpus: {"tokenizer": ..., "ids": [...]}


def restricted(base: CaptionTokenizer, ids: Sequence[int]) -> CaptionTokenizer:
    """``base`` mapped onto a small vocabulary: 0 begin, 1 end (also padding), 2 unknown, then ``ids``.

    A decoder over the ids a corpus uses needs a softmax of a few hundred entries instead of
    ``base.vocab_size`` (49,408 for open_clip's BPE), which dominates the cost of a small decoder.
    Text is still split and joined by ``base``; a token outside ``ids`` encodes as unknown and
    decodes to nothing.
    """
    kept = [int(i) for i in ids if int(i) not in (base.bos_id, base.eos_id)]
    local = {b: k + 3 for k, b in enumerate(kept)}
    back = {k + 3: b for k, b in enumerate(kept)}
    return CaptionTokenizer(
        f"{base.name}, restricted to {len(kept)} ids",
        len(kept) + 3,
        0,
        1,
        1,
        lambda t: [local.get(i, 2) for i in base._encode(t)],
        lambda out: base._decode([back[i] for i in out if i in back]),
        tuple(kept),
    )


def decoder_tokenizer(directory: str | Path, fallback: str) -> CaptionTokenizer:
    """The tokenizer of a decoder saved in ``directory``: its restricted vocabulary when it has one
    (``VOCABULARY``), else ``fallback`` (a name for ``load_caption_tokenizer``)."""
    import json

    file = Path(directory) / VOCABULARY
    if not file.is_file():
        return load_caption_tokenizer(fallback)
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
        return restricted(load_caption_tokenizer(saved["tokenizer"]), saved["ids"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{file}: unreadable decoder vocabulary ({exc}); delete the decoder directory") from None
