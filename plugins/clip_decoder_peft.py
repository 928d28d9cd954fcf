"""Parameter-efficient tuning of a GPT-2 decoder with cross-attention (report 003 Q2): adapters, prefixes, LoRA.

Each ``add_*`` function changes a ``GPT2LMHeadModel`` in place, after its weights are loaded and
frozen, and returns the new (trainable) parameters; ``peft_parameter_count`` gives their number by
formula (tests hold the two equal).

* LoRA: peft's ``LoraConfig`` on the Conv1D layers of every block's self-attention (``attn.c_attn``,
  ``attn.c_proj``) and MLP (``mlp.c_fc``, ``mlp.c_proj``); the cross-attention trains whole anyway.
  With r=4 / 8 this gives report 003's 29.73M / 30.32M trainable parameters on GPT-2 small.
* Adapters: a bottleneck (Linear d -> m, GELU, Linear m -> d, residual; Houlsby et al. 2019) after
  each block's self-attention output projection and after its MLP, the up-projection zero-initialised
  so that training starts from the pretrained decoder. Written here because the ``adapters`` library
  (1.3.0) requires transformers ~=4.57, not the transformers 5 vqabench runs on. Two adapters per
  block reproduce report 003's counts (31.51M for m=64, 33.88M for m=128).
* Prefixes: learned keys and values (``prefix_length`` per block and head) prepended to every
  self-attention (Li and Liang 2021). Written here because peft's prefix tuning hands its prefix to
  the model as ``past_key_values``, which GPT-2's ``generate`` with ``encoder_hidden_states``
  replaces by its own encoder-decoder cache in transformers 5 (it warns "Both `past_key_values` and
  `cache` are set ... ignoring"), so the prefix would train but be dropped when decoding. The prefix
  attends through a registered attention function (``PREFIX_ATTENTION``) that only the adapted
  self-attention modules use; it starts from the keys and values of real words (Li and Liang's
  initialisation). Report 003's prefix rows add 0.03M / 0.05M parameters, which is
  ``prefix_length`` x 768: one prefix of input embeddings, not per-layer keys and values; this
  module follows the method its name gives (per-layer keys and values: 0.59M / 1.18M on GPT-2 small).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

PEFT_KINDS = ("none", "adapter", "prefix", "lora")
LORA_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # self-attention and MLP of each block
PREFIX_ATTENTION = "vqabench_prefix"


class Adapter(nn.Module):
    """Bottleneck adapter: ``x + up(gelu(down(x)))``, identity at initialisation."""

    def __init__(self, width: int, size: int):
        super().__init__()
        self.down = nn.Linear(width, size)
        self.up = nn.Linear(size, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))


class WithAdapter(nn.Module):
    """A frozen sub-layer followed by an adapter on its output."""

    def __init__(self, inner: nn.Module, adapter: Adapter):
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.adapter(self.inner(*args, **kwargs))


def add_adapters(decoder: nn.Module, size: int) -> list[nn.Parameter]:
    """Adapters after every block's self-attention projection and MLP; their parameters."""
    width = decoder.config.n_embd
    params: list[nn.Parameter] = []
    for block in decoder.transformer.h:
        for parent, name in ((block.attn, "c_proj"), (block, "mlp")):
            adapter = Adapter(width, size)
            setattr(parent, name, WithAdapter(getattr(parent, name), adapter))
            params += list(adapter.parameters())
    return params


def _prefix_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """Eager attention over [prefix keys; keys]: every query may attend to every prefix position."""
    from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward

    batch, q_len, k_len = query.shape[0], query.shape[2], key.shape[2]
    prefix_k, prefix_v = (p.to(query.dtype).expand(batch, -1, -1, -1) for p in module.prefix.unbind(0))
    if attention_mask is None:  # no padding: the plain causal pattern (offset by cached positions)
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
        attention_mask = attention_mask[None, None]
    if attention_mask.dtype == torch.bool:
        blocked = torch.finfo(query.dtype).min
        attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~attention_mask, blocked
        )
    open_ = attention_mask.new_zeros(*attention_mask.shape[:-1], prefix_k.shape[2])
    mask = torch.cat([open_, attention_mask], dim=-1)
    return eager_attention_forward(
        module, query, torch.cat([prefix_k, key], 2), torch.cat([prefix_v, value], 2), mask, **kwargs
    )


