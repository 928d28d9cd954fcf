"""How the vqav2 plugin scales: a synthetic copy of full VQA v2 size, prepared and loaded in subprocesses.

``python -m vqabench_plugins.vqav2_bench DIR`` writes, in ``DIR/vqav2``, the four official JSON
files at full size (train2014: 443,757 questions on 82,783 images; val2014: 214,354 on 40,504; ten
answers each, with a long-tailed answer distribution) and one tiny JPEG per image (the same bytes
every time: the loader only lists them), each step in a fresh Python process:

- ``write``: the copy itself;
- ``prepare``: ``vqabench data prepare vqav2`` (checks everything, writes the index);
- ``load 1``, ``load 2``: the vqa TaskData (standard setup) from that index, twice;
- ``load paper``: the paper profile (report001 sample, vocabulary "all") from the index;
- ``load cold``: the vqa TaskData with an empty cache, so the load parses the files itself.

It prints, per step, the wall time inside the step and of its whole process (with the start of
Python and the imports), and the process's peak resident memory, as ``RUSAGE_CHILDREN`` reports it
to a fresh launcher that runs only that step (so no other step's memory is counted in). Targets:
prepare + first load under 2 minutes and 4 GB on 2 cores; later loads in seconds. ``DIR/vqav2`` and
the caches are deleted afterwards unless ``--keep`` is given; ``--scale 0.1`` writes a tenth.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN = (82_783, 443_757)  # (images, questions) of train2014
VAL = (40_504, 214_354)
QUESTION_TYPES = ("what is the", "what color is the", "how many", "is the", "is this", "are there", "what", "where")
WORDS = ("man", "dog", "table", "sign", "bus", "cat", "plate", "shirt", "train", "room", "sky", "woman", "pizza")
N_OTHER = 60_000  # distinct "other" answers drawn from a long tail


def _answer_table() -> list[str]:
    numbers = [str(n) for n in range(21)]
    return ["yes", "no", *numbers, *(f"{WORDS[i % len(WORDS)]} {i}" for i in range(N_OTHER))]


def _draw_answers(n: int, rng: np.random.Generator) -> np.ndarray:
    """Answer codes into ``_answer_table()``: yes/no 38%, numbers 12%, a Zipf tail for the rest."""
    kind = rng.random(n)
    codes = np.where(kind < 0.2, 0, 1)
    numbers = 2 + np.minimum(rng.geometric(0.45, n) - 1, 20)
    tail = 23 + (rng.zipf(1.08, n) - 1) % N_OTHER  # about 3,100 answers reach 9 at full size
    return np.where(kind < 0.38, codes, np.where(kind < 0.5, numbers, tail))


def _write_split(root: Path, split: str, images: int, questions: int, ids: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng([seed, 0 if split == "train2014" else 1])
    table = _answer_table()
    per_image = np.full(images, questions // images)
    per_image[: questions - per_image.sum()] += 1  # the remainder: one more question on the first images
    image_of = np.repeat(ids, per_image)
    k = np.arange(questions) - np.repeat(np.cumsum(per_image) - per_image, per_image)
    qids = image_of * 1000 + k
    mc = _draw_answers(questions, rng)
    # Ten answers: mostly the multiple-choice answer, the others drawn like it.
    human = np.where(rng.random((questions, 10)) < 0.7, mc[:, None], _draw_answers(questions * 10, rng).reshape(-1, 10))
    sure = rng.choice(3, (questions, 10), p=[0.8, 0.15, 0.05])
    qtype = rng.integers(0, len(QUESTION_TYPES), questions)
    noun = rng.integers(0, len(WORDS), questions)
    confidences = ("yes", "maybe", "no")
    q_out, a_out = [], []
    for i in range(questions):
        q_out.append(
            f'{{"image_id": {image_of[i]}, "question": "{QUESTION_TYPES[qtype[i]].capitalize()} {WORDS[noun[i]]} '
            f'in this picture?", "question_id": {qids[i]}}}'
        )
        answers = ", ".join(
            f'{{"answer": "{table[a]}", "answer_confidence": "{confidences[c]}", "answer_id": {j + 1}}}'
            for j, (a, c) in enumerate(zip(human[i].tolist(), sure[i].tolist()))
        )
        kind = "yes/no" if mc[i] < 2 else "number" if mc[i] < 23 else "other"
        a_out.append(
            f'{{"question_type": "{QUESTION_TYPES[qtype[i]]}", "multiple_choice_answer": "{table[mc[i]]}", '
            f'"answers": [{answers}], "image_id": {image_of[i]}, "answer_type": "{kind}", "question_id": {qids[i]}}}'
        )
    head = '{"info": {"version": "2.0"}, "license": {"name": "CC BY 4.0"}, "data_subtype": "' + split + '", '
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
        head + '"task_type": "Open-Ended", "data_type": "mscoco", "questions": [' + ", ".join(q_out) + "]}"
    )
    (root / f"v2_mscoco_{split}_annotations.json").write_text(
        head + '"data_type": "mscoco", "annotations": [' + ", ".join(a_out) + "]}"
    )
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    folder = root / split
    folder.mkdir(exist_ok=True)
    for image in ids.tolist():
        with open(folder / f"COCO_{split}_{image:012d}.jpg", "wb") as fh:
            fh.write(jpeg)


def write_full_size(root: Path, scale: float = 1.0, seed: int = 0) -> Path:
    """Write a synthetic VQA v2 of full size (times ``scale``) in the official layout; return ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sizes = [(max(1, round(i * scale)), max(1, round(q * scale))) for i, q in (TRAIN, VAL)]
    ids = np.random.default_rng(seed).choice(581_929, sizes[0][0] + sizes[1][0], replace=False) + 1
    _write_split(root, "train2014", *sizes[0], ids[: sizes[0][0]], seed)
    _write_split(root, "val2014", *sizes[1], ids[sizes[0][0] :], seed)
    return root


