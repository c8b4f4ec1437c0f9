"""Which prompt tokens made a causal language model produce a continuation: per generated token.

For a prompt ``p`` [B, T_in] and a continuation ``c`` [B, T_out] (given, as generated or as
wanted: teacher forcing), the score of output step ``j`` is the log-probability of token
``c[:, j]`` at its position of the concatenated sequence ``[p, c]``:

    f_j = log_softmax(model([p, c]).logits[:, T_in + j - 1])[c[:, j]]

and ``explain_generation`` attributes every ``f_j`` to the prompt tokens' input embeddings,
summed over the embedding dimension: [B, T_out, T_in]. All T_out steps of all B prompts are one
batch of the gradient methods (each example repeated T_out times, row ``b * T_out + j`` for the
score ``f_j`` of example ``b``), so the model batches of Integrated Gradients hold the path
steps of several output steps and prompts together, within ``chunk_size``.

Each row needs one position's log-probability, so the log-softmax runs on that position's
logits only: the row's position and token travel with it as per-example model arguments
(repeated to the path points like an attention mask), and ``_TokenLogProb`` picks the row
``logits[n, position]`` [V] before ``log_softmax``: the work and the memory kept for the
backward grow with B * T_out * V, not B * T_out * T * V. A Hugging Face model that takes
``logits_to_keep`` computes the logits of the last T_out + 1 positions only.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from fastxai import _compile, _layer, _model, _precision, _scheduling
from fastxai._model import Model
from fastxai._output import SelectOutput, output_tensor
from fastxai.attribution.gradient import input_x_gradient, saliency
from fastxai.attribution.integrated_gradients import integrated_gradients

METHODS = ("integrated_gradients", "saliency", "input_x_gradient")


_POSITION, _TOKEN = "_fastxai_position", "_fastxai_token"
"""The per-row arguments ``_TokenLogProb`` takes off before calling the model."""


class _TokenLogProb(SelectOutput):
    """``model`` scoring each row's own continuation token: ``log_softmax(logits[n, p_n])[c_n]``
    as [N, 1], for ``p_n``, ``c_n`` given per row (``_POSITION``, ``_TOKEN`` [N]), every
    ``p_n >= first``. Keeps the model's module names and training flags (``SelectOutput``).
    ``upcast`` (the model under autocast): the picked logits go to the log-softmax in float32."""

    def __init__(self, model: Any, first: int, upcast: bool = False) -> None:
        super().__init__(model, output_tensor)
        self.first, self.upcast = first, upcast

    def forward(self, ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        position, token = kwargs.pop(_POSITION), kwargs.pop(_TOKEN)
        logits = output_tensor(self.model(ids, *args, **kwargs))
        if logits.dim() != 3:
            raise ValueError(
                f"a causal language model returns logits [batch, tokens, vocab], got {tuple(logits.shape)}"
            )
        skipped = ids.shape[1] - logits.shape[1]  # leading positions left out (``logits_to_keep``)
        if skipped < 0 or skipped > self.first:
            raise ValueError(
                f"the model returned logits for {logits.shape[1]} of {ids.shape[1]} positions: the "
                "continuation's positions are missing"
            )
        rows = torch.arange(logits.shape[0], device=logits.device)
        picked = logits[rows, position - skipped]  # [N, V]: the one position each row scores
        if self.upcast:  # ``dtype=``: a bf16 log-softmax would keep 8 bits of a log-probability
            picked = picked.to(_precision.accumulator_dtype(picked.dtype))
        return torch.log_softmax(picked, dim=-1).gather(1, token.view(-1, 1))


def _keeps_logits(model: Any) -> bool:
    """Whether ``model``'s forward takes Hugging Face's ``logits_to_keep`` (the last k positions)."""
    forward = getattr(model, "forward", None) if isinstance(model, nn.Module) else None
    try:
        return forward is not None and "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


def _check_ids(ids: object, name: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of token ids [batch, tokens], got {type(ids).__name__}")
    if not _layer.is_integer(ids):
        raise TypeError(f"{name} must hold integer token ids, got {ids.dtype}")
    if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"{name} must be [batch, tokens] with both >= 1, got shape {tuple(ids.shape)}")
    return ids


def _check_mask(attention_mask: object, prompts: torch.Tensor) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor [batch, T_in], got {type(attention_mask).__name__}")
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise TypeError(f"attention_mask must hold 0/1 integers or bools, got {attention_mask.dtype}")
    if attention_mask.shape != prompts.shape:
        raise ValueError(
            f"attention_mask must have the prompts' shape {tuple(prompts.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(device=prompts.device, dtype=torch.long)
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 and 1")
    if bool((mask.sum(1) == 0).any()):
        raise ValueError("attention_mask masks every token of a prompt")
    return mask


def _check_baselines(baselines: object, layer: nn.Module) -> None:
    """A number, a token id (an int) or one embedding vector [D]: the same for every position,
    so it needs no rows of its own (per-example baselines are not taken)."""
    if isinstance(baselines, bool) or not isinstance(baselines, (int, float, torch.Tensor)):
        raise TypeError(
            f"baselines must be a number, a token id or a tensor [D], got {type(baselines).__name__}"
        )
    if isinstance(baselines, torch.Tensor):
        if not baselines.is_floating_point() or baselines.dim() != 1:
            raise ValueError(
                f"baselines as a tensor must be one float embedding vector [D], got {baselines.dtype} "
                f"{tuple(baselines.shape)}; give a token id as an int"
            )
        if isinstance(layer, nn.Embedding) and baselines.shape[0] != layer.embedding_dim:
            raise ValueError(
                f"baselines must have the embedding size {layer.embedding_dim}, got {baselines.shape[0]}"
            )
        if not _model.all_finite(baselines):
            raise ValueError("baselines contain NaN or infinity")
    elif isinstance(baselines, float) and not math.isfinite(baselines):
        raise ValueError(f"baselines must be finite, got {baselines}")
    elif (
        isinstance(baselines, int)
        and isinstance(layer, nn.Embedding)
        and not 0 <= baselines < layer.num_embeddings
    ):
        raise ValueError(f"baselines as a token id must be in [0, {layer.num_embeddings}), got {baselines}")


def explain_generation(
    model: Model,
    prompts: torch.Tensor,
    continuations: torch.Tensor,
    method: str = "integrated_gradients",
    *,
    attention_mask: torch.Tensor | None = None,
    baselines: float | int | torch.Tensor = 0.0,
    n_steps: int = 50,
    integration: str = "gausslegendre",
    layer: object = None,
    forward_kwargs: dict | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Attributions of prompt tokens to each continuation token's log-probability: [B, T_out, T_in].

    ``model``: a causal language model (a Hugging Face ``...ForCausalLM`` / ``GPT2LMHeadModel``,
    or any model returning logits [B, T, V] or a ``ModelOutput`` holding them) called as
    ``model(ids, attention_mask=..., position_ids=...)`` on ``ids = [prompts, continuations]``.
    Row ``[b, j]`` explains ``f_j = log p(c[b, j] | p[b], c[b, :j])`` (teacher forcing: the
    log-softmax of the logits at position ``T_in + j - 1``) at the input embedding (``layer``,
    default ``model.get_input_embeddings()``), summed over its dimension:

    - ``"integrated_gradients"`` (Sundararajan et al. 2017): ``(e - e') * integral grad f_j``
      along the straight path from the baseline embeddings ``e'`` of the *whole* sequence;
      ``baselines``: 0.0 (default, the zero embedding, Captum's default), a number, one
      embedding vector [D], or a token id (an int: the pad or eos id), the same at every
      position. ``n_steps`` points of the rule ``integration`` (as ``integrated_gradients``'s
      ``method``).
    - ``"saliency"`` (Simonyan et al. 2014): ``sum_d |d f_j / d e|``.
    - ``"input_x_gradient"`` (Shrikumar et al. 2016): ``sum_d e * d f_j / d e``.

    The continuation tokens' own embeddings also get attributions (the path moves them too, as
    in Captum's ``LLMGradientAttribution``); they are dropped: only the prompt's T_in columns
    are returned. Causality makes row ``j`` independent of ``c[:, j+1:]``.
    ``attention_mask`` [B, T_in] (1 real, 0 pad; left or right padding): the padding is moved to
    the left of the prompt (so the continuation follows the last real token), the continuation
    is unmasked, ``position_ids`` are counted over real tokens (``cumsum(mask) - 1``, as
    ``generate`` does), and padded positions get 0, in the caller's order.
    ``forward_kwargs``: further keyword arguments to the model. ``chunk_size``: rows (example x
    step x path point) per model batch. ``dtype=torch.bfloat16`` (or ``torch.float16``): every
    model call runs under autocast in that dtype, as in the method's own ``dtype``
    (``fastxai._precision``): the path points at the embedding in it, the log-softmax of the
    picked logits and the sums in float32, the result float32.

    >>> out = gpt2.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    >>> a = fastxai.explain_generation(gpt2, ids, out[:, ids.shape[1]:], attention_mask=mask)
    >>> a.shape   # [B, 8, T_in]: a[b, j, i], prompt token i's share in generated token j
    """
    model = _compile.original(_model.check_model(model))
    prompts = _check_ids(prompts, "prompts")
    continuations = _check_ids(continuations, "continuations")
    if continuations.shape[0] != prompts.shape[0]:
        raise ValueError(
            f"continuations must have the prompts' batch size {prompts.shape[0]}, "
            f"got {continuations.shape[0]}"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "integrated_gradients" and (not isinstance(baselines, float) or baselines != 0.0):
        raise ValueError(f"baselines is only used by method='integrated_gradients', not {method!r}")
    mask = _check_mask(attention_mask, prompts)
    _precision.check_dtype(dtype, prompts.device)
    kwargs = _layer.check_forward_kwargs(forward_kwargs)
    if "attention_mask" in kwargs:
        raise ValueError("give the prompts' mask as attention_mask=, not in forward_kwargs")
    if mask is not None and "position_ids" in kwargs:
        raise ValueError(
            "with attention_mask, position_ids are computed from it: leave them out of forward_kwargs"
        )
    chunk_size = _scheduling.check_chunk_size(chunk_size)
    if layer is None:
        layer = _layer.input_embedding(model)
        if layer is None:
            raise ValueError(
                "the model has no input embedding (get_input_embeddings or nn.Embedding): give layer="
            )
    layer = _layer.resolve_layer(model, layer)
    if isinstance(layer, nn.Embedding):  # an id outside the vocabulary would fail inside the model
        for name, ids in (("prompts", prompts), ("continuations", continuations)):
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= layer.num_embeddings:
                raise ValueError(
                    f"{name} must hold token ids in [0, {layer.num_embeddings}), "
                    f"got values in [{low}, {high}]"
                )

    _check_baselines(baselines, layer)

    batch, prompt_len = prompts.shape
    order = None
    if mask is not None:  # padding anywhere moves to the left, so the last prompt position is a real token
        order = torch.sort(mask, dim=1, stable=True).indices
        prompts, mask = prompts.gather(1, order), mask.gather(1, order)
    steps = continuations.shape[1]
    continuations = continuations.to(prompts.device)
    ids = torch.cat([prompts, continuations], dim=1)
    rows = ids.repeat_interleave(steps, dim=0)  # row b * T_out + j: example b, output step j
    positions = torch.arange(prompt_len - 1, prompt_len - 1 + steps, device=ids.device).repeat(batch)
    kwargs = {  # tensors with one row per example follow their example into its T_out rows
        key: value.repeat_interleave(steps, dim=0)
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch
        else value
        for key, value in kwargs.items()
    }
    if mask is not None:
        full = torch.cat([mask, torch.ones_like(continuations, dtype=torch.long)], dim=1)
        kwargs["attention_mask"] = full.repeat_interleave(steps, dim=0)
        kwargs["position_ids"] = (full.cumsum(1) - 1).clamp(min=0).repeat_interleave(steps, dim=0)
    if "logits_to_keep" not in kwargs and _keeps_logits(model):
        kwargs["logits_to_keep"] = steps + 1  # positions T_in - 1 .. T_in + T_out - 1
    # each row's position and token: [B * T_out] per-row arguments, repeated to its path points
    kwargs[_POSITION], kwargs[_TOKEN] = positions, continuations.reshape(-1)
    log_probs = _TokenLogProb(model, prompt_len - 1, upcast=dtype is not None)
    target = torch.zeros_like(positions)  # the one score of each row

    common: dict[str, Any] = {
        "layer": layer, "forward_kwargs": kwargs, "chunk_size": chunk_size, "dtype": dtype,
    }  # fmt: skip
    if method == "integrated_gradients":
        result = integrated_gradients(
            log_probs, rows, baselines=baselines, target=target, n_steps=n_steps, method=integration, **common
        )
        assert isinstance(result, torch.Tensor)
    elif method == "saliency":
        result = saliency(log_probs, rows, target=target, **common)
    else:
        result = input_x_gradient(log_probs, rows, target=target, **common)
    per_token = result.sum(-1)[:, :prompt_len].reshape(batch, steps, prompt_len)
    if mask is not None and order is not None:  # padded positions get 0; back to the caller's order
        per_token = per_token * mask.unsqueeze(1).to(per_token.dtype)
        per_token = torch.zeros_like(per_token).scatter_(
            2, order.unsqueeze(1).expand_as(per_token), per_token
        )
    return per_token