def _register_prefix_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PREFIX_ATTENTION, _prefix_attention)


def add_prefix(decoder: nn.Module, length: int) -> list[nn.Parameter]:
    """Learned key/value prefixes of ``length`` positions in every block's self-attention; their parameters."""
    _register_prefix_attention()
    cfg = decoder.config
    initial = _real_word_states(decoder, length)
    params = []
    for block, (keys, values) in zip(decoder.transformer.h, initial):
        attn = block.attn
        # Keys and values per head: [2, 1, heads, length, head_dim].
        attn.prefix = nn.Parameter(torch.stack([keys, values]).clone())
        # Only these modules attend through the prefix function; cross-attention keeps the shared config.
        attn.config = copy.copy(cfg)
        attn.config._attn_implementation = PREFIX_ATTENTION
        params.append(attn.prefix)
    return params


def _real_word_states(decoder: nn.Module, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, the self-attention keys and values of ``length`` random vocabulary tokens.

    Li and Liang initialise prefixes with the activations of real words: near-zero random keys
    would instead draw attention away from the frozen model's own tokens (each prefix position
    gets a logit near 0), perturbing the pretrained decoder before any training.
    """
    cfg = decoder.config
    count = min(length, cfg.n_positions)
    ids = torch.randint(0, cfg.vocab_size, (1, count), generator=torch.Generator().manual_seed(0))
    was_training = decoder.training
    decoder.eval()
    with torch.no_grad():
        cache = decoder(input_ids=ids.to(decoder.device), use_cache=True).past_key_values
    decoder.train(was_training)
    cache = getattr(cache, "self_attention_cache", cache)
    repeat = -(-length // count)  # a prefix longer than the positions repeats them
    return [
        (layer.keys.repeat(1, 1, repeat, 1)[:, :, :length], layer.values.repeat(1, 1, repeat, 1)[:, :, :length])
        for layer in cache.layers
    ]


def lora_pattern() -> str:
    """peft ``target_modules`` regex (full module names): the self-attention and MLP Conv1D of every block."""
    targets = "|".join(t.replace(".", "\\.") for t in LORA_TARGETS)
    return f"transformer\\.h\\.\\d+\\.({targets})"


def add_lora(decoder: nn.Module, r: int, alpha: int, dropout: float = 0.0) -> list[nn.Parameter]:
    """peft LoRA on every block's self-attention and MLP Conv1D layers; the LoRA parameters.

    Raises when peft did not find all ``4 x n_layer`` target modules.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    # GPT-2's Conv1D stores weights as (in, out): fan_in_fan_out tells peft so.
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_pattern(), fan_in_fan_out=True)
    inject_adapter_in_model(config, decoder)
    adapted = [m for m in decoder.modules() if isinstance(m, LoraLayer)]
    expected = len(LORA_TARGETS) * decoder.config.n_layer
    if len(adapted) != expected:
        raise ValueError(f"clip-decoder: LoRA found {len(adapted)} of {expected} target modules {LORA_TARGETS}")
    return [p for n, p in decoder.named_parameters() if "lora_" in n]


def peft_parameter_count(kind: str, width: int, layers: int, heads: int, *, size: int, length: int, r: int) -> int:
    """Trainable parameters ``kind`` adds to a GPT-2 decoder of ``layers`` blocks of ``width`` (by formula)."""
    if kind == "adapter":  # two adapters per block: down (d*m + m) and up (m*d + d)
        return layers * 2 * (2 * width * size + size + width)
    if kind == "prefix":  # keys and values per block
        return layers * 2 * length * width
    if kind == "lora":  # A (r x in) and B (out x r) for c_attn d->3d, c_proj d->d, c_fc d->4d, mlp.c_proj 4d->d
        return layers * r * ((width + 3 * width) + (width + width) + (width + 4 * width) + (4 * width + width))
    return 0


def cross_attention_parameter_count(width: int, layers: int) -> int:
    """Cross-attention of GPT-2 blocks (q_attn, c_attn to keys/values, c_proj, ln_cross_attn) by formula."""
    return layers * ((width * width + width) + (width * 2 * width + 2 * width) + (width * width + width) + 2 * width)
