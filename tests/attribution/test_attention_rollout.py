"""Attention rollout and attention flow: hand-computed oracles (identity attention, the matrix
product, max-flow against a brute-force minimum cut), and the weights read from real models
(torchvision's ViT by hooks, Hugging Face ViT and BERT with padding)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import real_models
import torch
from models import assert_same_state, model_state
from torch import nn

import fastxai as fx
from fastxai.attribution._max_flow import max_flow
from fastxai.attribution.attention_rollout import (
    HEAD_FUSIONS,
    attentions_of,
    flow,
    residual_attention,
    rollout,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_attentions(layers: int = 3, batch: int = 2, heads: int = 2, tokens: int = 4, seed: int = 0):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, heads, tokens, tokens, generator=generator, dtype=torch.float64).softmax(-1)
        for _ in range(layers)
    ]


def test_identity_attention_rolls_out_to_the_identity() -> None:
    eye = torch.eye(5, dtype=torch.float64).expand(2, 3, 5, 5)
    for fusion in HEAD_FUSIONS:
        torch.testing.assert_close(
            rollout([eye, eye, eye], fusion), torch.eye(5, dtype=torch.float64).expand(2, 5, 5)
        )


def test_rollout_is_the_product_of_the_residual_weights() -> None:
    attentions = _random_attentions()
    eye = torch.eye(4, dtype=torch.float64)
    w = [0.5 * a.mean(1) + 0.5 * eye for a in attentions]
    torch.testing.assert_close(rollout(attentions), w[2] @ w[1] @ w[0])
    torch.testing.assert_close(rollout(attentions).sum(-1), torch.ones(2, 4, dtype=torch.float64))
    w_max = [(a.amax(1) + eye) / (a.amax(1) + eye).sum(-1, keepdim=True) for a in attentions]
    torch.testing.assert_close(rollout(attentions, "max"), w_max[2] @ w_max[1] @ w_max[0])


def test_discard_ratio_zeroes_the_smallest_fused_weights() -> None:
    attention = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.05, 0.7]]], dtype=torch.float64)
    attention = attention.unsqueeze(0)  # [1, 1, 3, 3]
    kept = torch.tensor(
        [[0.5, 0.3, 0.0], [0.0, 0.6, 0.3], [0.25, 0.0, 0.7]], dtype=torch.float64
    )  # 3 of 9 gone
    augmented = kept + torch.eye(3, dtype=torch.float64)
    expected = augmented / augmented.sum(-1, keepdim=True)
    torch.testing.assert_close(rollout([attention], discard_ratio=0.34)[0], expected)


def _min_cut(capacity: np.ndarray, source: int, sink: int) -> float:
    inner = [v for v in range(len(capacity)) if v not in (source, sink)]
    best = np.inf
    for bits in itertools.product((0, 1), repeat=len(inner)):
        side = [source] + [v for v, b in zip(inner, bits, strict=True) if b]
        outside = [v for v in range(len(capacity)) if v not in side]
        best = min(best, capacity[np.ix_(side, outside)].sum())
    return float(best)


def test_max_flow_is_the_minimum_cut_on_small_graphs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        nodes = int(rng.integers(2, 8))
        capacity = rng.random((nodes, nodes)) * (rng.random((nodes, nodes)) < 0.6)
        np.fill_diagonal(capacity, 0)
        assert max_flow(capacity, 0, nodes - 1) == pytest.approx(_min_cut(capacity, 0, nodes - 1), abs=1e-12)


def test_attention_flow_on_a_hand_made_graph() -> None:
    """Two layers of three tokens: nodes (l, i) -> 3 l + i; flows checked against the minimum cut."""
    attentions = _random_attentions(layers=2, batch=1, heads=1, tokens=3, seed=3)
    weights = [residual_attention(a)[0] for a in attentions]
    capacity = np.zeros((9, 9))
    for layer, w in enumerate(weights):
        capacity[3 * layer : 3 * layer + 3, 3 * layer + 3 : 3 * layer + 6] = w.T.numpy()
    expected = [[_min_cut(capacity, source, 6 + sink) for source in range(3)] for sink in range(3)]
    torch.testing.assert_close(flow(attentions, token=None)[0], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(flow(attentions, token=2)[0], torch.tensor(expected[2], dtype=torch.float64))
    # one layer: the only path is the edge itself
    single = flow(attentions[:1], token=None)[0]
    torch.testing.assert_close(single, weights[0])


def test_refusals() -> None:
    attentions = _random_attentions(layers=1)
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(attentions, "median")
    with pytest.raises(ValueError, match="discard_ratio"):
        rollout(attentions, discard_ratio=1.0)
    with pytest.raises(ValueError, match="token"):
        flow(attentions, token=4)
    with pytest.raises(ValueError, match=r"\[B, H, N, N\]"):
        rollout([torch.rand(2, 4, 4)])
    with pytest.raises(ValueError, match="first layer"):
        rollout([torch.rand(2, 1, 4, 4), torch.rand(2, 1, 5, 5)])
    with pytest.raises(TypeError, match=r"nn\.MultiheadAttention"):
        fx.attention_rollout(nn.Linear(4, 2), torch.randn(2, 4))


# ---- weights read from real models ---------------------------------------------------------------


def _torchvision_vit(layers: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return real_models.torchvision().models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )


def test_torchvision_vit_weights_are_the_softmax_of_its_projections() -> None:
    model = _torchvision_vit().train()
    before = model_state(model)
    x = torch.randn(2, 3, 32, 32)
    attentions = attentions_of(model, x)
    assert_same_state(before, model_state(model))
    assert [tuple(a.shape) for a in attentions] == [(2, 2, 17, 17)] * 2
    block = model.encoder.layers[0]
    kept = {}
    handle = block.ln_1.register_forward_hook(lambda m, i, o: kept.setdefault("x", o))
    model.eval()(x)
    handle.remove()
    q, k, _ = (kept["x"] @ block.self_attention.in_proj_weight.T + block.self_attention.in_proj_bias).chunk(
        3, -1
    )
    q, k = (t.view(2, 17, 2, 8).transpose(1, 2) for t in (q, k))
    torch.testing.assert_close(attentions[0], (q @ k.transpose(-1, -2) / 8**0.5).softmax(-1).detach())
    heat = fx.attention_rollout(model, x, grid=True)
    torch.testing.assert_close(heat, rollout(attentions)[:, 0, 1:].reshape(2, 1, 4, 4))
    flows = fx.attention_flow(model, x[:1])
    assert flows.shape == (1, 17) and bool((flows >= 0).all()) and bool((flows <= 1 + 1e-6).all())


def _hf(name: str, config_name: str, **config: object) -> nn.Module:
    transformers = real_models.transformers()
    torch.manual_seed(0)
    return getattr(transformers, name)(getattr(transformers, config_name)(**config))


def test_hugging_face_vit_runs_eager_for_the_call_only() -> None:
    model = _hf(
        "ViTForImageClassification",
        "ViTConfig",
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    implementation = model.config._attn_implementation
    x = torch.randn(2, 3, 16, 16)
    heat = fx.attention_rollout(model, x, grid=True)
    assert model.config._attn_implementation == implementation
    assert heat.shape == (2, 1, 4, 4) and bool(torch.isfinite(heat).all())
    eager = _hf(
        "ViTForImageClassification",
        "ViTConfig",
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        attn_implementation="eager",
    ).eval()
    with torch.no_grad():
        expected = rollout(eager(x, output_attentions=True).attentions)[:, 0, 1:].reshape(2, 1, 4, 4)
    torch.testing.assert_close(heat, expected)


def test_bert_padding_gets_nothing_and_changes_nothing() -> None:
    model = _hf(
        "BertForSequenceClassification",
        "BertConfig",
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    ids = torch.randint(1, 30, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    for method in (fx.attention_rollout, fx.attention_flow):
        padded = method(model, ids, attention_mask=mask)
        alone = method(model, ids[1:, :4], attention_mask=mask[1:, :4])
        assert padded.shape == (2, 6) and bool((padded[1, 4:] == 0).all())
        torch.testing.assert_close(padded[1, :4], alone[0])
    with pytest.raises(ValueError, match="grid=True needs image inputs"):
        fx.attention_rollout(model, ids, grid=True)


def _timm_vit_with_registers() -> nn.Module:
    """timm's ViT, 4 register tokens after the class token, 4x4 patches: 21 tokens (which a
    class token and a 5x4 grid would also read)."""
    torch.manual_seed(0)
    return real_models.timm().create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, reg_tokens=4, depth=2,
        embed_dim=16, num_heads=2, num_classes=5,
    )  # fmt: skip


def test_timm_vit_weights_are_the_softmax_of_its_projections() -> None:
    model = _timm_vit_with_registers().train()
    before, fused = model_state(model), [block.attn.fused_attn for block in model.blocks]
    x = torch.randn(2, 3, 32, 32)
    attentions = attentions_of(model, x)
    assert_same_state(before, model_state(model))
    assert [block.attn.fused_attn for block in model.blocks] == fused  # put back after the call
    assert [tuple(a.shape) for a in attentions] == [(2, 2, 21, 21)] * 2
    block = model.blocks[1]
    kept = {}
    handle = block.norm1.register_forward_hook(lambda m, i, o: kept.setdefault("x", o))
    model.eval()(x)
    handle.remove()
    q, k, _ = block.attn.qkv(kept["x"]).reshape(2, 21, 3, 2, 8).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(attentions[1], (q @ k.transpose(-1, -2) * 8**-0.5).softmax(-1).detach())
    heat = fx.attention_rollout(model, x, grid=True)
    # the grid is the 16 patch tokens after the 5 the model declares (num_prefix_tokens)
    torch.testing.assert_close(heat, rollout(attentions)[:, 0, 5:].reshape(2, 1, 4, 4))


def test_timm_windowed_attention_is_refused_by_name() -> None:
    torch.manual_seed(0)
    model = real_models.timm().create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4, embed_dim=16,
        depths=(1, 1), num_heads=(1, 1), num_classes=5,
    )  # fmt: skip
    before = model_state(model)
    fused = [block.attn.fused_attn for stage in model.layers for block in stage.blocks]
    with pytest.raises(ValueError, match=r"WindowAttention.*global self-attention"):
        fx.attention_rollout(model, torch.randn(2, 3, 32, 32))
    assert_same_state(before, model_state(model))
    assert [block.attn.fused_attn for stage in model.layers for block in stage.blocks] == fused
