#!/usr/bin/env python3
"""PyTorch reference timings for the DESIGN.md section 5 workloads (apple/ml-tarflow, eager, CPU).

What it measures
----------------
The reference implementation itself, apple/ml-tarflow's `transformer_flow.py` (Permutation*,
Attention with its list + torch.cat KV cache, MLP, AttentionBlock, MetaBlock, Model), loaded at run
time from a local copy of that file: the reference's code is Apple's (Apple Sample Code License),
so it is not copied into this repository. Get it with
    git clone https://github.com/apple/ml-tarflow   # the file is ml-tarflow/transformer_flow.py
and pass its path with --ref (or TARFLOW_REF=...). `--check-golden` first checks the loaded file
against ../shared/golden/cond.{pth,cases.safetensors} (forward, reverse, CFG), if present.

Random weights (reference init; proj_out.weight U(-0.02, 0.02) instead of zeros so that sampling
does real work), fp32, eval mode and torch.no_grad() for sampling, as the reference's scripts do
(train.py: `with torch.no_grad(): model.reverse(noise, y, guidance=args.cfg)`; evaluate_fid.py
freezes the parameters and denoises with autograd). Workloads:
  S16 = 16x16 RGBA, patch 2 (N=64, D=16), 256 channels, 4 blocks x 2 layers, 8 classes,
        CFG w=1.5 (`model.reverse(z, y, guidance=1.5)`), denoising with sigma 0.05;
  T32 = 32x32 RGB, patch 4 (N=64, D=48), 256 channels, 4 blocks x 2 layers, unconditional;
  S32 = 32x32 RGBA, patch 2 (N=256, D=16), 128 channels, 4 blocks x 2 layers, 12 classes
        (the sprite shape; training step only).
Denoising is evaluate_fid.py's step: x.requires_grad; z, _, logdets = model(x, y);
loss = model.get_loss(z, logdets); grad = autograd.grad(loss, [x]); x -= lr * grad with
lr = db * img_size^2 * channels * sigma^2 (self_denoising_lr 1), in chunks of db = max(1, B // 4)
images (evaluate_fid sets denoising_batch_size = batch_size // 4).
The training step is train.py's: x + sigma * randn, labels dropped with p 0.1 (-1), zero_grad,
model(x, y), get_loss, backward, AdamW(lr 1e-4, betas (0.9, 0.95), weight_decay 1e-4).step()
(fp32 on CPU, so no autocast / GradScaler; the cosine LR schedule is left out).

Timing: wall clock (time.perf_counter) of each call after one warm-up call; when the warm-up took
< 2 s, as many runs as fit in about 10 s (5 to 15), else 5 (4 past 8 s); min (the main figure: the
machine is shared) and median. Each workload runs with
torch.set_num_threads(1) and then (2); /proc/loadavg is printed before each measurement.
Composite workloads also report their parts (reverse, denoise) per run. With --quiet-wait S, each
run first waits (at most S seconds in all per measurement) until other processes use <= 25% of the
CPUs: on a shared 2-core machine, torch's 2-thread runs are otherwise dominated by contention.

Run (about 10 minutes on 2 vCPUs; needs `pip install torch numpy`):
    python3 benches/pytorch_reference.py --ref /path/to/ml-tarflow/transformer_flow.py
Options: --threads 1,2   --only s16_train_b32,t32_sample_b1   --json out.json   --check-golden
         --quiet-wait 60
"""

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch

SIGMA = 0.05
CFG = 1.5
NUM_CLASSES = 8

S16 = dict(in_channels=4, img_size=16, patch_size=2, channels=256, num_blocks=4, layers_per_block=2,
           nvp=True, num_classes=NUM_CLASSES)
T32 = dict(in_channels=3, img_size=32, patch_size=4, channels=256, num_blocks=4, layers_per_block=2,
           nvp=True, num_classes=0)
