"""Composites: which rule each layer gets, by layer type, by module name, and for the first layer.

Registered by name as in Zennit (``epsilon_plus``, ``epsilon_plus_flat``, ``epsilon_gamma_box``,
``epsilon_alpha2_beta1``, ``epsilon_alpha2_beta1_flat``, plus ``epsilon``); a user mapping
``{module type or dotted module name: rule}`` becomes a composite too. Layers a mapping leaves
out keep the defaults: ``Epsilon(1e-6)`` for Linear/Conv, ``Pass`` for element-wise
activations, ``Epsilon(1e-6)`` for pooling and a standalone BatchNorm. ``stabilizer`` is the
epsilon of the parameter-free linear steps (sums, means, average pooling, matmul, LayerNorm).

>>> composite = get_composite("epsilon_gamma_box", low=-1.0, high=1.0)
>>> R = fastxai.lrp(model, x, target=y, composite=composite)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from fastxai.lrp._linear import CONV_TYPES, LINEAR_TYPES
from fastxai.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Rule, ZBox, ZPlus

LayerMap = list[tuple[tuple[type, ...], Rule]]


class Composite:
    """Rules by module name (``name_map``, checked first), for the first linear layer met in the
    forward pass (``first_map``), and by module type (``layer_map``, first match wins)."""

    def __init__(
        self,
        layer_map: Iterable[tuple[type | tuple[type, ...], Rule]] = (),
        first_map: Iterable[tuple[type | tuple[type, ...], Rule]] = (),
        name_map: Mapping[str, Rule] | None = None,
        stabilizer: float = 1e-6,
    ) -> None:
        self.layer_map = _check_map("layer_map", layer_map)
        self.first_map = _check_map("first_map", first_map)
        self.name_map = dict(name_map or {})
        for name, rule in self.name_map.items():
            if not isinstance(name, str) or not isinstance(rule, Rule):
                raise TypeError(f"name_map must map module names to rules, got {name!r}: {rule!r}")
        if isinstance(stabilizer, bool) or not isinstance(stabilizer, (int, float)) or not stabilizer >= 0:
            raise ValueError(f"stabilizer must be a float >= 0, got {stabilizer!r}")
        self.stabilizer = float(stabilizer)

    def check_names(self, model: object) -> None:
        """Every name in ``name_map`` must be a submodule of ``model``."""
        if not self.name_map:
            return
        names = {name for name, _ in model.named_modules()} if isinstance(model, nn.Module) else set()
        for name in self.name_map:
            if name not in names:
                raise ValueError(f"composite names module {name!r}, which the model does not have")

    def rule(self, name: str, module: nn.Module, first: bool) -> Rule | None:
        """The rule for the module ``name``; ``first`` says it is the first linear layer."""
        if name in self.name_map:
            return self.name_map[name]
        if first:
            for types, rule in self.first_map:
                if isinstance(module, types):
                    return rule
        for types, rule in self.layer_map:
            if isinstance(module, types):
                return rule
        return None

    def __repr__(self) -> str:
        return f"Composite(layer_map={self.layer_map}, first_map={self.first_map}, name_map={self.name_map})"


def _check_map(argument: str, entries: Iterable[tuple[type | tuple[type, ...], Rule]]) -> LayerMap:
    checked: LayerMap = []
    for entry in entries:
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise TypeError(f"{argument} must hold (module type(s), rule) pairs, got {entry!r}")
        types, rule = entry
        types = types if isinstance(types, tuple) else (types,)
        if not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
            raise TypeError(f"{argument} keys must be nn.Module subclasses, got {types!r}")
        if not isinstance(rule, Rule):
            raise TypeError(f"{argument} values must be fastxai.lrp.rules rules, got {rule!r}")
        checked.append((types, rule))
    return checked


COMPOSITES: dict[str, Callable[..., Composite]] = {}


def register_composite(name: str) -> Callable[[Callable[..., Composite]], Callable[..., Composite]]:
    """Decorator: make ``factory(**kwargs) -> Composite`` available as ``composite=name``."""

    def register(factory: Callable[..., Composite]) -> Callable[..., Composite]:
        COMPOSITES[name] = factory
        return factory

    return register


@register_composite("epsilon")
def epsilon(epsilon: float = 1e-6) -> Composite:
    """LRP-epsilon for every Linear and Conv layer."""
    return Composite([(LINEAR_TYPES, Epsilon(epsilon))])


@register_composite("epsilon_plus")
def epsilon_plus(epsilon: float = 1e-6) -> Composite:
    """z+ for convolutions, epsilon for Linear layers."""
    return Composite([(CONV_TYPES, ZPlus()), (nn.Linear, Epsilon(epsilon))])


@register_composite("epsilon_plus_flat")
def epsilon_plus_flat(epsilon: float = 1e-6) -> Composite:
    """Flat for the first linear layer, z+ for convolutions, epsilon for Linear layers."""
    return Composite([(CONV_TYPES, ZPlus()), (nn.Linear, Epsilon(epsilon))], [(LINEAR_TYPES, Flat())])


@register_composite("epsilon_gamma_box")
def epsilon_gamma_box(
    low: float | torch.Tensor = 0.0,
    high: float | torch.Tensor = 1.0,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
) -> Composite:
    """ZBox(low, high) for the first convolution, gamma for the other convolutions, epsilon for
    Linear layers. The default box is [0, 1]; inputs outside it are an error."""
    return Composite(
        [(CONV_TYPES, Gamma(gamma)), (nn.Linear, Epsilon(epsilon))], [(CONV_TYPES, ZBox(low, high))]
    )


@register_composite("epsilon_alpha2_beta1")
def epsilon_alpha2_beta1(epsilon: float = 1e-6) -> Composite:
    """alpha=2, beta=1 for convolutions, epsilon for Linear layers."""
    return Composite([(CONV_TYPES, AlphaBeta(2.0, 1.0)), (nn.Linear, Epsilon(epsilon))])


@register_composite("epsilon_alpha2_beta1_flat")
def epsilon_alpha2_beta1_flat(epsilon: float = 1e-6) -> Composite:
    """Flat for the first linear layer, alpha=2, beta=1 for convolutions, epsilon for Linear layers."""
    return Composite(
        [(CONV_TYPES, AlphaBeta(2.0, 1.0)), (nn.Linear, Epsilon(epsilon))], [(LINEAR_TYPES, Flat())]
    )


def get_composite(name: str, **kwargs: Any) -> Composite:
    """The registered composite ``name`` built with ``kwargs`` (e.g. ``low``, ``high``, ``epsilon``)."""
    if not isinstance(name, str) or name not in COMPOSITES:
        raise ValueError(f"composite must be one of {sorted(COMPOSITES)} or a mapping, got {name!r}")
    return COMPOSITES[name](**kwargs)


_NAMED: dict[str, tuple[Callable[..., Composite], Composite]] = {}


def resolve_composite(composite: object) -> Composite:
    """A Composite from a registered name, a Composite, or a ``{type or name: rule}`` mapping."""
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, str):
        factory = COMPOSITES.get(composite)
        cached = _NAMED.get(composite)
        if cached is not None and cached[0] is factory:
            return cached[1]  # one object per name: lrp's plan cache is keyed by it
        resolved = get_composite(composite)
        _NAMED[composite] = (COMPOSITES[composite], resolved)
        return resolved
    if isinstance(composite, Mapping):
        layer_map: LayerMap = []
        name_map: dict[str, Rule] = {}
        for key, rule in composite.items():
            if not isinstance(rule, Rule):
                raise TypeError(f"composite values must be fastxai.lrp.rules rules, got {rule!r} for {key!r}")
            if isinstance(key, str):
                name_map[key] = rule
            else:
                layer_map.extend(_check_map("composite", [(key, rule)]))
        return Composite(layer_map, (), name_map)
    raise TypeError(
        f"composite must be a registered name {sorted(COMPOSITES)}, a Composite or a mapping, "
        f"got {type(composite).__name__}"
    )


__all__ = ["COMPOSITES", "Composite", "get_composite", "register_composite", "resolve_composite"]
