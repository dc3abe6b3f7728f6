"""GPU check of fine-tuning: AMP steps of ViT-B/16 with CrossGET rv16 at batch 64.

Times the fine-tuning loop's step (ClipObjective.losses under autocast, GradScaler,
AdamW) on GPU-resident batches, fp16 and bf16, for r=0 (patched, cross tokens
injected) and rv16, then runs the library's `finetune()` itself for a short AMP run
on real image files to exercise the whole path. Writes $OUT/amp_bench.json."""

import json
import os
import statistics
import tempfile
import time
import torch
import open_clip
from PIL import Image
import crossget_cli
from crossget_cli.loading.preprocessing import model_io
from crossget_cli.adapters.training import FinetuneConfig
from crossget_cli.train.loop import finetune
from crossget_cli.loading.models import load_model

OUT = os.environ.get("OUT", "/tmp")
STEPS, WARMUP, BATCH = int(os.environ.get("STEPS", 200)), 20, 64
print(torch.__version__, torch.cuda.get_device_name(), flush=True)
results = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "batch": BATCH, "steps": STEPS, "runs": []}
tok = open_clip.get_tokenizer("ViT-B-16")
captions = [f"a photo of object number {i} in colour {i % 7}" for i in range(BATCH)]


def timed_steps(vision_r, amp):
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    crossget_cli.patch(model, vision_r=vision_r, text_r=0)
    model.cuda().train()
    config = FinetuneConfig(data="unused", amp=amp, device="cuda", lr=1e-5)
    images = torch.randn(BATCH, 3, 224, 224, device="cuda")
    texts = tok(captions).cuda()
    ids = torch.arange(BATCH, device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    from crossget_cli.adapters.contrastive import clip_losses

    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(STEPS + WARMUP):
        torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            out = clip_losses(model, images, texts, ids, config.task_weight, config.js_weight)
        scaler.scale(out["total"]).backward()
        scaler.step(opt)
        scaler.update()
        torch.cuda.synchronize()
        if step >= WARMUP:
            times.append(time.perf_counter() - t)
        losses.append(out["total"].item())
    row = {
        "vision_r": vision_r,
        "amp": amp,
        "median_step_ms": 1000 * statistics.median(times),
        "p25_ms": 1000 * statistics.quantiles(times, n=4)[0],
        "p75_ms": 1000 * statistics.quantiles(times, n=4)[2],
        "images_per_s": BATCH / statistics.median(times),
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "finite": all(map(lambda v: v == v and abs(v) < 1e9, losses)),
    }
    print(json.dumps(row), flush=True)
    results["runs"].append(row)
    del model, opt


for amp in ("fp16", "bf16"):
    for r in (0, 16):
        timed_steps(r, amp)

# The library loop itself (data from real PNG files, checkpoints, AMP) for a short run.
root = tempfile.mkdtemp()
images = []
for i in range(256):
    Image.new("RGB", (224, 224), ((37 * i) % 256, (91 * i) % 256, (13 * i) % 256)).save(f"{root}/{i}.png")
    images.append({"filename": f"{i}.png", "split": "train", "sentences": [{"raw": f"colour {i % 16} picture {i}"}]})
json.dump({"images": images}, open(f"{root}/data.json", "w"))
for amp in ("fp16", "bf16"):
    loaded = load_model("ViT-B-16", "none")
    crossget_cli.patch(loaded.model, vision_r=16, text_r=0)
    io = model_io(loaded, "cuda")
    cfg = FinetuneConfig(
        data=f"{root}/data.json",
        amp=amp,
        device="cuda",
        batch_size=64,
        epochs=3,
        lr=1e-4,
        checkpoint_dir=f"{root}/ckpt-{amp}",
        warmup_steps=2,
    )
    t = time.perf_counter()
    res = finetune(io, cfg)
    row = {
        "loop": True,
        "amp": amp,
        "steps": res.steps,
        "wall_s": time.perf_counter() - t,
        "loss": [round(h["loss"], 4) for h in res.history],
        "items_per_s_median": statistics.median(h["items_per_s"] for h in res.history),
        "checkpoint": os.path.isfile(f"{root}/ckpt-{amp}/checkpoint.pt"),
    }
    print(json.dumps(row), flush=True)
    results["runs"].append(row)
json.dump(results, open(f"{OUT}/amp_bench.json", "w"), indent=1)
print("done")