# The sprite shape: 32x32 RGBA, patch 2 (N=256, D=16), the sprite model's width 128, 12 classes.
S32 = dict(in_channels=4, img_size=32, patch_size=2, channels=128, num_blocks=4, layers_per_block=2,
           nvp=True, num_classes=12)


def load_reference(path):
    if not path or not os.path.isfile(path):
        sys.exit(f"reference transformer_flow.py not found at {path!r}: "
                 "git clone https://github.com/apple/ml-tarflow and pass --ref .../transformer_flow.py")
    spec = importlib.util.spec_from_file_location("transformer_flow", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return "n/a"


def build(tf, cfg, seed, train=False):
    torch.manual_seed(seed)
    m = tf.Model(**cfg)
    with torch.no_grad():
        for blk in m.blocks:
            blk.proj_out.weight.uniform_(-0.02, 0.02)
    if train:
        m.train()
    else:
        m.eval()
        for p in m.parameters():  # as evaluate_fid.py
            p.requires_grad = False
    return m


def seq_shape(cfg, b):
    n = (cfg["img_size"] // cfg["patch_size"]) ** 2
    d = cfg["in_channels"] * cfg["patch_size"] ** 2
    return (b, n, d)


def sample(model, noise, y, guidance):
    with torch.no_grad():
        return model.reverse(noise, y, guidance)


def denoise(model, cfg, samples, y):
    """evaluate_fid.py's self-denoising step (self_denoising_lr = 1)."""
    b = samples.size(0)
    db = max(1, b // 4)
    base_lr = db * cfg["img_size"] ** 2 * cfg["in_channels"] * SIGMA**2
    lr = 1.0 * base_lr
    out = []
    for j in range((b + db - 1) // db):
        x = torch.clone(samples[j * db:(j + 1) * db]).detach()
        x.requires_grad = True
        y_ = y[j * db:(j + 1) * db] if y is not None else None
        z, _, logdets = model(x, y_)
        loss = model.get_loss(z, logdets)
        grad = torch.autograd.grad(loss, [x])[0]
        x.data.add_(grad, alpha=-lr)
        out.append(x.detach())
    return torch.cat(out, dim=0)


def make_workloads(tf):
    s16 = build(tf, S16, 1)
    t32 = build(tf, T32, 2)
    s16_train = build(tf, S16, 3, train=True)
    opt = torch.optim.AdamW(s16_train.parameters(), betas=(0.9, 0.95), lr=1e-4, weight_decay=1e-4)
    s32_train = build(tf, S32, 4, train=True)
    opt32 = torch.optim.AdamW(s32_train.parameters(), betas=(0.9, 0.95), lr=1e-4, weight_decay=1e-4)
    g = torch.Generator().manual_seed(7)

    def inputs(cfg, b, cond):
        noise = torch.randn(seq_shape(cfg, b), generator=g)
        y = torch.randint(NUM_CLASSES, (b,), generator=g) if cond else None
        return noise, y

    n1, y1 = inputs(S16, 1, True)
    n64, y64 = inputs(S16, 64, True)
    nt1, _ = inputs(T32, 1, False)
    nt64, _ = inputs(T32, 64, False)
    img1 = sample(s16, n1.clone(), y1, CFG)  # a sample to denoise (not timed)
    tx = torch.rand(32, 4, 16, 16, generator=g) * 2 - 1
    ty = torch.randint(NUM_CLASSES, (32,), generator=g)
    sx = torch.rand(32, 4, 32, 32, generator=g) * 2 - 1
    sy = torch.randint(S32["num_classes"], (32,), generator=g)

    def s16_sample_b1():
        return sample(s16, n1.clone(), y1, CFG)

    def s16_denoise_b1():
        return denoise(s16, S16, img1, y1)

    def composite(noise, y):
        def run(parts):
            t0 = time.perf_counter()
            x = sample(s16, noise.clone(), y, CFG)
            t1 = time.perf_counter()
            x = denoise(s16, S16, x, y)
            t2 = time.perf_counter()
            parts.setdefault("reverse", []).append(t1 - t0)
            parts.setdefault("denoise", []).append(t2 - t1)
            return x
        return run

    def train_step(model, opt, images, labels):
        """train.py's step: noise, labels dropped with p 0.1, loss, backward, AdamW."""
        def step():
            x = images + SIGMA * torch.randn_like(images)
            mask = (torch.rand(labels.size(0)) < 0.1).int()
            y = (1 - mask) * labels - mask
            opt.zero_grad()
            z, outputs, logdets = model(x, y)
            loss = model.get_loss(z, logdets)
            loss.backward()
            opt.step()
            return loss.detach()
        return step

    s16_train_b32 = train_step(s16_train, opt, tx, ty)
    s32_train_b32 = train_step(s32_train, opt32, sx, sy)

    def t32_sample_b1():
        return sample(t32, nt1.clone(), None, 0)

    def t32_sample_b64():
        return sample(t32, nt64.clone(), None, 0)

    # name, description, callable, takes_parts, items per call
    return [
        ("s16_sample_b1", "S16 sample, batch 1, CFG 1.5 (reverse only)", s16_sample_b1, False, 1),
        ("s16_denoise_b1", "S16 denoise, batch 1", s16_denoise_b1, False, 1),
        ("s16_sample_denoise_b1", "S16 sample, batch 1, CFG 1.5 + denoise", composite(n1, y1), True, 1),
        ("s16_sample_denoise_b64", "S16 sample, batch 64, CFG 1.5 + denoise", composite(n64, y64), True, 64),
        ("s16_train_b32", "S16 training step, batch 32", s16_train_b32, False, 32),
        ("s32_train_b32", "S32 (sprite shape) training step, batch 32", s32_train_b32, False, 32),
        ("t32_sample_b1", "T32 sample, batch 1", t32_sample_b1, False, 1),
        ("t32_sample_b64", "T32 sample, batch 64", t32_sample_b64, False, 64),
    ]


def measure(fn, takes_parts, gate):
    gate.reset()
    parts = {}
    gate()
    t0 = time.perf_counter()
    out = fn(parts) if takes_parts else fn()
    warm = time.perf_counter() - t0
    if not bool(torch.isfinite(out).all()):
        print("  warning: non-finite output", flush=True)
    # fast calls: about 10 s of runs (5..15); slow ones: 5 runs (4 past 8 s)
    n = max(5, min(15, int(10.0 / max(warm, 1e-3)))) if warm < 2.0 else (5 if warm < 8.0 else 4)
    parts = {}
    times = []
    for _ in range(n):
        gate()
        t0 = time.perf_counter()
        if takes_parts:
            fn(parts)
        else:
            fn()
        times.append(time.perf_counter() - t0)
    return warm, times, parts


def cpu_busy(dt):
    """Fraction of all CPUs busy over dt seconds (this process sleeps meanwhile, so: other work)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    try:
        i0, t0 = read()
        time.sleep(dt)
        i1, t1 = read()
        return 1.0 - (i1 - i0) / max(1, t1 - t0)
    except (OSError, ValueError):
        return 0.0


class QuietGate:
    """Before each timed run, wait (up to a total budget per measurement) until the other processes
    use at most `limit` of the machine's CPUs; records the busy fraction seen before each run."""

    def __init__(self, budget_s, limit=0.25):
        self.budget_s, self.limit, self.seen = budget_s, limit, []

    def reset(self):
        self.left, self.seen = self.budget_s, []

    def __call__(self):
        if self.budget_s <= 0:
            return
        busy = cpu_busy(0.2)
        while busy > self.limit and self.left > 0:
            self.left -= 0.5
            busy = cpu_busy(0.5)
        self.seen.append(busy)


def fmt(s):
    return f"{s * 1000:.1f} ms" if s < 1.0 else f"{s:.3f} s"


def check_golden(tf):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "golden")
    try:
        from safetensors.torch import load_file
    except ImportError:
        print("check-golden: safetensors not installed, skipped")
        return
    if not os.path.isfile(os.path.join(root, "cond.pth")):
        print(f"check-golden: no {root}/cond.pth, skipped")
        return
    cfg = json.load(open(os.path.join(root, "cond.json")))["config"]
    m = tf.Model(**cfg)
    m.load_state_dict(torch.load(os.path.join(root, "cond.pth"), map_location="cpu", weights_only=False), strict=True)
    m.eval()
    c = load_file(os.path.join(root, "cond.cases.safetensors"))
    with torch.no_grad():
        z, _, ld = m(c["forward.x"], c["forward.y"])
        errs = {
            "forward.z": (z - c["forward.z"]).abs().max().item(),
            "forward.logdets": (ld - c["forward.logdets"]).abs().max().item(),
            "reverse.plain": (m.reverse(c["reverse.noise"].clone(), c["reverse.y"]) - c["reverse.plain"]).abs().max().item(),
            "reverse.cfg_ab": (m.reverse(c["reverse.noise"].clone(), c["reverse.y"], c["reverse.guidance"].item())
                               - c["reverse.cfg_ab"]).abs().max().item(),
        }
    print("check-golden (max abs error vs ../shared/golden/cond):",
          ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    if max(errs.values()) > 1e-3:
        sys.exit("check-golden: the loaded transformer_flow.py does not reproduce the golden cases")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default=os.environ.get("TARFLOW_REF", "/work/ref/ml-tarflow/transformer_flow.py"),
                    help="path of apple/ml-tarflow's transformer_flow.py")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--only", default="", help="comma-separated workload names")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--check-golden", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="per measurement, up to this many seconds in all of waiting before runs "
                         "until other processes use <= 25%% of the CPUs (0: off)")
    args = ap.parse_args()

    tf = load_reference(args.ref)
    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"python {platform.python_version()}, {os.cpu_count()} cpus, reference {args.ref}", flush=True)
    if args.check_golden:
        check_golden(tf)
    threads = [int(t) for t in args.threads.split(",")]
    only = set(filter(None, args.only.split(",")))
    workloads = [w for w in make_workloads(tf) if not only or w[0] in only]
    gate = QuietGate(args.quiet_wait)
    results = []
    t_start = time.perf_counter()
    for name, desc, fn, takes_parts, items in workloads:
        for nt in threads:
            torch.set_num_threads(nt)
            la = loadavg()
            warm, times, parts = measure(fn, takes_parts, gate)
            r = dict(name=name, desc=desc, threads=nt, loadavg_before=la, warmup_s=warm, times_s=times,
                     others_busy=gate.seen, min_s=min(times), median_s=statistics.median(times), items=items,
                     parts={k: dict(min_s=min(v), median_s=statistics.median(v)) for k, v in parts.items()})
            results.append(r)
            extra = "".join(f"; {k} min {fmt(v['min_s'])} med {fmt(v['median_s'])}" for k, v in r["parts"].items())
            print(f"{name:24s} threads {nt}: min {fmt(r['min_s'])}, median {fmt(r['median_s'])} "
                  f"(n={len(times)}, warm-up {fmt(warm)}; loadavg before: {la}"
                  + (f"; others' CPU before runs max {max(gate.seen):.0%}" if gate.seen else "") + f"){extra}", flush=True)
    total = time.perf_counter() - t_start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"\n| workload | threads | min | median | items/s (min) |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['desc']} | {r['threads']} | {fmt(r['min_s'])} | {fmt(r['median_s'])} | "
              f"{r['items'] / r['min_s']:.2f} |")
    print(f"\ntotal {total:.0f} s, peak RSS of the process {rss:.0f} MiB, loadavg now {loadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch=torch.__version__, results=results, total_s=total), f, indent=1)


if __name__ == "__main__":
    main()