def _step(step: str, root: str, arg: str) -> None:
    """Run one step in this process; print one JSON line (its own wall time, what it loaded)."""
    start = time.perf_counter()
    detail = ""
    if step == "write":
        write_full_size(Path(root), float(arg))
    elif step == "prepare":
        os.environ["VQABENCH_CACHE"] = arg
        from vqabench_plugins.vqav2 import VQAv2Config, prepare

        prepare(VQAv2Config(), Path(root))
    else:
        from vqabench_plugins.vqav2 import VQAv2Config, load

        fields = {"setup": "report001", "vocab": "all"} if step == "paper" else {}
        data = load(VQAv2Config(root=root, **fields), "vqa", Path(arg))
        sizes = ", ".join(f"{k} {len(v):,}" for k, v in data.splits.items())
        detail = f"{sizes}; vocabulary {len(data.answer_vocab):,}"
    print(json.dumps({"wall_s": time.perf_counter() - start, "detail": detail}))


def _python(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "vqabench_plugins.vqav2_bench", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"vqav2 bench: {' '.join(args[:2])} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(step: str, root: str, arg: str) -> None:
    """Run one step in a child of this fresh, small process and print it with the child's peak memory.

    The peak is the child's alone: Linux carries a parent's resident high-water mark into a forked
    child, so the step must not be forked from a process that has grown (the one that wrote the copy).
    """
    start = time.perf_counter()
    result = _python("--step", step, root, arg)
    result["process_s"] = time.perf_counter() - start  # with the interpreter's start and imports
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vqabench_plugins.vqav2_bench", description="Measure vqav2 prepare and load at full size."
    )
    parser.add_argument("dir", type=Path, nargs="?", help="folder for the copy and its caches (~1.5 GB)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full size (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the copy and the caches")
    parser.add_argument("--step", nargs=3, metavar=("STEP", "ROOT", "ARG"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=3, metavar=("STEP", "ROOT", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step or args.measure:
        (_step if args.step else _measure)(*(args.step or args.measure))
        return 0
    if args.dir is None:
        parser.error("give the folder to write the copy in")
    root, warm, cold = args.dir / "vqav2", args.dir / "vqav2-cache", args.dir / "vqav2-cache-cold"
    steps = [("write", "write", str(args.scale)), ("prepare", "prepare", str(warm)), ("load 1", "load", str(warm))]
    steps += [("load 2", "load", str(warm)), ("load paper", "paper", str(warm)), ("load cold", "load", str(cold))]
    try:
        print(f"{'step':<11} {'in step s':>9} {'process s':>9} {'peak MB':>8}  data")
        for name, step, arg in steps:
            r = _python("--measure", step, str(root), arg)
            print(f"{name:<11} {r['wall_s']:>9.1f} {r['process_s']:>9.1f} {r['peak_mb']:>8.0f}  {r['detail']}")
    finally:
        if not args.keep:
            for path in (root, warm, cold):
                shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
