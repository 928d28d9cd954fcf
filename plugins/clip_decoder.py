"""CLIP-decoder captioning (report 003 Q2): frozen CLIP ViT tokens -> Linear -> GPT-2 with cross-attention.

The image encoder is a CLIP ViT, frozen; its whole token sequence (class token and patches, not
the pooled embedding) is the cacheable stem, so epochs run from cached tokens. A Linear layer
projects the tokens to the decoder's width, and a GPT-2 decoder whose blocks carry
cross-attention (transformers ``GPT2LMHeadModel`` with ``add_cross_attention=True``, called with
``encoder_hidden_states``) writes the caption. The decoder is frozen except for its
cross-attention (with its layer norms), which trains in every variant with the projection, plus
one PEFT module (``clip_decoder_peft``):

=============================  ==========================================================
``clip-decoder``               cross-attention + projection only
``clip-decoder-adapter-64``    + bottleneck adapters (m=64), ``-adapter-128`` (m=128)
``clip-decoder-prefix-32``     + key/value prefixes of 32 positions, ``-prefix-64``
``clip-decoder-lora-4``        + peft LoRA r=4 on the self-attention and MLP Conv1D, ``-lora-8``, ``-lora-32``
=============================  ==========================================================

Paper profile (report 003): timm ``vit_large_patch14_clip_224`` (257 tokens of 1024), Linear
1024 -> 768, GPT-2 small from its pretrained weights (cross-attention new), 10 epochs of AdamW at
1e-4 with weight decay 1e-5, batch 64, cosine annealing without warm-up, captions of at most 128
tokens, cross-entropy; GPT-2's BPE. Offline without cached weights it stops before any work with
the weights message.

Quick profile: the Mini-CLEVR CLIP's visual tower (``pretrain:clip/mini-clevr``: 65 tokens of 128)
and, in place of GPT-2, the small language model ``pretrain:caption-lm/mini-clevr`` pretrained
here on Mini-CLEVR captions, text only (``clip_decoder_lm``), frozen as GPT-2 is. Its vocabulary
is open_clip's BPE restricted to the ids of its corpus (saved beside it; text maps back through
the same BPE), because a 49k-way softmax would dominate a 128-wide decoder on CPU.

Decoding runs through transformers ``generate()`` with the projected image tokens passed once as
``encoder_hidden_states`` (generate repeats them per beam: the encoder runs once per image),
batched over images; beam search scores hypotheses with transformers' length normalisation
(``length_penalty``). The default prediction is greedy with 50 steps (report 003's Greedy table);
``eval_decodings`` names the others evaluated on test (``beam5`` = 5 beams, 30 steps).
``figures`` draws cross-attention maps per generated word (report 003 Q2-2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from vqabench_plugins.caption_text import CaptionTokenizer, decoder_tokenizer, load_caption_tokenizer
from vqabench_plugins.clip_decoder_lm import SPEC as CAPTION_LM
from vqabench_plugins.clip_decoder_peft import PEFT_KINDS, add_adapters, add_lora, add_prefix
from vqabench_plugins.clip_pretrain import MINI_CLEVR_CLIP

from vqabench.config import TrainConfig
from vqabench.hookspecs import hookimpl
from vqabench.layers import Normalize, keep_frozen_in_eval, state_digest, trainable
from vqabench.model import Stem, TaskModel
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.captioning import CaptionBatch
from vqabench.weights import WeightsUnavailable, clip_image_size, load_open_clip, load_pretrained, load_timm

BEAMS = ("beam3", "beam5", "beam10", "beam20")
# The quick profile loads models pretrained here rather than random ones (vqabench.weights.QUICK_FIX).
QUICK_FIX = "run with `--profile quick` (the Mini-CLEVR CLIP and a caption LM, both pretrained here)"


def _recipe() -> TrainConfig:
    # Report 003: Adam(W) lr 1e-4, weight decay 1e-5, batch 64, 10 epochs, cosine annealing without
    # warm-up, plain cross-entropy. Its flip / rotation / grayscale: vqabench has the flip ("hflip",
    # dropped on datasets where it changes the caption, as on Mini-CLEVR's left/right captions).
    return TrainConfig(
        epochs=10,
        batch_size=64,
        warmup_epochs=0.0,
        schedule="cosine",
        label_smoothing=0.0,
        weight_decay=1e-5,
        lrs={"projection": 1e-4, "cross_attention": 1e-4, "peft": 1e-4},
        augment=("hflip",),
        best_metric="cider",
        # One checkpoint per selection metric, each evaluated on test (report 003's first table).
        keep_best=("val_loss", "cider", "clipscore"),
    )


@dataclass(frozen=True)
class CLIPDecoderConfig:
    """Report 003 Q2 defaults: ViT-L/14 CLIP (timm) -> Linear(1024, 768) -> GPT-2 small, cross-attention."""

    encoder: str = "timm"  # "timm" (a timm CLIP ViT) or "open_clip" (an open_clip model's visual tower)
    encoder_arch: str = "vit_large_patch14_clip_224"  # timm name, or the open_clip architecture
    encoder_kwargs: Mapping[str, Any] = field(default_factory=dict)  # timm create_model kwargs (a smaller ViT)
    checkpoint: str = ""  # timm: a local weights file ("" = timm's source); open_clip: a tag or checkpoint file
    model_cfg: Mapping[str, Any] = field(default_factory=dict)  # open_clip config overrides
    pretrained: bool = True  # False: random encoder and decoder (architecture tests, ``@random``)
    decoder: str = "gpt2"  # transformers name or directory, or a caption-lm artefact file
    decoder_cfg: Mapping[str, Any] = field(default_factory=dict)  # GPT2Config fields when built random
    tokenizer: str = "gpt2"  # caption_text source when the decoder has no vocabulary of its own
    peft: str = "none"  # one of clip_decoder_peft.PEFT_KINDS
    adapter_size: int = 64
    prefix_length: int = 32
    lora_r: int = 8
    lora_alpha: int = 16
    max_length: int = 128  # caption tokens with begin and end (report: 128, prefix not included)
    greedy_steps: int = 50  # the default prediction: greedy, 50 steps
    beam_steps: int = 30  # steps of the beam decodings in ``eval_decodings``
    length_penalty: float = 1.0  # transformers' beam score: log-probability / length ** length_penalty
    eval_decodings: tuple[str, ...] = ("beam5",)  # "beamK" / "greedy", optionally "-STEPS"
    # Attention maps of test captions (report 003 Q2-2 draws them for its chosen setting only: here
    # clip-decoder-lora-8), of these test sample ids besides the lowest and highest CLIPScore ones.
    attention_maps: bool = False
    attention_ids: tuple[str, ...] = ()
    attention_images: int = 3  # drawn when no ids are given and no CLIPScore ranks the test images
    train: TrainConfig = field(default_factory=_recipe)

    def __post_init__(self) -> None:
        if self.peft not in PEFT_KINDS:
            raise ValueError(f"clip-decoder: peft={self.peft!r}; choose one of {', '.join(PEFT_KINDS)}")
        if self.encoder not in ("timm", "open_clip"):
            raise ValueError(f"clip-decoder: encoder={self.encoder!r}; choose timm or open_clip")
        for name in self.eval_decodings:
            parse_decoding(name, self)


def parse_decoding(name: str, cfg: CLIPDecoderConfig) -> tuple[int, int]:
    """``greedy[-STEPS]`` or ``beamK[-STEPS]`` -> (beams, steps); greedy defaults to ``greedy_steps``, beams to
    ``beam_steps``."""
    kind, _, steps = name.partition("-")
    try:
        if kind == "greedy":
            beams = 1
        elif kind.startswith("beam"):
            beams = int(kind[4:])
        else:
            raise ValueError(kind)
        count = int(steps) if steps else (cfg.greedy_steps if beams == 1 else cfg.beam_steps)
    except ValueError:
        raise ValueError(
            f"clip-decoder: decoding {name!r}: expected greedy[-STEPS] or beamK[-STEPS], e.g. beam5"
        ) from None
    if beams < 1 or count < 1:
        raise ValueError(f"clip-decoder: decoding {name!r} needs >= 1 beam and >= 1 step")
    return beams, count


class TimmTokens(nn.Module):
    """A timm ViT's token sequence (``forward_features``: class token and patches, after the final norm)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)


