"""Captum's ``LLMGradientAttribution``: a layer method's attribution of each output token's
log-probability to the prompt's tokens.

    from fastxai.compat import captum as fc
    lig = fc.LayerIntegratedGradients(model, model.model.embed_tokens)
    inp = fc.TextTokenInput(prompt, tokenizer)
    result = fc.LLMGradientAttribution(lig, tokenizer).attribute(inp, target="Paris")

``token_attr[j]`` [M] attributes ``s_j = log p(c_j | prompt, c_<j)`` (the last position's
logits of the prompt followed by ``c_<j``) to the prompt's M interpretable tokens: the layer
method (``LayerIntegratedGradients``, ``LayerGradientXActivation``, ``LayerGradientShap``;
fastxai's or Captum's) runs once per output token, its attribution at the prompt's positions
summed over the layer's last dimension (Sundararajan et al. 2017 sum IG over the embedding);
``seq_attr`` is the sum over output tokens, the attribution of ``log p(c | prompt)``. The
layer method gets the interpretable row (all ones) and baselines as floats; the forward maps a
row to token ids (``inp.to_model_input``: an entry that is not 1 takes the baseline token), so
the baselines of ``LayerIntegratedGradients`` (default zeros) are the prompt with every
interpretable token replaced by the input's baseline token.
"""

from __future__ import annotations

from copy import copy
from typing import Any

import torch
from torch import nn

from fastxai import _model
from fastxai.compat._captum_llm import GRADIENT_METHODS, _check_input, _LLMBase
from fastxai.compat._captum_llm_result import LLMAttributionResult, pretty_tokens
from fastxai.compat._captum_llm_scoring import logits_of
from fastxai.compat._captum_targets import CaptumArgumentError, CaptumTypeError


class LLMGradientAttribution(_LLMBase):
    """Captum's ``LLMGradientAttribution(attr_method, tokenizer)``: a layer method on token
    inputs (``TextTokenInput``); ``token_attr[j]`` attributes ``s_j`` (the log-probability of
    output token j after the prompt and ``c_<j``) to the prompt's tokens, summed over the
    layer's last dimension; ``seq_attr`` is their sum. One ``attribute`` call of the layer
    method per output token, as Captum."""

    methods = GRADIENT_METHODS

    def __init__(self, attr_method: Any, tokenizer: Any) -> None:
        super().__init__(attr_method, tokenizer)
        self._forward = _TokenLogProbForward(self.model)
        self.attr_method = copy(attr_method)
        self.attr_method.forward_func = self._forward

    def attribute(
        self,
        inp: Any,
        target: str | torch.Tensor | None = None,
        skip_tokens: list[int] | list[str] | None = None,
        gen_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> LLMAttributionResult:
        """``token_attr`` [T, M] and ``seq_attr`` [M] for ``target`` (None: generated);
        ``kwargs`` go to the layer method's ``attribute`` (``baselines``, ``n_steps``, ...)."""
        _check_input(inp)
        prompt = inp.to_model_input()
        if not isinstance(prompt, torch.Tensor):
            raise CaptumTypeError(
                f"LLMGradientAttribution takes token inputs (TextTokenInput), got {type(inp).__name__}"
            )
        if "additional_forward_args" in kwargs:
            raise CaptumArgumentError("additional_forward_args is LLMGradientAttribution's own")
        length = prompt.shape[-1]
        # the interpretable rows are 0/1 indicators: given to the layer method as floats, so that
        # a method whose points lie between baselines and inputs (LayerGradientShap) takes them
        if "baselines" in kwargs:
            kwargs["baselines"] = _float_indicators(kwargs["baselines"])
        with _model.preserved_state(self.model, eval_mode=False):
            target_tokens = self._target_tokens(inp, target, skip_tokens, gen_args)
            self._forward.inp, self._forward.target_tokens = inp, target_tokens
            per_token = []
            for index in range(target_tokens.shape[0]):
                self._forward.index = index
                row = inp.to_tensor().to(self.device, torch.get_default_dtype())
                found = self.attr_method.attribute(row, **kwargs)
                if not isinstance(found, torch.Tensor):
                    raise CaptumArgumentError(
                        "LLMGradientAttribution needs a layer method on one layer with one output"
                    )
                per_token.append(found.detach()[:, :length].reshape(found.shape[0], length, -1).sum(-1))
        attr = torch.cat(per_token).float()  # [T, L]
        mask = getattr(inp, "itp_mask", None)
        if mask is not None:
            attr = attr[:, mask.reshape(-1).to(attr.device)]
        return LLMAttributionResult(
            seq_attr=attr.sum(0),
            token_attr=attr,
            input_tokens=list(inp.values),
            output_tokens=pretty_tokens(target_tokens.cpu(), self.tokenizer),
            inp=inp,
        )


def _float_indicators(baselines: Any) -> Any:
    """Integer baseline rows (a tensor, or tensors in a tuple) as floats, like the inputs."""
    if isinstance(baselines, tuple):
        return tuple(_float_indicators(part) for part in baselines)
    if isinstance(baselines, torch.Tensor) and not baselines.is_floating_point():
        return baselines.to(torch.get_default_dtype())
    return baselines


class _TokenLogProbForward(nn.Module):
    """The layer method's forward: rows [N, M] of the input's interpretable form -> ``s_j`` [N]
    for the output token ``index`` (the prompt, then ``c_<j``; the last position's logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inp: Any = None
        self.target_tokens = torch.empty(0, dtype=torch.long)
        self.index = 0

    def forward(self, perturbed: torch.Tensor, *_: Any) -> torch.Tensor:
        ids = self.inp.to_model_input(perturbed).to(self.target_tokens.device)
        if self.index:
            ids = torch.cat([ids, self.target_tokens[: self.index].expand(ids.shape[0], -1)], dim=1)
        last = logits_of(self.model(ids))[:, -1].float().log_softmax(-1)
        return last[:, self.target_tokens[self.index]]


__all__ = ["LLMGradientAttribution"]
