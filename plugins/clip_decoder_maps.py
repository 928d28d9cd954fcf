"""Cross-attention maps of the CLIP-decoder's captions (report 003 Q2-2): one PNG per image, a panel per word.

Which images: the configured test sample ids (``attention_ids``), then the test images with the
lowest and highest CLIPScore when the prediction lines carry a per-sample ``clipscore`` (a run with
``--clipscore``); without either, the first ``attention_images`` test images. Each is decoded
greedily, then the decoder reruns on its caption returning cross-attention weights (it runs eager
attention); a word's map is
its tokens' cross-attention summed over every decoder block and head (report 003 sums over blocks),
restricted to the patch tokens, upsampled bilinearly onto the image and drawn over it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def choose(samples: list, lines: list[dict], ids: tuple[str, ...], count: int) -> list[tuple[Any, str]]:
    """(sample, why) pairs: the configured ids, then the lowest / highest CLIPScore or the first ``count``."""
    by_id = {s.id: s for s in samples}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise ValueError(f"clip-decoder: attention_ids {unknown} are not test sample ids (e.g. {samples[0].id!r})")
    chosen = [(by_id[i], "chosen") for i in ids]
    scored = [r for r in lines if isinstance(r.get("clipscore"), (int, float)) and r.get("id") in by_id]
    if scored:
        low = min(scored, key=lambda r: r["clipscore"])
        high = max(scored, key=lambda r: r["clipscore"])
        chosen += [
            (by_id[low["id"]], f"lowest CLIPScore {low['clipscore']:.4f}"),
            (by_id[high["id"]], f"highest CLIPScore {high['clipscore']:.4f}"),
        ]
    elif not chosen:
        chosen = [(s, "first test images") for s in samples[:count]]
    seen, out = set(), []
    for sample, why in chosen:
        if sample.id not in seen:
            seen.add(sample.id)
            out.append((sample, why))
    return out


def word_maps(model: Any, batch: Any, steps: int) -> list[tuple[list[str], torch.Tensor]]:
    """Per image: its greedy caption's words and their maps [words, grid, grid] over the patch tokens."""
    with torch.no_grad():
        states = model.encode(batch)
        sequences = model.generate(states, 1, steps)
        # generate() returns no cross-attention for a decoder-only model; one teacher-forced pass over
        # the greedy sequence computes the same attention (causal: position t sees what step t saw).
        out = model.decoder(input_ids=sequences, encoder_hidden_states=states, output_attentions=True)
    tokens = states.shape[1]
    grid = math.isqrt(tokens)  # class / register tokens first, then grid x grid patches
    first_patch = tokens - grid * grid
    # cross_attentions: per block [B, heads, positions, tokens]; position t chose token t + 1.
    per_step = torch.stack(out.cross_attentions).sum(dim=(0, 2))  # [B, positions, tokens]
    results = []
    for row, maps in zip(sequences, per_step):
        ids = row[1:].tolist()
        words: list[str] = []
        sums: list[torch.Tensor] = []
        for t, token in enumerate(ids):
            if token == model.tokenizer.eos_id:
                break
            text = model.tokenizer.decode(ids[: t + 1])
            count = len(text.split())
            if count == 0:
                continue
            patch = maps[t, first_patch:].reshape(grid, grid)
            if count > len(words):  # the token starts a new word
                words.append("")
                sums.append(torch.zeros_like(patch))
            words[-1] = text.split()[-1]
            sums[-1] = sums[-1] + patch
        results.append((words, torch.stack(sums) if sums else torch.zeros(0, grid, grid)))
    return results


def _picture(path: str, size: int) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").resize((size, size))


def draw(picture: Any, words: list[str], maps: torch.Tensor, title: str, file: Path) -> None:
    """One figure: the image, then a panel per word with its map upsampled over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    size = picture.size[0]
    panels = len(words) + 1
    cols = min(panels, 6)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title("image", fontsize=7)
    if len(words):
        up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        for ax, word, heat in zip(list(axes.flat)[1:], words, up):
            heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-8)
            ax.imshow(picture)
            ax.imshow(np.asarray(heat), cmap="jet", alpha=0.5)
            ax.set_title(word, fontsize=7)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    file.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=60)
    plt.close(fig)
    # A 256-colour palette keeps a figure of a dozen panels to tens of kilobytes.
    with Image.open(buffer) as rendered:
        rendered.convert("RGB").quantize(256).save(file, optimize=True)


def attention_figures(model: Any, samples: list, lines: list[dict], batch_of: Callable[[list], Any], out: Path) -> list:
    """The model's ``figures``: write the PNGs under ``out``; [{"title", "file"}] with files relative to ``out``."""
    cfg = model.cfg
    chosen = choose(samples, lines, tuple(cfg.attention_ids), cfg.attention_images)
    if not chosen:
        return []
    batch = batch_of([s for s, _ in chosen])
    made = []
    for (sample, why), (words, maps) in zip(chosen, word_maps(model, batch, cfg.greedy_steps)):
        name = f"attention-{''.join(c if c.isalnum() or c in '-_' else '_' for c in sample.id)}.png"
        caption = " ".join(words)
        title = f"{sample.id} ({why}): {caption}"
        draw(_picture(sample.image, model.image_size), words, maps, title, out / name)
        made.append({"title": f"Cross-attention, {sample.id} ({why})", "file": name})
    return made
