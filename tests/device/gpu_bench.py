"""GPU benchmark of the image towers: eager vs CUDA graphs, original vs CrossGET / ToMe.

Random weights, fp16, one process, interleaved (every repeat times each run and
mode once, in a rotating order), median of repeats after warm-up:

* open_clip ViT-B-16 image tower: original, CrossGET rv16, ToMe rv16;
* open_clip ViT-L-14-336 image tower: original, CrossGET r13;

at batch 1 and 64, eager and as CUDA graphs (``crossget_cli.profile.cuda_graphs``).
Reports images/s, latency, ratios to the original (same mode, and eager), the
graph-vs-eager speed-up of each run and the largest difference between a graph
replay and the eager output. Also:

* ``sync_debug``: one eager forward of each run under
  ``torch.cuda.set_sync_debug_mode("warn")``: whether a host sync was warned about;
* ``sdpa``: which SDPA backend a reduced layer gets with the fp16 size-bias mask
  (the masked call is captured from a patched forward and profiled alone, next
  to the first, unmasked one), and the attention kernels of one whole forward.

TF32 settings are torch's defaults. Run from a repository checkout:
``PYTHONPATH=. python tests/device/gpu_bench.py`` (``--tiny``: a tiny open_clip
model on CPU, eager only, the CUDA-only parts skipped: a smoke test of this
script). Prints one JSON line and writes it to ``$OUT/gpu_bench.json`` when
``$OUT`` is set.
"""

from __future__ import annotations

import argparse
import collections
import copy
import statistics
import sys
import time
import traceback
import warnings

import torch
import torch.nn.functional as F

import crossget_cli
from bench_output import emit  # tests/device/, the script's own folder
from crossget_cli.profile.report import tokens_per_layer

