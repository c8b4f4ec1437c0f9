"""Feature inversion of the bundled digits CNN: how well each layer's representation pins down
its input, read by the model itself.

``PYTHONPATH=. python benchmarks/inversion.py`` (CPU, 1 thread, about a minute). 64 test
digits, the trained CNN (15 epochs, ``train_digits_cnn``); per layer, 200 Adam steps from seeded
noise with ``lambda_tv=0.05``, inputs kept in [0, 1]. Reported: the normalised representation
error ``||phi(x) - phi_0||^2 / ||phi_0||^2`` (mean, max), the recognition rate (the model's
prediction on the reconstruction equal to the true label, and to its prediction on the
original), the mean absolute pixel difference to the original, and the time of the batched
call against a loop of one call per image (8 of them, scaled).
"""

from __future__ import annotations

import time

import torch

import fastxai as fx
from fastxai.digits import load_digits, train_digits_cnn

LAYERS = {"2": "conv1 ReLU [16, 8, 8]", "6": "conv2 ReLU [32, 4, 4]", "8": "pooled features [32]"}
OPTIONS = {"n_steps": 200, "lambda_tv": 0.05, "bounds": (0.0, 1.0), "seed": 0}


def main() -> None:
    torch.set_num_threads(1)  # small ops: a second thread only waits on a busy CPU
    (x_train, y_train), (x_test, y_test) = load_digits()
    model = train_digits_cnn(x_train, y_train)
    x, y = x_test[:64], y_test[:64]
    with torch.no_grad():
        original = model(x).argmax(1)
    print(f"accuracy on the 64 originals: {float((original == y).float().mean()):.3f}")
    print("| layer | representation error mean / max | recognised (label) | same prediction | mean abs pixel "
          "difference | batched s | loop s (scaled) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for layer, label in LAYERS.items():
        started = time.perf_counter()
        result = fx.feature_inversion(model, x, layer=layer, **OPTIONS)
        batched = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(8):
            fx.feature_inversion(model, x[i : i + 1], layer=layer, **OPTIONS)
        loop = (time.perf_counter() - started) * len(x) / 8
        with torch.no_grad():
            predicted = model(result.inputs).argmax(1)
        recognised, same = (float((predicted == labels).float().mean()) for labels in (y, original))
        print(
            f"| {label} | {float(result.error.mean()):.4f} / {float(result.error.max()):.4f} | "
            f"{recognised:.3f} | {same:.3f} | "
            f"{float((result.inputs - x).abs().mean()):.3f} | {batched:.2f} | {loop:.1f} |"
        )


if __name__ == "__main__":
    main()
