"""The shared VQA building blocks: fusion head, question encoder, loss, predictions, freezing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqabench.layers import (
    FusionHead,
    Normalize,
    QuestionEncoder,
    answer_loss,
    freeze,
    fusion_head_parameters,
    keep_frozen_in_eval,
    predict_answers,
    state_digest,
)


@pytest.mark.parametrize(
    "image_dim, text_dim, answers, expected",
    [
        # Report 000: g_txt = Linear(768 -> 512); MLP 2304 -> 512 -> 18.
        (512, 768, 18, (768 * 512 + 512) + (2304 * 512 + 512) + (512 * 18 + 18)),
        # CLIP: 512-d image and text embeddings, fused 4 * 512 = 2048 wide.
        (512, 512, 18, (512 * 512 + 512) + (2048 * 512 + 512) + (512 * 18 + 18)),
    ],
)
def test_fusion_head_parameter_count(image_dim, text_dim, answers, expected):
    head = FusionHead(image_dim, text_dim, answers)
    assert sum(p.numel() for p in head.parameters()) == expected == fusion_head_parameters(image_dim, text_dim, answers)
    assert head.mlp[0].in_features == 3 * image_dim + text_dim


def test_fusion_head_builds_z_from_product_and_absolute_difference():
    torch.manual_seed(0)
    head = FusionHead(image_dim=4, text_dim=3, num_answers=5, hidden=8).eval()
    f_img, f_txt = torch.randn(2, 4), torch.randn(2, 3)
    seen = {}
    head.mlp[0].register_forward_hook(lambda module, args, out: seen.update(z=args[0]))
    logits = head(f_img, f_txt)
    g_txt = head.project_text(f_txt)
    assert torch.allclose(seen["z"], torch.cat([f_img, f_txt, f_img * g_txt, (f_img - g_txt).abs()], dim=1))
    assert logits.shape == (2, 5)


class CountingEncoder(nn.Module):
    """A toy text encoder: one learned vector per character count, recording every call."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(64, 4)
        self.calls: list[list[str]] = []


def embed_lengths(encoder: CountingEncoder, texts: list[str], device: torch.device) -> torch.Tensor:
    encoder.calls.append(list(texts))
    return encoder.table(torch.tensor([len(t) for t in texts], device=device))


def test_question_encoder_encodes_each_distinct_question_once_and_maps_back():
    encoder = CountingEncoder()
    questions = ["what color?", "how many?", "what color?", "is it left?", "how many?"]
    out = QuestionEncoder(encoder, embed_lengths, dim=4)(questions)
    assert encoder.calls == [["what color?", "how many?", "is it left?"]]
    assert out.shape == (5, 4)
    expected = encoder.table(torch.tensor([len(q) for q in questions]))
    assert torch.equal(out, expected)


def test_question_encoder_memoises_a_frozen_encoder_but_not_a_trainable_one():
    frozen = freeze(CountingEncoder())
    wrapper = QuestionEncoder(frozen, embed_lengths, dim=4)
    wrapper(["a?", "bb?"])
    out = wrapper(["bb?", "ccc?", "a?"])
    assert frozen.calls == [["a?", "bb?"], ["ccc?"]]
    assert torch.equal(out, frozen.table(torch.tensor([3, 4, 2])))

    live = CountingEncoder()
    wrapper = QuestionEncoder(live, embed_lengths, dim=4)
    wrapper(["a?"])
    wrapper(["a?"]).sum().backward()
    assert live.calls == [["a?"], ["a?"]]
    assert live.table.weight.grad is not None


def test_question_encoder_memo_is_bounded():
    frozen = freeze(CountingEncoder())
    wrapper = QuestionEncoder(frozen, embed_lengths, dim=4, memo_size=2)
    wrapper(["a", "bb"])
    out = wrapper(["a", "ccc"])  # over the bound: the memo restarts, the batch is still complete
    assert len(wrapper._memo) == 1
    assert torch.equal(out, frozen.table(torch.tensor([1, 3])))


def test_answer_loss_ignores_out_of_vocabulary_labels_and_smooths():
    logits = torch.randn(4, 6, requires_grad=True)
    labels = torch.tensor([1, -1, 5, -1])
    loss = answer_loss(logits, labels, label_smoothing=0.05)
    expected = F.cross_entropy(logits[[0, 2]], labels[[0, 2]], label_smoothing=0.05)
    assert torch.allclose(loss, expected)
    (got,) = torch.autograd.grad(loss, logits)
    (want,) = torch.autograd.grad(expected, logits)
    assert torch.allclose(got, want) and got[[1, 3]].abs().sum() == 0
    assert answer_loss(logits, labels, 0.0) != loss


def test_answer_loss_of_an_all_unknown_batch_is_zero_and_backpropagates():
    logits = torch.randn(3, 6, requires_grad=True)
    loss = answer_loss(logits, torch.full((3,), -1), 0.05)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(3, 6))


def test_predict_answers_gives_argmax_answer_and_softmax_confidence():
    logits = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    out = predict_answers(logits, ["red", "blue", "yes"])
    assert [o["answer"] for o in out] == ["blue", "red"]
    assert out[0]["confidence"] == pytest.approx(torch.softmax(logits[0], 0)[1].item())
    assert all(isinstance(o["confidence"], float) for o in out)


def test_keep_frozen_in_eval_stops_frozen_batchnorm_but_not_the_head_dropout():
    model = nn.Sequential(
        freeze(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))),
        nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)),
    )
    model.train()
    keep_frozen_in_eval(model)
    assert not model[0].training and not model[0][1].training
    assert model[1].training and model[1][1].training


def test_normalize_uses_the_given_statistics():
    norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.allclose(norm(torch.full((1, 3, 2, 2), 0.75)), torch.ones(1, 3, 2, 2))
    assert not norm.state_dict()  # statistics are not checkpointed


def test_state_digest_follows_the_weights():
    layer = nn.Linear(3, 3)
    before = state_digest(layer)
    assert state_digest(layer) == before
    with torch.no_grad():
        layer.weight[0, 0] += 1
    assert state_digest(layer) != before
    assert state_digest(Normalize((0.5,), (0.2,))) != state_digest(Normalize((0.5,), (0.3,)))
