"""A sparse linear model: multinomial logistic regression on soft labels with an L1 penalty,
fitted by proximal gradient (FISTA)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastxai import _checks
from fastxai.surrogate import _data


@dataclass
class SparseLinear:
    """``z = W flatten(x) + b``: weight [C, D], bias [C] (in the inputs' own units).

    Calling it on [N, *F] inputs returns the logits [N, C]. ``support`` lists the features with a
    non-zero coefficient for some class (softmax is unchanged by adding one vector to every
    class's row, so the support of the whole matrix is what the data determine)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        flat = inputs.reshape(len(inputs), -1).to(self.weight)
        return flat @ self.weight.T + self.bias

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        return self(inputs).argmax(1)

    @property
    def support(self) -> torch.Tensor:
        """Indices of the features with a non-zero coefficient: [K]."""
        return (self.weight != 0).any(0).nonzero().flatten()

    def rules(
        self, feature_names: Sequence[str] | None = None, class_names: Sequence[str] | None = None
    ) -> str:
        """One line per class: ``class c: z = b + w_i * x[i] + ...`` over the support, largest
        |w| first."""
        lines = []
        for c in range(self.weight.shape[0]):
            row = self.weight[c]
            order = row.abs().argsort(descending=True)
            terms = [
                f"{float(row[i]):+.4g} * {feature_names[i] if feature_names is not None else f'x[{int(i)}]'}"
                for i in order
                if row[i] != 0
            ]
            shown = class_names[c] if class_names is not None else str(c)
            lines.append(f"class {shown}: z = {float(self.bias[c]):.4g} {' '.join(terms)}".rstrip())
        return "\n".join(lines)


def fit_sparse_linear(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    l1: float = 0.01,
    steps: int = 2000,
    tolerance: float = 1e-7,
    standardize: bool = True,
) -> SparseLinear:
    """Minimise ``-mean_n sum_c q_nc log softmax(W x_n + b)_c + l1 * ||W||_1`` for soft labels
    ``q`` [N, C] (rows summing to 1) over inputs [N, *F] (flattened, float64).

    FISTA (Beck and Teboulle 2009) with the constant step ``1 / L``, where
    ``L = ||[X, 1]||_2^2 / (2 N)`` bounds the curvature (the Hessian of log-sum-exp is at most
    1/2 in every direction), soft-thresholding W (the bias is not penalised); stops when no
    coefficient moves by more than ``tolerance`` (or after ``steps``). With ``standardize`` the
    penalty applies to the coefficients of standardised features (so it does not depend on the
    units), and the result is mapped back to the inputs' units (same support).

    >>> student = fit_sparse_linear(x, teacher_probabilities, l1=0.01)
    >>> student.support, print(student.rules())
    """
    features = _data.as_features(inputs).double()
    q = _data.as_features(targets, name="targets").double()
    if len(q) != len(features):
        raise ValueError(f"targets must have one row per input ({len(features)}), got {len(q)}")
    if bool((q < 0).any()) or not torch.allclose(q.sum(1), torch.ones(len(q), dtype=q.dtype), atol=1e-6):
        raise ValueError("targets must be probabilities: rows >= 0 that sum to 1")
    l1 = _checks.check_number("l1", l1)
    steps = _checks.check_count("steps", steps, 1)
    tolerance = _checks.check_number("tolerance", tolerance)
    if not isinstance(standardize, bool):
        raise TypeError(f"standardize must be a bool, got {type(standardize).__name__}")
    n, classes = q.shape
    mean = features.mean(0) if standardize else torch.zeros(features.shape[1], dtype=torch.float64)
    std = features.std(0).clamp_min(1e-12) if standardize else torch.ones_like(mean)
    data = (features - mean) / std
    augmented = torch.cat([data, torch.ones(n, 1, dtype=data.dtype)], 1)
    lipschitz = float(torch.linalg.matrix_norm(augmented, ord=2)) ** 2 / (2 * n)
    step = 1 / max(lipschitz, 1e-12)
    weight = torch.zeros(classes, data.shape[1] + 1, dtype=torch.float64)  # bias as the last column
    previous, momentum = weight.clone(), weight.clone()
    for k in range(steps):
        gradient = (augmented @ momentum.T).softmax(1).sub_(q).T @ augmented / n
        moved = momentum - step * gradient
        coefficients = moved[:, :-1]
        moved[:, :-1] = coefficients.sign() * (coefficients.abs() - step * l1).clamp_min(0)
        previous, weight = weight, moved
        momentum = weight + (k / (k + 3)) * (weight - previous)
        if float((weight - previous).abs().max()) <= tolerance:
            break
    coefficients = weight[:, :-1] / std
    bias = weight[:, -1] - coefficients @ mean
    return SparseLinear(coefficients, bias)
