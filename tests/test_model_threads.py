"""One model shared by threads (issue 21): calls on the same model serialise on a per-model lock
held by ``fastxai._model.preserved_state`` / ``inference_state``, so each call sees the model in
eval mode with its own hooks, and the model is left as found; calls on different models stay
parallel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch
from models import assert_same_state, model_state, small_cnn

import fastxai as fx
from fastxai import _model

OCCLUSION = dict(sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2))


def _run_in_threads(calls: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, list]:
    """Every call ``repeats`` times, one thread per call, all released at once; results or errors."""
    results: dict[str, list] = {name: [] for name in calls}
    barrier = threading.Barrier(len(calls))

    def worker(name: str) -> None:
        barrier.wait()
        for _ in range(repeats):
            try:
                results[name].append(calls[name]())
            except Exception as error:  # counted as a wrong result below
                results[name].append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_three_threads_on_one_train_mode_model() -> None:
    torch.set_num_threads(1)  # the setting: the threads interleave in Python, not in kernels
    model = small_cnn(seed=4).train()
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 10
    calls = {
        "occlusion": lambda: fx.occlusion(model, x, target=y, **OCCLUSION),
        "saliency": lambda: fx.saliency(model, x, target=y),
        "integrated_gradients": lambda: fx.integrated_gradients(model, x, target=y, n_steps=8),
        "grad_cam": lambda: fx.grad_cam(model, x, target=y, layer="4"),
    }
    expected = {name: call() for name, call in calls.items()}  # one thread: the oracle
    before = model_state(model)
    results = _run_in_threads(calls, repeats=10)
    wrong = {
        name: sum(
            not isinstance(result, torch.Tensor) or not torch.equal(result, expected[name]) for result in got
        )
        for name, got in results.items()
    }
    assert wrong == dict.fromkeys(calls, 0), (
        wrong,
        [r for got in results.values() for r in got if isinstance(r, Exception)][:3],
    )
    assert_same_state(before, model_state(model))  # training flags, BatchNorm statistics, hooks
    assert all(module.training for module in model.modules())


def test_calls_on_different_models_run_in_parallel() -> None:
    first, second = small_cnn(seed=1), small_cnn(seed=2)
    inside = threading.Barrier(2, timeout=10)  # both threads inside their guard at once

    def hold(model: torch.nn.Module) -> None:
        with _model.preserved_state(model):
            inside.wait()

    threads = [threading.Thread(target=hold, args=(model,)) for model in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not inside.broken


def test_calls_on_one_model_wait_for_each_other_and_nest() -> None:
    model = small_cnn(seed=1)
    order: list[str] = []
    entered = threading.Event()

    def first() -> None:
        with _model.preserved_state(model), _model.inference_state(model):  # re-entrant in one thread
            entered.set()
            time.sleep(0.2)
            order.append("first done")

    def second() -> None:
        entered.wait()
        with _model.inference_state(model):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == ["first done", "second in"]


def test_the_lock_goes_with_its_model() -> None:
    import gc

    model = small_cnn(seed=1)
    with _model.preserved_state(model):
        pass
    key = id(model)
    assert key in _model._MODEL_LOCKS
    del model
    gc.collect()
    assert key not in _model._MODEL_LOCKS