class OpenClipTokens(nn.Module):
    """An open_clip ViT's token sequence: its forward up to ``ln_post``, before pooling and projection."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_post(self.visual.transformer(self.visual._embeds(x)))


class CLIPDecoder(TaskModel):
    """Captioning: frozen ViT tokens -> Linear -> GPT-2 decoder with cross-attention."""

    def __init__(
        self,
        cfg: CLIPDecoderConfig,
        encoder: nn.Module,
        width: int,
        normalize: Normalize,
        decoder: nn.Module,
        tokenizer: CaptionTokenizer,
        image_size: int,
        weights: str,
    ):
        super().__init__()
        self.cfg = cfg
        self.image_size = image_size
        self.weights = weights
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.encoder = encoder.requires_grad_(False)
        self.decoder = decoder.requires_grad_(False)
        self.projection = nn.Linear(width, decoder.config.n_embd)
        self.peft_params = self._add_peft(cfg)
        for block in self.decoder.transformer.h:
            block.crossattention.requires_grad_(True)
            block.ln_cross_attn.requires_grad_(True)
        self.default_variant = f"greedy-{cfg.greedy_steps}"
        self._decoding = parse_decoding(self.default_variant, cfg)
        keep_frozen_in_eval(self)

    def _add_peft(self, cfg: CLIPDecoderConfig) -> list[nn.Parameter]:
        if cfg.peft == "adapter":
            return add_adapters(self.decoder, cfg.adapter_size)
        if cfg.peft == "prefix":
            return add_prefix(self.decoder, cfg.prefix_length)
        if cfg.peft == "lora":
            return add_lora(self.decoder, cfg.lora_r, cfg.lora_alpha)
        return []

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        cross = [
            p for b in self.decoder.transformer.h for m in (b.crossattention, b.ln_cross_attn) for p in m.parameters()
        ]
        groups = {"projection": list(self.projection.parameters()), "cross_attention": cross}
        if self.peft_params:
            groups["peft"] = list(self.peft_params)
        return groups

    def train(self, mode: bool = True) -> CLIPDecoder:
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    # --- image path ----------------------------------------------------------------------------

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalize(images))

    def image_stem(self) -> Stem | None:
        if trainable(self.encoder.parameters()):
            return None
        key = f"clip-decoder/{state_digest(self.normalize, self.encoder)}"
        return Stem(name="CLIP ViT tokens (all)", key=key, encode=self._tokens)

    def encode(self, batch: CaptionBatch) -> torch.Tensor:
        """Projected image tokens [B, T, decoder width]: the cached stem output when the batch has it."""
        tokens = batch.image_features if batch.image_features is not None else self._tokens(batch.images)
        return self.projection(tokens.to(self.projection.weight.dtype))

    # --- training ------------------------------------------------------------------------------

    def loss(self, batch: CaptionBatch) -> torch.Tensor:
        # One reference per image per step, drawn with the engine-seeded torch generator.
        picks = torch.randint(0, 1 << 30, (len(batch.captions),)).tolist()
        texts = [refs[k % len(refs)] for refs, k in zip(batch.captions, picks)]
        ids, mask = self.tokenizer.encode(texts, self.cfg.max_length)
        device = self.projection.weight.device
        ids, mask = ids.to(device), mask.to(device)
        out = self.decoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=self.encode(batch),
            labels=ids.masked_fill(~mask, -100),  # padding is not predicted
        )
        return out.loss

    # --- decoding ------------------------------------------------------------------------------

    def eval_variants(self) -> tuple[str, ...]:
        return tuple(self.cfg.eval_decodings)

    def use_variant(self, name: str | None) -> None:
        self._decoding = parse_decoding(name or self.default_variant, self.cfg)

    def generate(self, states: torch.Tensor, beams: int, steps: int, **extra: Any) -> Any:
        """transformers ``generate`` from the begin token, conditioned on projected image tokens ``states``."""
        from transformers import GenerationConfig

        start = torch.full((states.shape[0], 1), self.tokenizer.bos_id, dtype=torch.long, device=states.device)
        # Beam settings only with beams: generate warns about them on greedy decoding.
        beam = {"length_penalty": self.cfg.length_penalty, "early_stopping": True} if beams > 1 else {}
        config = GenerationConfig(
            max_new_tokens=steps,
            num_beams=beams,
            do_sample=False,
            **beam,
            bos_token_id=self.tokenizer.bos_id,
            eos_token_id=self.tokenizer.eos_id,
            pad_token_id=self.tokenizer.pad_id,
        )
        return self.decoder.generate(
            input_ids=start,
            attention_mask=torch.ones_like(start),
            encoder_hidden_states=states,
            generation_config=config,
            **extra,
        )

    def predict(self, batch: CaptionBatch) -> list[dict[str, Any]]:
        beams, steps = self._decoding
        with torch.no_grad():
            out = self.generate(self.encode(batch), beams, steps)
        return [{"caption": self.tokenizer.decode(row[1:].tolist())} for row in out]

    # --- attention maps (report 003 Q2-2) -----------------------------------------------------

    def figures(self, samples: list, lines: list[dict], batch_of: Callable[[list], Any], out: Path) -> list[dict]:
        """Cross-attention maps of greedy captions for the chosen test images and the lowest and
        highest CLIPScore ones: one PNG per image, one panel per word. Returns [{title, file}]."""
        from vqabench_plugins.clip_decoder_maps import attention_figures

        if not self.cfg.attention_maps:
            return []
        return attention_figures(self, samples, lines, batch_of, Path(out))


# --- building ------------------------------------------------------------------------------------


def _encoder(cfg: CLIPDecoderConfig, load: bool) -> tuple[nn.Module, int, Normalize, int, str]:
    """The frozen token encoder, its token width, normalisation, input size and weights description."""
    fix = f"{QUICK_FIX}, or `--set checkpoint=FILE`"
    if cfg.encoder == "timm":
        vit, weights = load_timm(
            cfg.encoder_arch,
            pretrained=cfg.pretrained and load,
            checkpoint=cfg.checkpoint,
            fix=fix,
            **cfg.encoder_kwargs,
        )
        # The weights' own normalisation (OpenAI CLIP's statistics for the CLIP ViTs).
        data = vit.pretrained_cfg
        size = int(vit.patch_embed.img_size[0])
        return TimmTokens(vit), vit.num_features, Normalize(data["mean"], data["std"]), size, weights
    clip, _, mean, std, weights = load_open_clip(
        cfg.encoder_arch,
        pretrained=cfg.pretrained and load,
        checkpoint=cfg.checkpoint,
        model_cfg=cfg.model_cfg,
        fix=fix,
    )
    width = clip.visual.transformer.width
    return OpenClipTokens(clip.visual), width, Normalize(mean, std), clip_image_size(clip), weights


def _decoder(cfg: CLIPDecoderConfig, load: bool) -> tuple[nn.Module, CaptionTokenizer, str]:
    """GPT-2 with cross-attention: pretrained (cross-attention new) or from its config; its tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    source = Path(cfg.decoder).expanduser() if cfg.decoder else None
    # A caption-lm artefact names its model file; the model is the directory around it.
    directory = None if source is None else source.parent if source.is_file() else source if source.is_dir() else None
    if cfg.pretrained and load:
        if not cfg.decoder:
            raise WeightsUnavailable("clip-decoder: decoder is empty; name a GPT-2 (gpt2) or a directory")
        tokenizer = decoder_tokenizer(directory, cfg.tokenizer) if directory else None
        from transformers.utils import logging as hf_logging

        # Its load report would list the new cross-attention weights as missing: expected here.
        level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            decoder = load_pretrained(
                GPT2LMHeadModel,
                str(directory) if directory else cfg.decoder,
                f"GPT-2 decoder {cfg.decoder!r}",
                f"{QUICK_FIX}, or `--set decoder=DIR` (a GPT-2 save_pretrained directory)",
                add_cross_attention=True,
                attn_implementation="eager",
            )
        finally:
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()
        if tokenizer is None:
            tokenizer = load_caption_tokenizer(cfg.tokenizer)
        from vqabench.pretrain import describe

        what = describe(source) if source is not None and source.is_file() else None
        if what is None:
            what = f"GPT-2 {directory.name}" if directory else f"{cfg.decoder} (pretrained)"
        return decoder, tokenizer, what
    tokenizer = decoder_tokenizer(directory, cfg.tokenizer) if directory else load_caption_tokenizer(cfg.tokenizer)
    fields = {
        "vocab_size": tokenizer.vocab_size,
        "n_positions": cfg.max_length,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        **cfg.decoder_cfg,
        "add_cross_attention": True,
    }
    decoder = GPT2LMHeadModel(GPT2Config(**fields, attn_implementation="eager"))
    return decoder, tokenizer, f"random init (GPT-2, {decoder.config.n_layer} x {decoder.config.n_embd})"


