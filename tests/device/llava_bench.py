"""LLaVA-sized generation benchmark: original vs CrossGET r13 (SPEC §6).

A LLaVA-1.5-shaped model with random weights: the ViT-L/14-336 vision tower
(24 layers, width 1024) and a ~1.3B Llama (hidden 2048, 24 layers, 16 heads,
intermediate 5504), bf16, a batch of 8 prompts with one image each (left
padded, different lengths). Measures, interleaved, median after warm-up:

* visual tokens into the LLM and prompt length;
* image encoding latency (vision tower + projector);
* prefill latency: ``generate(max_new_tokens=1)`` (image encoding + LLM prefill);
* decode tokens/s: ``batch * (N - 1) / (t(N) - t(1))`` with ``min_new_tokens=N``;
* end-to-end answers/s: ``batch / t(N)``;
* peak memory of ``generate(N)``.

Also checks that the patched model's greedy ``generate`` equals the unpatched
model generating from the reduced visual features fed by hand.

Run from a repository checkout: ``PYTHONPATH=. python llava_bench.py``
(``--tiny`` for a quick CPU run). Prints one JSON line and writes it to
``$OUT/llava_bench.json`` when ``$OUT`` is set.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import crossget_cli
from bench_output import emit  # tests/device/, the script's own folder
from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.llava.adapter import num_image_tokens

IMAGE_TOKEN, PAD, BOS, VOCAB = 32000, 32001, 1, 32064


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    if tiny:
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2, image_size=56)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    else:
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336)
        text = dict(
            hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16
        )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(patch_size=14, hidden_act="quick_gelu", projection_dim=768, **vision),
        text_config=LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, pad_token_id=PAD, bos_token_id=BOS, **text),
        image_token_id=IMAGE_TOKEN,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def make_inputs(model, batch: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """``batch`` prompts ``BOS, 6 words, image tokens, 12 + 3 i words``, left padded."""
    gen = torch.Generator().manual_seed(seed)
    count = num_image_tokens(model)
    rows = []
    for i in range(batch):
        words = torch.randint(3, 31000, (18 + 3 * i,), generator=gen).tolist()
        rows.append([BOS] + words[:6] + [IMAGE_TOKEN] * count + words[6:])
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    size = model.config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "pixel_values": pixels.to(device, dtype)}


def timed(fn, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (a smoke test of this script)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--r", type=int, default=13)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    started = time.perf_counter()
    original = build(args.tiny, device, dtype)
    compressed = crossget_cli.patch(copy.deepcopy(original), vision_r=args.r)
    variants = {"original": original, f"r{args.r}": compressed}
    inputs = {name: make_inputs(model, args.batch, device, dtype) for name, model in variants.items()}
    adapter = find_adapter(compressed)
    n = args.new_tokens
    settings = dict(do_sample=False, pad_token_id=PAD, eos_token_id=None)

    def generate(name: str, tokens: int):
        return variants[name].generate(**inputs[name], max_new_tokens=tokens, min_new_tokens=tokens, **settings)

    calls = {
        "encode": lambda name: adapter.image_features(variants[name], inputs[name]["pixel_values"]),
        "prefill": lambda name: generate(name, 1),
        "generate": lambda name: generate(name, n),
    }
    times: dict[tuple[str, str], list[float]] = {}
    peak: dict[str, float | None] = {}
    with torch.inference_mode():
        # Equality: patched generate vs the unpatched model fed the reduced features.
        features = adapter.image_features(compressed, inputs[f"r{args.r}"]["pixel_values"])
        ids = inputs[f"r{args.r}"]["input_ids"]
        embeds = original.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter((ids == IMAGE_TOKEN)[..., None], features.to(embeds.dtype))
        mask = inputs[f"r{args.r}"]["attention_mask"]
        by_hand = original.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, **settings)
        patched = generate(f"r{args.r}", 8)[:, ids.shape[1] :]
        equal = bool(torch.equal(by_hand, patched))

        for name in variants:
            for _ in range(args.warmup):
                for call in calls.values():
                    call(name)
        for rep in range(args.repeats):
            order = list(variants) if rep % 2 == 0 else list(variants)[::-1]
            for what, call in calls.items():
                for name in order:
                    times.setdefault((name, what), []).append(timed(lambda: call(name), cuda))
        for name in variants:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                generate(name, n)
                peak[name] = torch.cuda.max_memory_allocated() / 2**20
            else:
                peak[name] = None

    results = {}
    for name, model in variants.items():
        med = {what: statistics.median(times[name, what]) for what in calls}
        decode = med["generate"] - med["prefill"]
        results[name] = {
            "visual_tokens_into_llm": num_image_tokens(model),
            "prompt_tokens": int(inputs[name]["input_ids"].shape[1]),
            "image_encoding_ms": 1000 * med["encode"],
            "prefill_latency_ms": 1000 * med["prefill"],
            "decode_tokens_per_s": args.batch * (n - 1) / decode if decode > 0 else None,
            "generate_ms": 1000 * med["generate"],
            "answers_per_s": args.batch / med["generate"],
            "peak_memory_mb": peak[name],
        }
    base, red = results["original"], results[f"r{args.r}"]
    report = {
        "benchmark": "llava_bench",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "tiny": args.tiny,
        "batch": args.batch,
        "new_tokens": n,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "generate_equal_to_features_by_hand": equal,
        "results": results,
        "speedup": {
            "prefill": base["prefill_latency_ms"] / red["prefill_latency_ms"],
            "image_encoding": base["image_encoding_ms"] / red["image_encoding_ms"],
            "decode": (red["decode_tokens_per_s"] or 0) / (base["decode_tokens_per_s"] or float("inf")),
            "answers_per_s": red["answers_per_s"] / base["answers_per_s"],
        },
        "seconds": time.perf_counter() - started,
        "versions": {"torch": torch.__version__, "crossget": crossget_cli.__version__},
    }
    emit(report, "llava_bench.json")


if __name__ == "__main__":
    main()
