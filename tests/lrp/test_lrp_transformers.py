"""LRP (AttnLRP) on stock Hugging Face ``transformers`` classes, tiny random configs, nothing
downloaded: BERT, RoBERTa, GPT-2, Llama and Mixtral (a mixture of experts) sequence classifiers
(token ids and an attention mask with padding), GPT-2's causal LM head (a (position, token)
target), and ViT on pixels.

Every model: the relevance is finite and per token ([B, T]) or per pixel; padded tokens get
exactly none (masked keys get softmax weight 0, and right padding comes after every token a
causal model reads); a padded row equals that sequence alone; the model is left as found.

Conservation. With every bias, position / token-type embedding and class token zeroed and
LRP-0 (no stabilisers) in float64, every rule conserves relevance except AttnLRP's softmax,
whose absorbed relevance the engine reports (``_gradient_ops.LEDGER``): so
``sum R + absorbed == f_target`` to rounding (measured 1e-15 relative). With real biases and
the default epsilon (float32) the table (``pytest -s``) prints ``|sum R - f| / |f|``: biases,
position embeddings and softmaxes absorb their share by design.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import real_models
import torch
from models import assert_same_state, model_state
from torch import nn

from fastxai.lrp import Composite, UnsupportedLayerError, lrp, rules
from fastxai.lrp._gradient_ops import LEDGER
from fastxai.lrp._linear import LINEAR_TYPES

LRP_0 = Composite([(LINEAR_TYPES, rules.Epsilon(0.0))], stabilizer=0.0)
CLASSES = 3


@dataclass
class Case:
    name: str
    build: Callable[[Any], nn.Module]
    pad: int | None  # the pad token id (None: pixels)
    softmaxes: int = 2  # per forward pass
    exact: Callable[[nn.Module], None] | None = None  # prepares the float64 model of the conservation check


def _bert(tr: Any) -> nn.Module:
    config = tr.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, num_labels=CLASSES)  # fmt: skip
    return tr.BertForSequenceClassification(config)


def _roberta(tr: Any) -> nn.Module:
    config = tr.RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, num_labels=CLASSES, pad_token_id=1,
                              max_position_embeddings=24)  # fmt: skip
    return tr.RobertaForSequenceClassification(config)


def _gpt2(tr: Any) -> nn.Module:
    config = tr.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=16, num_labels=CLASSES,
                           pad_token_id=0, bos_token_id=2, eos_token_id=2)  # fmt: skip
    return tr.GPT2ForSequenceClassification(config)


def _llama(tr: Any) -> nn.Module:
    config = tr.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=64, num_labels=CLASSES, pad_token_id=0,
                            bos_token_id=2, eos_token_id=2, max_position_embeddings=16)  # fmt: skip
    return tr.LlamaForSequenceClassification(config)


def _mixtral(tr: Any) -> nn.Module:
    """A mixture of experts: the router's top-2 weights divided by their sum (a normaliser, a
    constant of the pass), the experts as grouped matmuls; one more softmax per layer (the router,
    which Mixtral runs in float32 also in a float64 model: conserved to about 3e-10)."""
    config = tr.MixtralConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=64, num_labels=CLASSES, pad_token_id=0,
                              bos_token_id=2, eos_token_id=2, max_position_embeddings=16, num_local_experts=4,
                              num_experts_per_tok=2)  # fmt: skip
    return tr.MixtralForSequenceClassification(config)


def _eager_experts(model: nn.Module) -> None:
    """Mixtral's experts as a loop of F.linear and index_add_: torch's grouped matmul (the default)
    has no float64 kernel on the CPU."""
    model.config._experts_implementation = "eager"


def _vit(tr: Any) -> nn.Module:
    config = tr.ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, num_labels=CLASSES)  # fmt: skip
    return tr.ViTForImageClassification(config)


CASES = [Case("bert", _bert, 0), Case("roberta", _roberta, 1), Case("gpt2", _gpt2, 0),
         Case("llama", _llama, 0), Case("mixtral", _mixtral, 0, softmaxes=4, exact=_eager_experts),
         Case("vit", _vit, None)]  # fmt: skip
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    """Prints, after the module, each model's figures (``pytest -s``)."""
    yield
    if not RESULTS:
        return
    columns = {"ms": "ms/call", "forward": "forward ms", "biased": "|sum R - f|/|f| biases",
               "raw": "zeroed, LRP-0 f64", "ledger": "+ softmax ledger"}  # fmt: skip
    print("\n\nLRP gradient engine on transformers (tiny configs, batch 2, CPU)")
    print(f"{'model':10s}" + "".join(f" {title:>23s}" for title in columns.values()))
    for name, row in RESULTS.items():
        cells = [row.get(key, float("nan")) for key in columns]
        print(f"{name:10s}" + "".join(f" {v:23.1f}" if i < 2 else f" {v:23.2e}" for i, v in enumerate(cells)))