def _check_tokens(decoder: nn.Module, tokenizer: CaptionTokenizer, cfg: CLIPDecoderConfig) -> None:
    if tokenizer.vocab_size > decoder.config.vocab_size:
        raise ValueError(
            f"clip-decoder: tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but decoder {cfg.decoder!r} "
            f"only {decoder.config.vocab_size}; set tokenizer= to the decoder's own"
        )
    if cfg.max_length > decoder.config.n_positions:
        raise ValueError(
            f"clip-decoder: max_length={cfg.max_length} exceeds the decoder's {decoder.config.n_positions} positions; "
            f"set --set max_length={decoder.config.n_positions}"
        )


def build_clip_decoder(cfg: CLIPDecoderConfig, *, load_weights: bool = True) -> CLIPDecoder:
    """The model for ``cfg``; raises ``WeightsUnavailable`` before any work when weights are missing.

    ``load_weights=False`` builds the configured architecture random-initialised but frozen and
    adapted as if pretrained (tests of the paper architecture without a download).
    """
    if cfg.pretrained and load_weights:
        # Both weights are checked before either model is built: the decoder first (a name lookup).
        decoder, tokenizer, decoder_weights = _decoder(cfg, True)
        encoder, width, normalize, size, encoder_weights = _encoder(cfg, True)
    else:
        encoder, width, normalize, size, encoder_weights = _encoder(cfg, False)
        decoder, tokenizer, decoder_weights = _decoder(cfg, False)
    _check_tokens(decoder, tokenizer, cfg)
    weights = describe_weights(cfg, encoder_weights, decoder_weights, load_weights)
    return CLIPDecoder(cfg, encoder, width, normalize, decoder, tokenizer, size, weights)


