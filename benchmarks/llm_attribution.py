"""Captum's ``LLMAttribution(FeatureAblation)`` against fastxai's drop-in on a tiny random-weight
Llama (2 layers, width 64, vocabulary 128), a 20-token prompt (``TextTokenInput``, BOS skipped)
and a 5-token target, one thread, interleaved runs, median wall time:
``PYTHONPATH=. python benchmarks/llm_attribution.py``.

Captum scores the 21 prompts (the prompt and one per ablated token) one by one, each target token
in its own forward pass (with its KV cache by default: ``use_cached_outputs=True``); fastxai
scores them in one model batch, the target teacher-forced in the same pass. A template input
(6 segments, ablated to "") is timed too: there the prompts' lengths differ, and fastxai batches
the prompts of each length."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from captum import attr as captum_attr

from fastxai.compat import captum as fc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import real_models  # makes the transformers import work beside a CUDA torchvision

transformers = real_models.transformers()


def tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(100)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def interleaved(functions: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds of each function, the functions run in turn (after one warm-up each)."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(runs):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    tok = tokenizer()
    prompt = " ".join(f"w{i}" for i in range(20))
    target = "w40 w41 w42 w43 w44"
    segments = ["w0 w1 w2", "w3 w4 w5 w6", "w7 w8", "w9 w10 w11", "w12 w13 w14 w15", "w16 w17 w18 w19"]
    ours, theirs = fc.LLMAttribution(fc.FeatureAblation(model), tok), None
    theirs = captum_attr.LLMAttribution(captum_attr.FeatureAblation(model), tok)
    for name, ours_inp, theirs_inp in (
        ("20-token TextTokenInput", fc.TextTokenInput(prompt, tok, skip_tokens=[1]),
         captum_attr.TextTokenInput(prompt, tok, skip_tokens=[1])),
        ("6-segment TextTemplateInput", fc.TextTemplateInput("{} {} {} {} {} {}", segments),
         captum_attr.TextTemplateInput("{} {} {} {} {} {}", segments)),
    ):  # fmt: skip
        check_ours = ours.attribute(ours_inp, target=target)
        check_theirs = theirs.attribute(theirs_inp, target=target, use_cached_outputs=False)
        gap = float((check_ours.token_attr - check_theirs.token_attr).abs().max())  # type: ignore[operator]
        medians = interleaved(
            {
                "captum (cached, default)": lambda: theirs.attribute(theirs_inp, target=target),  # noqa: B023
                "captum (use_cached_outputs=False)": lambda: theirs.attribute(
                    theirs_inp,  # noqa: B023
                    target=target,
                    use_cached_outputs=False,
                ),
                "fastxai": lambda: ours.attribute(ours_inp, target=target),  # noqa: B023
            },
            runs=15,
        )
        fast = medians["fastxai"]
        print(f"{name}, 5 target tokens (max |fastxai - captum uncached| = {gap:.1e}):")
        for label, seconds in medians.items():
            print(f"  {label:36s} {seconds * 1e3:8.2f} ms   {seconds / fast:5.1f}x fastxai's time")


if __name__ == "__main__":
    main()