# (open_clip name, [(run label, method, vision r)]); the original is method None.
SPECS = [
    ("ViT-B-16", [("original", None, 0), ("crossget_rv16", "crossget", 16), ("tome_rv16", "tome", 16)]),
    ("ViT-L-14-336", [("original", None, 0), ("crossget_rv13", "crossget", 13)]),
]
KERNEL_WORDS = ("fmha", "flash", "efficient", "cutlass", "attention", "attn", "sdpa")


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def build(name: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    if tiny:
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        image = 64 if name == "ViT-B-16" else 56
        vision = CLIPVisionCfg(layers=4, width=128, head_width=64, patch_size=8 if name == "ViT-B-16" else 7, image_size=image)
        text = CLIPTextCfg(context_length=16, vocab_size=64, width=64, heads=2, layers=2)
        model = CLIP(32, vision, text, quick_gelu=True)
    else:
        import open_clip

        model = open_clip.create_model(name, pretrained=None)
    return model.to(device=device, dtype=dtype).eval()


def shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy that shares the parameters and buffers (patching adds its own)."""
    memo = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


def image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else size


def summary_stats(times: list[float], batch: int) -> dict:
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    median = statistics.median(times)
    return {
        "median_ms": 1000 * median,
        "p25_ms": 1000 * quartiles[0],
        "p75_ms": 1000 * quartiles[2],
        "images_per_s": batch / median,
    }


def bench_model(name: str, runs: list, args, device: torch.device, dtype: torch.dtype, cuda: bool) -> dict:
    from crossget_cli.profile.cuda_graphs import capture_graph

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    started = time.perf_counter()
    base = build(name, args.tiny, device, dtype)
    models = {}
    for label, method, r in runs:
        models[label] = base if method is None else crossget_cli.patch(shared_copy(base), vision_r=r, method=method).eval()
    fns = {label: (lambda x, m=model: m.encode_image(x)) for label, model in models.items()}
    modes = ["eager", "cuda_graphs"] if cuda else ["eager"]
    rows, diffs, extras, capture_errors = [], {}, {}, {}
    with torch.inference_mode():
        for batch in args.batch_sizes:
            gen = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, 3, image_size(base), image_size(base), generator=gen).to(device=device, dtype=dtype)
            calls = {}
            for label, fn in fns.items():
                calls[label, "eager"] = fn
                if "cuda_graphs" in modes:
                    try:
                        graphed = calls[label, "cuda_graphs"] = capture_graph(fn, x, warmup=max(1, args.warmup))
                    except Exception as err:  # keep the eager timings of this run
                        capture_errors[f"{label}@{batch}"] = f"{type(err).__name__}: {err}".splitlines()[0]
                        continue
                    eager_out = fn(x)
                    diffs[f"{label}@{batch}"] = (graphed(x).float() - eager_out.float()).abs().max().item()
            for call in calls.values():
                for _ in range(args.warmup):
                    call(x)
            sync()
            keys = list(calls)
            times = {key: [] for key in keys}
            for rep in range(args.repeats):
                shift = rep % len(keys)
                for key in keys[shift:] + keys[:shift]:
                    sync()
                    start = time.perf_counter()
                    calls[key](x)
                    sync()
                    times[key].append(time.perf_counter() - start)
            for (label, mode), values in times.items():
                rows.append({"run": label, "mode": mode, "batch": batch, **summary_stats(values, batch)})
            if cuda and batch == max(args.batch_sizes):
                extras["sync_debug"] = {}
                for label, fn in fns.items():
                    try:
                        extras["sync_debug"][label] = sync_warnings(fn, x, device)
                    except Exception as err:  # a probe: record, do not lose the timings
                        extras["sync_debug"][label] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
                reduced = next(label for label, method, _ in runs if method == "crossget")
                extras["sdpa"] = sdpa_report(fns[reduced], fns["original"], x, cuda, device)
            del calls, call  # frees this batch size's graphs
            graphed = eager_out = None
            if cuda:
                torch.cuda.empty_cache()
            log(f"{name}: batch {batch} done ({time.perf_counter() - started:.0f} s)")
        if not cuda:  # the probe's CPU path, so that --tiny exercises it
            reduced = next(label for label, method, _ in runs if method == "crossget")
            extras["sdpa"] = sdpa_report(fns[reduced], fns["original"], x, cuda, device)

    by_key = {(row["run"], row["mode"], row["batch"]): row for row in rows}

    def ratio(row: dict, run: str, mode: str):
        other = by_key.get((run, mode, row["batch"]))
        return None if other is None else row["images_per_s"] / other["images_per_s"]

    for row in rows:
        row["speedup_vs_original"] = ratio(row, "original", row["mode"])
        row["speedup_vs_original_eager"] = ratio(row, "original", "eager")
        row["speedup_vs_own_eager"] = ratio(row, row["run"], "eager")
    summary = {}
    for label in models:
        for mode in modes:
            entry = summary.setdefault(label, {}).setdefault(mode, {})
            for batch in args.batch_sizes:
                row = by_key.get((label, mode, batch))
                if row is None:
                    continue
                entry[f"images_per_s@{batch}"] = round(row["images_per_s"], 1)
                for key, column in (("speedup", "speedup_vs_original"), ("vs_own_eager", "speedup_vs_own_eager")):
                    entry[f"{key}@{batch}"] = None if row[column] is None else round(row[column], 3)
                if batch == 1:
                    entry["latency_ms@1"] = round(row["median_ms"], 3)
    result = {
        "model": name,
        "runs": {label: {"method": m or "none", "vision_r": r} for label, m, r in runs},
        "vision_tokens_per_layer": {label: tokens_per_layer(model)["vision"] for label, model in models.items()},
        "summary": summary,
        "rows": rows,
        "graph_vs_eager_max_abs_diff": diffs,
        "capture_errors": capture_errors,
        **extras,
        "seconds": time.perf_counter() - started,
    }
    del models, fns, base
    if cuda:
        torch.cuda.empty_cache()
    return result


def sync_warnings(fn, x: torch.Tensor, device: torch.device) -> dict:
    """Warnings of one eager forward under ``set_sync_debug_mode("warn")``."""
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    messages = sorted({str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()})
    return {"warned": bool(caught), "count": len(caught), "messages": messages[:10]}


def _event_names(prof, cuda: bool) -> tuple[list[str], list[str]]:
    """(device kernel names, aten attention op names) seen by a profile."""
    kernels, ops = [], []
    for event in prof.events():
        name = event.name
        if cuda and getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA:
            kernels.append(name)
        elif name.startswith("aten::") and ("attention" in name or "scaled_dot" in name):
            ops.append(name)
    return kernels, ops


def _profile(fn, cuda: bool, device: torch.device):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize(device)
    return prof


def sdpa_report(reduced_fn, original_fn, x: torch.Tensor, cuda: bool, device: torch.device) -> dict:
    """The SDPA calls of one patched forward (spied on), the kernels of its first
    masked (size-bias) call and first unmasked call profiled alone, and the
    attention kernels of one whole patched / original forward."""
    calls = {}
    real_sdpa = F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, *rest, **kwargs):
        kind = "masked" if attn_mask is not None else "unmasked"
        calls.setdefault(kind, (query, key, value, attn_mask, rest, kwargs))
        calls.setdefault("count_" + kind, 0)
        calls["count_" + kind] += 1
        return real_sdpa(query, key, value, attn_mask, *rest, **kwargs)

    report: dict = {}
    try:
        F.scaled_dot_product_attention = spy
        try:
            reduced_fn(x)
        finally:
            F.scaled_dot_product_attention = real_sdpa
        report["calls_in_one_forward"] = {k.removeprefix("count_"): v for k, v in calls.items() if k.startswith("count_")}
        for kind in ("masked", "unmasked"):
            if kind not in calls:
                continue
            q, k, v, mask, rest, kwargs = calls[kind]
            entry = {
                "query": {"shape": list(q.shape), "stride": list(q.stride()), "dtype": str(q.dtype)},
                "is_causal": bool(kwargs.get("is_causal", False)),
            }
            if mask is not None:
                entry["mask"] = {
                    "shape": list(mask.shape),
                    "stride": list(mask.stride()),
                    "dtype": str(mask.dtype),
                    "data_ptr_mod_16": mask.data_ptr() % 16,
                }
            prof = _profile(lambda: [real_sdpa(q, k, v, mask, *rest, **kwargs) for _ in range(3)], cuda, device)
            kernels, ops = _event_names(prof, cuda)
            entry["kernels"] = dict(collections.Counter(kernels).most_common(20))
            entry["aten_ops"] = sorted(set(ops))
            report[kind] = entry
        for label, fn in (("reduced_forward", reduced_fn), ("original_forward", original_fn)):
            kernels, ops = _event_names(_profile(lambda fn=fn: fn(x), cuda, device), cuda)
            attention = [n for n in kernels if any(w in n.lower() for w in KERNEL_WORDS)]
            report[label] = {"attention_kernels": dict(collections.Counter(attention)), "aten_ops": sorted(set(ops))}
    except Exception as err:  # a probe: record, do not lose the timings
        report["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny open_clip models on CPU, eager only (a smoke test)")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", default=",".join(name for name, _ in SPECS), help="subset of: ViT-B-16,ViT-L-14-336")
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    started = time.perf_counter()
    wanted = args.models.split(",")
    results, errors = [], {}
    for name, runs in SPECS:
        if name not in wanted:
            continue
        try:
            results.append(bench_model(name, runs, args, device, dtype, cuda))
        except Exception as err:  # keep what the other model measured
            errors[name] = f"{type(err).__name__}: {err}".splitlines()[0]
            log(traceback.format_exc())
    report = {
        "benchmark": "gpu_bench",
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "tiny": args.tiny,
        "batch_sizes": args.batch_sizes,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "timing": "interleaved round-robin over runs and modes; median of repeats after warm-up; "
        "cuda_graphs = input copy + replay of a graph captured per run and batch size",
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
        "results": results,
        "errors": errors,
        "seconds": time.perf_counter() - started,
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "crossget": crossget_cli.__version__,
        },
    }
    emit(report, "gpu_bench.json")


if __name__ == "__main__":
    main()
