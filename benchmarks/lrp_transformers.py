"""``fastxai.lrp`` (gradient engine) on tiny Hugging Face transformers, against its floor.

The floor is one forward and backward of the same model from the same start (the input
embedding for token ids, given as ``inputs_embeds``; the pixels for ViT): LRP as a modified
gradient costs that plus the rules' Python dispatch per op. Rounds alternate the two; reported:
best-of-rounds milliseconds (process CPU time, ``--threads 1``) and their ratio.

    .venv/bin/python benchmarks/lrp_transformers.py --rounds 20 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import real_models

import fastxai


def _configs(tr: Any) -> dict[str, tuple[torch.nn.Module, int | None]]:
    small = {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "num_labels": 3}
    return {
        "bert": (tr.BertForSequenceClassification(tr.BertConfig(vocab_size=100, hidden_size=32, **small)), 0),
        "roberta": (
            tr.RobertaForSequenceClassification(
                tr.RobertaConfig(
                    vocab_size=100, hidden_size=32, pad_token_id=1, max_position_embeddings=24, **small
                )
            ),
            1,
        ),
        "gpt2": (
            tr.GPT2ForSequenceClassification(
                tr.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, num_labels=3, pad_token_id=0)
            ),
            0,
        ),
        "llama": (
            tr.LlamaForSequenceClassification(
                tr.LlamaConfig(vocab_size=100, hidden_size=32, num_key_value_heads=1, pad_token_id=0, **small)
            ),
            0,
        ),
        "vit": (
            tr.ViTForImageClassification(tr.ViTConfig(image_size=16, patch_size=8, hidden_size=32, **small)),
            None,
        ),
    }


def _best(function: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{'model':8s} {'lrp ms':>8s} {'floor ms':>9s} {'ratio':>6s}")
    for name, (model, pad) in _configs(real_models.transformers()).items():
        model.eval()
        if pad is None:
            x, kwargs = torch.randn(args.batch, 3, 16, 16), {}
        else:
            x = torch.randint(3, 100, (args.batch, 12))
            kwargs = {"attention_mask": torch.ones_like(x)}

        def explain(model: Any = model, x: torch.Tensor = x, kwargs: dict = kwargs) -> object:
            return fastxai.lrp(model, x, target=1, forward_kwargs=kwargs or None)

        def floor(model: Any = model, x: torch.Tensor = x, kwargs: dict = kwargs, pad: Any = pad) -> object:
            start = (x if pad is None else model.get_input_embeddings()(x)).detach().requires_grad_(True)
            inputs = {"pixel_values": start} if pad is None else {"inputs_embeds": start}
            return torch.autograd.grad(model(**inputs, **kwargs).logits[:, 1].sum(), start)

        explain(), floor()  # one-time setup (mask utilities, dispatch caches)
        lrp_ms = floor_ms = float("inf")
        for _ in range(3):  # alternate: drift on a shared machine hits both alike
            lrp_ms = min(lrp_ms, _best(explain, args.rounds))
            floor_ms = min(floor_ms, _best(floor, args.rounds))
        print(f"{name:8s} {lrp_ms:8.2f} {floor_ms:9.2f} {lrp_ms / floor_ms:6.1f}")


if __name__ == "__main__":
    main()
