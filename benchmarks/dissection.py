"""Network dissection of the bundled digits CNN against the same CNN with random weights.

``PYTHONPATH=. python benchmarks/dissection.py`` (CPU, 1 thread, about a minute). The concept
set is ``fastxai.concept_dataset(512, seed=0)`` (32 x 32, textures of period 4), seen by the CNN
(trained on 8 x 8 digits, fully convolutional) through an input adapter that area-pools it to
16 x 16 (strokes of one or two pixels, as the digits' are), and at 32 x 32 as it is. Per layer
(the ReLUs after each conv): units whose best IoU is above 0.04 (the paper's detectors), the
concepts they cover, and the mean best IoU; the trained CNN (15 epochs, ``train_digits_cnn``)
against a random-weights one (same seed, untrained). Then the time of the IoU counts, batched
tensor ops against the obvious loop over images and units.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.nn import functional

import fastxai as fx
from fastxai.digits import accuracy, digits_cnn, load_digits, train_digits_cnn
from fastxai.global_views.dissection import _overlap_counts, top_quantile_thresholds

LAYERS = {"2": "conv1 ReLU (16 units)", "6": "conv2 ReLU (32 units)"}


def adapter(x: torch.Tensor) -> torch.Tensor:
    return functional.interpolate(x, size=16, mode="area")


SETTINGS = {"16 x 16 (adapter)": adapter, "32 x 32": None}


def loop_counts(maps: torch.Tensor, thresholds: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """The IoU counts one image and one unit at a time (numpy), as a direct port would do."""
    units, concepts = maps.shape[1], masks.shape[1]
    intersection = np.zeros((units, concepts))
    for n in range(maps.shape[0]):
        upsampled = functional.interpolate(maps[n : n + 1], size=masks.shape[2:], mode="bilinear")[0].numpy()
        labels = masks[n].numpy()
        for u in range(units):
            on = upsampled[u] > float(thresholds[u])
            for k in range(concepts):
                intersection[u, k] += np.logical_and(on, labels[k]).sum()
    return intersection


def main() -> None:
    torch.set_num_threads(1)  # small ops: a second thread only waits on a busy CPU
    (x_train, y_train), (x_test, y_test) = load_digits()
    trained = train_digits_cnn(x_train, y_train)
    torch.manual_seed(0)
    random = digits_cnn().eval()
    print(f"digits CNN test accuracy: trained {accuracy(trained, x_test, y_test):.3f}, "
          f"random {accuracy(random, x_test, y_test):.3f}")  # fmt: skip
    concepts = fx.concept_dataset(512, seed=0)
    print("| input | model | layer | detectors (IoU > 0.04) | concepts covered | mean best IoU | seconds |")
    print("|---|---|---|---|---|---|---|")
    for setting, input_adapter in SETTINGS.items():
        for name, model in (("trained", trained), ("random weights", random)):
            for layer, label in LAYERS.items():
                started = time.perf_counter()
                result = fx.network_dissection(model, concepts, layer=layer, input_adapter=input_adapter)
                seconds = time.perf_counter() - started
                counts = ", ".join(f"{concept} {count}" for concept, count in sorted(result.counts().items()))
                print(
                    f"| {setting} | {name} | {label} | {int(result.detectors.sum())}/{len(result.labels)} | "
                    f"{counts or '-'} | {float(result.best_iou.mean()):.3f} | {seconds:.2f} |"
                )
    maps = fx.layer_activations(trained, concepts.images, layer="6", input_adapter=adapter)
    thresholds = top_quantile_thresholds(maps, 0.005)
    started = time.perf_counter()
    _overlap_counts(maps, thresholds, concepts.masks)
    batched_seconds = time.perf_counter() - started
    subset = 64  # the loop on an eighth of the images, scaled
    started = time.perf_counter()
    looped = loop_counts(maps[:subset], thresholds, concepts.masks[:subset])
    loop_seconds = (time.perf_counter() - started) * maps.shape[0] / subset
    _, _, check = _overlap_counts(maps[:subset], thresholds, concepts.masks[:subset])
    assert np.array_equal(check.numpy(), looped)
    print(
        f"\nIoU counts of layer 6 (32 units x 9 concepts x 512 images, 8 x 8 maps upsampled to 32 x 32): "
        f"batched "
        f"{batched_seconds * 1e3:.1f} ms, loop over images and units {loop_seconds * 1e3:.0f} ms "
        f"(x{loop_seconds / batched_seconds:.0f}); same counts"
    )


if __name__ == "__main__":
    main()