def _model(case: Case) -> nn.Module:
    torch.manual_seed(0)
    model = case.build(real_models.transformers())
    with torch.no_grad():  # unit-scale activations (the init's std 0.02 gives logits of 1e-3)
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, parameter[0].numel() ** -0.5)
    return model.eval()


def _inputs(case: Case) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    if case.pad is None:
        return torch.randn(2, 3, 16, 16, generator=generator), {}
    ids = torch.randint(3, 100, (2, 7), generator=generator)
    mask = torch.ones(2, 7, dtype=torch.long)
    ids[1, 5:], mask[1, 5:] = case.pad, 0
    return ids, {"attention_mask": mask}


def _logits(model: nn.Module, x: torch.Tensor, kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(x, **kwargs).logits


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_runs_respects_padding_and_leaves_the_model(case: Case) -> None:
    model = _model(case)
    x, kwargs = _inputs(case)
    before = model_state(model)
    relevance = lrp(model, x, target=1, forward_kwargs=kwargs or None)
    assert_same_state(before, model_state(model))
    start = time.perf_counter()  # a second call: the first one pays one-time setup (mask utilities)
    lrp(model, x, target=1, forward_kwargs=kwargs or None)
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    _logits(model, x, kwargs)
    forward = time.perf_counter() - start
    assert relevance.shape == (x.shape if case.pad is None else (2, 7))
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    logit = _logits(model, x, kwargs)[:, 1].double()
    total = relevance.flatten(1).sum(1).double()
    RESULTS.setdefault(case.name, {}).update(
        ms=elapsed * 1e3, forward=forward * 1e3, biased=((total - logit).abs() / logit.abs()).max().item()
    )
    if case.pad is None:
        return
    assert (relevance[1, 5:] == 0).all()  # padded tokens
    alone = lrp(
        model, x[1:, :5], target=1, forward_kwargs={"attention_mask": kwargs["attention_mask"][1:, :5]}
    )
    scale = relevance[1].abs().max().item()
    torch.testing.assert_close(alone[0], relevance[1, :5], rtol=0, atol=1e-5 * scale)


def _zero_constants(model: nn.Module) -> None:
    """Biases, position and token-type embeddings, class tokens: constants that absorb relevance."""
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Embedding) and module is not embedding:
                module.weight.zero_()  # positions, token types
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "position_embeddings" in name or "cls_token" in name:
                parameter.zero_()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_conserves_relevance_but_what_the_softmaxes_absorb(case: Case) -> None:
    model = _model(case).double()
    if case.exact is not None:
        case.exact(model)
    _zero_constants(model)
    x, kwargs = _inputs(case)
    x = x.double() if case.pad is None else x
    ledger: list[torch.Tensor] = []
    token = LEDGER.set(ledger)
    try:
        relevance = lrp(model, x, target=2, composite=LRP_0, forward_kwargs=kwargs or None)
    finally:
        LEDGER.reset(token)
    logit = _logits(model, x, kwargs)[:, 2]
    total = relevance.flatten(1).sum(1)
    assert len(ledger) == case.softmaxes  # one per layer (and router)
    absorbed = sum(entry.view(len(x), -1).sum(1) for entry in ledger)  # the router's are per token
    assert isinstance(absorbed, torch.Tensor) and (absorbed.abs() > 1e-6 * logit.abs()).all()
    raw = ((total - logit).abs() / logit.abs()).max().item()
    error = ((total + absorbed - logit).abs() / logit.abs()).max().item()
    RESULTS.setdefault(case.name, {}).update(raw=raw, ledger=error)
    assert error < 1e-9


def test_causal_lm_target_is_a_position_and_a_token() -> None:
    """GPT2LMHeadModel [B, T, V]: target (t, v) explains logits[b, t, v]; later tokens, which a
    causal model does not read for position t, get none."""
    tr = real_models.transformers()
    torch.manual_seed(0)
    config = tr.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=16,
                           bos_token_id=2, eos_token_id=2)  # fmt: skip
    model = tr.GPT2LMHeadModel(config).eval().double()
    _zero_constants(model)
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    ledger: list[torch.Tensor] = []
    token = LEDGER.set(ledger)
    try:
        relevance = lrp(model, ids, target=(3, 7), composite=LRP_0)
    finally:
        LEDGER.reset(token)
    assert relevance.shape == (2, 6)
    assert (relevance[:, 4:] == 0).all() and (relevance[:, :4] != 0).all()
    logit = _logits(model, ids, {})[:, 3, 7]
    torch.testing.assert_close(relevance.sum(1) + sum(ledger), logit, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="tuple"):
        lrp(model, ids)  # no predicted class for [B, T, V]
    with pytest.raises(ValueError, match="target index 1"):
        lrp(model, ids, target=(3, 50))


def test_the_traced_engine_names_the_line_it_cannot_trace() -> None:
    model = _model(CASES[-1])
    x, _ = _inputs(CASES[-1])
    with pytest.raises(
        UnsupportedLayerError, match=r"could not be traced.*transformers.*\.py:\d+.*engine='gradient'"
    ):
        lrp(model, x, target=1, engine="fx")
