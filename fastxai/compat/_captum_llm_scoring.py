"""The log-probabilities of one continuation after many prompts, many prompts per forward pass:
the score ``LLMAttribution`` attributes, for every perturbed prompt at once.

For a prompt ``p`` (L token ids) and the continuation ``c`` (T ids), output step ``j`` scores

    s_j(p) = log softmax(model([p, c_<j]).logits[-1])[c_j]

(teacher forcing: the continuation is given, not sampled). Two ways to compute it, the same
numbers for a causal language model (float rounding apart):

- ``teacher_forcing=True``: one pass over ``[p, c]``; ``s_j`` is read at position ``L - 1 + j``
  (a causal model's logits there see only ``[p, c_<j]``). A Hugging Face model that takes
  ``logits_to_keep`` computes the last T + 1 positions' logits only.
- ``teacher_forcing=False``: T passes over the growing sequences ``[p, c_<j]``, reading the last
  position: right for any model, also one that is not causal (Captum's ``forward_in_tokens``).

Prompts of equal length (a token ablated to a baseline token keeps it) form one model batch
of up to ``rows_per_pass`` rows; prompts of other lengths form their own batches (no padding,
so no position-id or mask differences between a batch and a single prompt). With ``memo``
(only for a model without training-mode modules: dropout would make repeats differ), a prompt
already scored is not run again: Shapley sampling and KernelSHAP draw the same coalition many
times, and ablation scores the unperturbed prompt more than once.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fastxai._output import output_tensor

LOGIT_BUDGET = 1 << 26
"""Logit elements (rows x positions kept x vocabulary) per forward pass: 256 MiB in float32."""
TOKEN_BUDGET = 1 << 14
"""Token positions (rows x sequence length) per forward pass."""


def logits_of(output: Any) -> torch.Tensor:
    """The logits [N, S, V] of a model's output (``.logits``, or the first tensor). A 4-D
    ``[N, 1, S, V]`` (Llama 4's extra head dimension) is read at head 0, as Captum does."""
    logits = output_tensor(output)
    if logits.dim() == 4:
        logits = logits[:, 0]
    if logits.dim() != 3:
        raise ValueError(f"the model must return logits [batch, tokens, vocab], got {tuple(logits.shape)}")
    return logits


def is_causal_lm(model: object) -> bool:
    """Whether ``model`` is a Hugging Face causal language model (a class of transformers'
    ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``): its logits at a position see no later token."""
    if not type(model).__module__.startswith("transformers."):
        return False
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return False
    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return type(model).__name__ in names


def _parameters_of(model: object) -> set[str]:
    """The keyword names ``model``'s forward takes; ``{"**"}`` added when it takes ``**kwargs``."""
    forward = getattr(model, "forward", model)
    if not callable(forward):
        return {"**"}
    try:
        parameters = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return {"**"}
    names = {p.name for p in parameters}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        names.add("**")
    return names


def is_training(model: object) -> bool:
    return isinstance(model, nn.Module) and any(module.training for module in model.modules())


class ContinuationScorer:
    """``score(prompts)``: ``s_j`` (see the module doc) for a list of prompts, [R, T] float32.

    ``prompts`` holds token ids [L] (any lengths) or mappings of model inputs with
    ``input_ids`` [1, L] (extra inputs such as ``pixel_values``; scored one by one).
    """

    def __init__(
        self, model: Any, continuation: torch.Tensor, device: torch.device, *, teacher_forcing: bool
    ) -> None:
        self.model = model
        self.continuation = continuation.to(device=device, dtype=torch.long).reshape(-1)
        self.device = device
        self.teacher_forcing = teacher_forcing
        self.memo: dict[tuple[int, ...], torch.Tensor] | None = None if is_training(model) else {}
        names = _parameters_of(model)
        self.hugging_face = type(model).__module__.startswith("transformers.")
        self.takes_mask = "attention_mask" in names or "**" in names
        self.keeps_logits = "logits_to_keep" in names
        vocabulary = getattr(getattr(model, "config", None), "vocab_size", None)
        self.vocabulary = vocabulary if isinstance(vocabulary, int) and vocabulary > 0 else 32768

    def score(self, prompts: list[Any]) -> torch.Tensor:
        count = self.continuation.shape[0]
        result = torch.empty(len(prompts), count, device=self.device)
        pending: dict[int, list[tuple[int, torch.Tensor]]] = {}  # prompt length -> (row, ids)
        for row, prompt in enumerate(prompts):
            if isinstance(prompt, Mapping):
                result[row] = self._score_mapping(prompt)
                continue
            ids = prompt.reshape(-1).to(device=self.device, dtype=torch.long)
            known = None if self.memo is None else self.memo.get(tuple(ids.tolist()))
            if known is not None:
                result[row] = known
            else:
                pending.setdefault(ids.shape[0], []).append((row, ids))
        for length, items in pending.items():
            unique: dict[tuple[int, ...], list[int]] = {}  # equal prompts within the call, once
            for row, ids in items:
                unique.setdefault(tuple(ids.tolist()), []).append(row)
            keys = list(unique)
            step = self.rows_per_pass(length)
            for start in range(0, len(keys), step):
                chunk = keys[start : start + step]
                batch = torch.tensor(chunk, dtype=torch.long, device=self.device)
                scores = self._score_batch(batch)
                for key, value in zip(chunk, scores, strict=True):
                    result[unique[key]] = value
                    if self.memo is not None:
                        self.memo[key] = value
        return result

    def rows_per_pass(self, length: int) -> int:
        total = length + self.continuation.shape[0]
        kept = self.continuation.shape[0] + 1 if (self.teacher_forcing and self.keeps_logits) else total
        return max(1, min(TOKEN_BUDGET // total, LOGIT_BUDGET // (kept * self.vocabulary)))

    def _call(self, ids: torch.Tensor, extra: Mapping[str, Any], keep: int | None) -> torch.Tensor:
        kwargs = dict(extra)
        if self.takes_mask:
            kwargs["attention_mask"] = torch.ones_like(ids)
        if self.hugging_face:
            kwargs["use_cache"] = False  # one pass per sequence: no cache to build
        if keep is not None and self.keeps_logits:
            kwargs["logits_to_keep"] = keep
        return logits_of(self.model(ids, **kwargs))

    def _score_batch(self, prompts: torch.Tensor, extra: Mapping[str, Any] | None = None) -> torch.Tensor:
        """[G, L] prompts of one length -> [G, T] log-probabilities of the continuation."""
        extra = extra or {}
        rows, length = prompts.shape
        count = self.continuation.shape[0]
        tail = self.continuation.expand(rows, -1)
        with torch.no_grad():
            if self.teacher_forcing:
                logits = self._call(torch.cat([prompts, tail], dim=1), extra, count + 1)
                first = logits.shape[1] - (count + 1)  # position L - 1 in the logits kept
                if first < 0:
                    raise ValueError(
                        f"the model returned logits for {logits.shape[1]} positions of {length + count}"
                    )
                picked = logits[:, first : first + count].float().log_softmax(-1)
                return picked.gather(2, tail.unsqueeze(2)).squeeze(2)
            columns = []
            for j in range(count):
                logits = self._call(torch.cat([prompts, tail[:, :j]], dim=1), extra, 1)
                last = logits[:, -1].float().log_softmax(-1)
                columns.append(last.gather(1, tail[:, j : j + 1]))
            return torch.cat(columns, dim=1)

    def _score_mapping(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        if "input_ids" not in inputs:
            raise ValueError(f"a model input mapping must hold input_ids, got keys {sorted(inputs)}")
        extra = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
        ids = torch.as_tensor(inputs["input_ids"]).to(self.device).reshape(1, -1)
        return self._score_batch(ids, extra)[0]


__all__ = ["ContinuationScorer", "is_causal_lm", "is_training", "logits_of"]