def describe_weights(cfg: CLIPDecoderConfig, encoder: str, decoder: str, loaded: bool) -> str:
    """The leaderboard's weights string: what was loaded and what trained."""
    peft = {
        "none": "",
        "adapter": f", adapters m={cfg.adapter_size}",
        "prefix": f", prefix length {cfg.prefix_length}",
        "lora": f", LoRA r={cfg.lora_r}",
    }[cfg.peft]
    state = " (weights not loaded)" if cfg.pretrained and not loaded else ""
    trained = f"cross-attention, projection{peft} trained"
    return f"CLIP ViT {encoder}{state} (frozen) + decoder {decoder}{state} (frozen); {trained}"


def build(config: CLIPDecoderConfig, data: TaskData, device: Any) -> CLIPDecoder:
    """``ModelSpec.build``: the captioning model on ``device``."""
    return build_clip_decoder(config).to(device)


# The quick profile: the Mini-CLEVR CLIP's visual tower and the caption LM pretrained here (both
# frozen, as ViT-L/14 and GPT-2 are in the report); 64 px. Greedy captions need about 12 epochs of
# the 800 training images at 2e-3 to beat the best single training caption (the baseline) in every
# variant (after 8, three of five variants were still below it). Validation decodes all 100 quick val
# images (48 picked noisy checkpoints) every 4 epochs, so that the caption scorers (Java) do not dominate.
QUICK = {
    "encoder": "open_clip",
    "encoder_arch": "ViT-B-32",
    "checkpoint": "pretrain:clip/mini-clevr",
    "model_cfg": MINI_CLEVR_CLIP,
    "decoder": "pretrain:caption-lm/mini-clevr",
    "tokenizer": "open_clip",
    "decoder_cfg": {"n_layer": 2, "n_embd": 128, "n_head": 4},  # the caption LM's shape, for ``@random``
    "max_length": 64,
    "train.epochs": 12,
    "train.batch_size": 32,
    "train.lrs": {"projection": 2e-3, "cross_attention": 2e-3, "peft": 2e-3},
    "train.val_every": 4,
    "train.val_limit": 100,
}
PROFILES = {"quick": QUICK, "paper": {}}

VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "clip-decoder": ("Cross Attention + Encoder Projection Only", "cross-attention and projection", {}),
    "clip-decoder-adapter-64": ("Adapter, m=64", "adapters m=64", {"peft": "adapter", "adapter_size": 64}),
    "clip-decoder-adapter-128": ("Adapter, m=128", "adapters m=128", {"peft": "adapter", "adapter_size": 128}),
    "clip-decoder-prefix-32": ("Prefix, length 32", "prefix length 32", {"peft": "prefix", "prefix_length": 32}),
    "clip-decoder-prefix-64": ("Prefix, length 64", "prefix length 64", {"peft": "prefix", "prefix_length": 64}),
    "clip-decoder-lora-4": ("LoRA, r=4", "LoRA r=4", {"peft": "lora", "lora_r": 4}),
    # Report 003's chosen setting: its decoding table and attention maps.
    "clip-decoder-lora-8": (
        "LoRA, r=8",
        "LoRA r=8",
        {"peft": "lora", "lora_r": 8, "eval_decodings": BEAMS, "attention_maps": True},
    ),
    "clip-decoder-lora-32": ("LoRA, r=32", "LoRA r=32", {"peft": "lora", "lora_r": 32}),
}


def _config_for(name: str, changes: Mapping[str, Any]) -> type:
    """A config class whose defaults carry one variant's PEFT settings (profiles stay overrides)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(CLIPDecoderConfig)
    return dataclasses.make_dataclass(
        f"CLIPDecoderConfig_{name.replace('-', '_')}",
        [(k, hints[k], dataclasses.field(default=v)) for k, v in changes.items()],
        bases=(CLIPDecoderConfig,),
        frozen=True,
        namespace={"__module__": __name__},
    )


@hookimpl
def register_models(register):
    for name, (display, what, changes) in VARIANTS.items():
        register(
            ModelSpec(
                name=name,
                family="clip-decoder",
                display_name=f"CLIP-Decoder ({display})",
                task_kinds=(TaskKind.CAPTIONING,),
                config_cls=_config_for(name, changes) if changes else CLIPDecoderConfig,
                build=build,
                profiles=PROFILES,
                tags={"random": {"pretrained": False, "checkpoint": "", "decoder": ""}},
                description=(
                    f"frozen CLIP ViT-L/14 tokens -> Linear -> GPT-2 with cross-attention; {what} trained "
                    "(report 003 Q2)"
                ),
            )
        )


@hookimpl
def register_pretrainers(register):
    register(CAPTION_LM)
