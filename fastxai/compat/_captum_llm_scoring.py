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

Prompts of a model batch (``rows_per_pass`` rows at most): for a causal model scored in one
pass, prompts of any lengths, each ``[p, c]`` right-padded to the longest (masked; a causal
position never sees a later one, and the positions ids are the unpadded ones, so nothing
changes); otherwise prompts of one length (a token ablated to a baseline token keeps it, a
template segment replaced by "" may not), other lengths in their own batches. With ``memo``
(only for a model without training-mode modules: dropout would make repeats differ), a prompt
already scored is not run again: Shapley sampling and KernelSHAP draw the same coalition many
times, and ablation scores the unperturbed prompt more than once.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, cast

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
        self,
        model: Any,
        continuation: torch.Tensor,
        device: torch.device,
        *,
        teacher_forcing: bool,
        causal: bool = False,
    ) -> None:
        self.model = model
        self.continuation = continuation.to(device=device, dtype=torch.long).reshape(-1)
        self.device = device
        self.teacher_forcing = teacher_forcing
        self.pad = teacher_forcing and causal  # right padding changes no causal position
        self.memo: dict[tuple[int, ...], torch.Tensor] | None = None if is_training(model) else {}
        names = _parameters_of(model)
        self.hugging_face = type(model).__module__.startswith("transformers.")
        self.takes_mask = "attention_mask" in names or "**" in names
        self.keeps_logits = "logits_to_keep" in names
        vocabulary = getattr(getattr(model, "config", None), "vocab_size", None)
        self.vocabulary = vocabulary if isinstance(vocabulary, int) and vocabulary > 0 else 32768

    def score(self, prompts: list[Any]) -> torch.Tensor:
        rows: list[torch.Tensor | None] = [None] * len(prompts)
        keys = _keys(prompts)
        pending: dict[tuple[int, ...], list[int]] = {}  # each distinct prompt once: its rows
        for row, (prompt, key) in enumerate(zip(prompts, keys, strict=True)):
            if key is None:
                rows[row] = self._score_mapping(prompt)
            elif self.memo is not None and key in self.memo:
                rows[row] = self.memo[key]
            else:
                pending.setdefault(key, []).append(row)
        groups: dict[int, list[tuple[int, ...]]] = {}  # one batch of any lengths when padding
        for key in sorted(pending, key=len):
            groups.setdefault(0 if self.pad else len(key), []).append(key)
        for group in groups.values():
            step = self.rows_per_pass(len(group[-1]))  # the group's longest prompt (sorted by length)
            for start in range(0, len(group), step):
                chunk = group[start : start + step]
                for key, value in zip(chunk, self._score_batch(chunk), strict=True):
                    for row in pending[key]:
                        rows[row] = value
                    if self.memo is not None:
                        self.memo[key] = value
        return torch.stack(cast(list[torch.Tensor], rows))  # every row is filled by now

    def rows_per_pass(self, length: int) -> int:
        total = length + self.continuation.shape[0]
        kept = self.continuation.shape[0] + 1 if (self.teacher_forcing and self.keeps_logits) else total
        return max(1, min(TOKEN_BUDGET // total, LOGIT_BUDGET // (kept * self.vocabulary)))

    def _call(
        self, ids: torch.Tensor, mask: torch.Tensor, extra: Mapping[str, Any], keep: int | None
    ) -> torch.Tensor:
        kwargs = dict(extra)
        if self.takes_mask:
            kwargs["attention_mask"] = mask
        if self.hugging_face:
            kwargs["use_cache"] = False  # one pass per sequence: no cache to build
        if keep is not None and self.keeps_logits:
            kwargs["logits_to_keep"] = keep
        return logits_of(self.model(ids, **kwargs))

    def _score_batch(
        self, prompts: list[tuple[int, ...]], extra: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        """Prompts' token ids (of one length unless ``pad``) -> [G, T] log-probabilities of the
        continuation. With ``pad``, the sequences ``[p_g, c]`` are right-padded to one length:
        a causal model's positions before the padding never see it."""
        extra = extra or {}
        rows, count = len(prompts), self.continuation.shape[0]
        longest, shortest = max(map(len, prompts)), min(map(len, prompts))
        padded = [list(prompt) + [0] * (longest + count - len(prompt)) for prompt in prompts]
        ids = torch.tensor(padded, dtype=torch.long, device=self.device)  # one copy to the device
        lengths = torch.tensor([len(prompt) for prompt in prompts], device=self.device)
        where = lengths.unsqueeze(1) + torch.arange(count, device=self.device)  # the continuation's
        ids.scatter_(1, where, self.continuation.expand(rows, -1))
        positions = torch.arange(longest + count, device=self.device)
        mask = (positions < (lengths + count).unsqueeze(1)).long()
        tail = self.continuation.expand(rows, -1)
        with torch.no_grad():
            if self.teacher_forcing:
                keep = longest - shortest + count + 1  # from position L_min - 1 to the end
                logits = self._call(ids, mask, extra, keep)
                offset = ids.shape[1] - logits.shape[1]  # positions left out (logits_to_keep)
                if offset > shortest - 1:
                    raise ValueError(
                        f"the model returned logits for {logits.shape[1]} positions of {ids.shape[1]}"
                    )
                where = (lengths - 1 - offset).unsqueeze(1) + torch.arange(count, device=self.device)
                picked = logits.gather(1, where.unsqueeze(2).expand(-1, -1, logits.shape[2]))
                return picked.float().log_softmax(-1).gather(2, tail.unsqueeze(2)).squeeze(2)
            columns = []
            for j in range(count):  # prompts of one length here: the last position is the one
                logits = self._call(ids[:, : longest + j], mask[:, : longest + j], extra, 1)
                last = logits[:, -1].float().log_softmax(-1)
                columns.append(last.gather(1, tail[:, j : j + 1]))
            return torch.cat(columns, dim=1)

    def _score_mapping(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        if "input_ids" not in inputs:
            raise ValueError(f"a model input mapping must hold input_ids, got keys {sorted(inputs)}")
        extra = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
        ids = torch.as_tensor(inputs["input_ids"]).reshape(-1)
        return self._score_batch([tuple(ids.tolist())], extra)[0]


def _keys(prompts: list[Any]) -> list[tuple[int, ...] | None]:
    """Each prompt's token ids as a tuple (None for a mapping), read off the device in one copy
    when the prompts are tensors of one length (the usual case: token ablation)."""
    tensors = [p.reshape(-1) for p in prompts if not isinstance(p, Mapping)]
    if len(tensors) == len(prompts) and len({t.shape[0] for t in tensors}) == 1:
        return [tuple(row) for row in torch.stack(tensors).tolist()]
    return [None if isinstance(p, Mapping) else tuple(p.reshape(-1).tolist()) for p in prompts]


__all__ = ["ContinuationScorer", "is_causal_lm", "is_training", "logits_of"]
