#!/usr/bin/env python3
"""One comparison table from one run: PyTorch reference, the previous implementation, this one.

For each thread count (default 1 and 2), in this order so that the three columns see the same
machine state: this checkout's criterion benches, the previous implementation's (a second
checkout, e.g. a `git worktree` of the last release), then `benches/pytorch_reference.py` (the
reference's own code, eager PyTorch). Each PyTorch workload runs in its own process, so that its
peak resident memory (from `wait4`) is that workload's; ours comes from the sampling bench's
`peak_rss` children and the training bench's own report.

Workloads (DESIGN.md 5): S16 sample b1 and b64 with CFG 1.5 + denoise, S16 denoise b1, S16
training step b32, S32 (sprite shape) training step b32, T32 sample b1 and b64. Ours are
criterion medians (`sample_s16/cached/1`, `.../64`, `denoise_s16/1`, `training/s16_step_batch32`,
`training/s32_step_batch32`, `sample_t32/cached/1`, `.../64`);
PyTorch's are its script's minimum and median.

Run (about 35 minutes on 2 vCPUs; needs torch, numpy and apple/ml-tarflow's transformer_flow.py):
    git worktree add /tmp/prev <previous commit>
    python3 benches/compare.py --ref /path/to/ml-tarflow/transformer_flow.py --prev /tmp/prev \
        --out /tmp/compare.md
Options: --threads 1,2   --prev-target DIR (its CARGO_TARGET_DIR)   --skip-pytorch   --skip-prev
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (key, label, criterion path of ours, PyTorch workload, items per run)
WORKLOADS = [
    ("s16_b1", "S16 sample b1, CFG 1.5 + denoise", "sample_s16/cached/1", "s16_sample_denoise_b1", 1),
    ("s16_denoise", "S16 denoise b1", "denoise_s16/1", "s16_denoise_b1", 1),
    ("s16_b64", "S16 sample b64, CFG 1.5 + denoise", "sample_s16/cached/64", "s16_sample_denoise_b64", 64),
    ("t32_b1", "T32 sample b1", "sample_t32/cached/1", "t32_sample_b1", 1),
    ("t32_b64", "T32 sample b64", "sample_t32/cached/64", "t32_sample_b64", 64),
    ("train", "S16 training step b32", "training/s16_step_batch32", "s16_train_b32", 32),
    ("train32", "S32 training step b32", "training/s32_step_batch32", "s32_train_b32", 32),
]
# Our peak-RSS probes (sampling bench `peak_rss/<name>/<b>` lines) per workload key.
RSS_PROBE = {"s16_b1": "s16/1", "s16_b64": "s16/64", "t32_b1": "t32/1", "t32_b64": "t32/64"}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    name = re.search(r"model name\s*:\s*(.*)", text)
    flags = re.search(r"flags\s*:\s*(.*)", text)
    has = set(flags.group(1).split()) if flags else set()
    simd = "AVX-512" if "avx512f" in has else ("AVX2+FMA" if "avx2" in has else "no AVX2")
    return f"{name.group(1).strip() if name else 'unknown CPU'}, {os.cpu_count()} vCPU, {simd}"


def run(cmd, cwd, env, capture=True):
    log(f"{cwd}$ {' '.join(cmd)}  (loadavg {loadavg()})")
    p = subprocess.run(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.STDOUT if capture else None)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout if capture else ''}")
    return p.stdout or ""


def ours(checkout, target, threads, tag):
    """Criterion medians (seconds) and peak RSS (MiB) of one checkout at one thread count."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    if target:
        env["CARGO_TARGET_DIR"] = target
    target = target or os.path.join(checkout, "target")
    base = f"{tag}_t{threads}"
    out = run(["cargo", "bench", "--bench", "sampling", "--", "cached/|denoise_s16",
               "--save-baseline", base], checkout, env)
    out += run(["cargo", "bench", "--bench", "sampling", "--", "peak_rss"], checkout, env)
    out += run(["cargo", "bench", "--bench", "training", "--", "--save-baseline", base], checkout, env)
    res = {}
    for key, _, path, _, _ in WORKLOADS:
        est = os.path.join(target, "criterion", *path.split("/"), base, "estimates.json")
        with open(est) as f:
            res[key] = {"median_s": json.load(f)["median"]["point_estimate"] / 1e9}
    for key, probe in RSS_PROBE.items():
        m = re.search(rf"peak_rss/{re.escape(probe)}\D.*?([\d.]+) MiB", out)
        if m:
            res[key]["rss_mib"] = float(m.group(1))
    m = re.search(r"peak resident memory: ([\d.]+) MiB", out)
    if m:
        # One process holds both trainers (S16 and S32): its peak is theirs together.
        for key in ("train", "train32"):
            if key in res:
                res[key]["rss_mib"] = float(m.group(1))
    return res


def pytorch(ref, threads):
    """Per workload, in its own process: min and median seconds, and the process's peak RSS."""
    res = {}
    for key, _, _, name, _ in WORKLOADS:
        js = f"/tmp/compare_pt_{name}_{threads}.json"
        cmd = [sys.executable, os.path.join(ROOT, "benches", "pytorch_reference.py"), "--ref", ref,
               "--only", name, "--threads", str(threads), "--json", js]
        log(f"$ {' '.join(cmd)}  (loadavg {loadavg()})")
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        if status != 0:
            sys.exit(f"failed: {' '.join(cmd)}")
        with open(js) as f:
            r = json.load(f)["results"][0]
        res[key] = {"median_s": r["median_s"], "min_s": r["min_s"], "rss_mib": usage.ru_maxrss / 1024}
    return res


def fmt_t(s):
    return f"{s * 1e3:.0f} ms" if s < 10 else f"{s:.2f} s"


def ratio(pt, us):
    r = pt / us
    return f"{r:.2f}x faster" if r >= 1 else f"{1 / r:.2f}x slower"


def table(results, threads_list, have_prev, have_pt):
    lines = []
    head = ["workload", "threads"]
    if have_pt:
        head.append("PyTorch (median)")
    if have_prev:
        head.append("previous")
    head += ["now"]
    if have_pt:
        head.append("now vs PyTorch")
    if have_prev:
        head.append("now vs previous")
    head.append("peak RSS now / PyTorch")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for key, label, _, _, _ in WORKLOADS:
        for t in threads_list:
            r = results[t]
            now = r["now"][key]
            row = [label, str(t)]
            if have_pt:
                row.append(fmt_t(r["pytorch"][key]["median_s"]))
            if have_prev:
                row.append(fmt_t(r["prev"][key]["median_s"]))
            row.append(f"**{fmt_t(now['median_s'])}**")
            if have_pt:
                row.append(ratio(r["pytorch"][key]["median_s"], now["median_s"]))
            if have_prev:
                row.append(ratio(r["prev"][key]["median_s"], now["median_s"]))
            rss_now = now.get("rss_mib")
            rss_pt = r.get("pytorch", {}).get(key, {}).get("rss_mib")
            row.append(f"{rss_now:.0f} / {rss_pt:.0f} MiB" if rss_now and rss_pt else
                       (f"{rss_now:.0f} MiB" if rss_now else "-"))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default=os.environ.get("TARFLOW_REF", ""))
    ap.add_argument("--prev", default="", help="checkout of the previous implementation")
    ap.add_argument("--prev-target", default="", help="its CARGO_TARGET_DIR (default PREV/target)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--skip-pytorch", action="store_true")
    ap.add_argument("--out", default="", help="write the markdown table and the raw figures here")
    args = ap.parse_args()
    threads_list = [int(t) for t in args.threads.split(",")]
    have_pt = not args.skip_pytorch
    if have_pt and not args.ref:
        sys.exit("--ref PATH/transformer_flow.py is needed (or --skip-pytorch)")
    have_prev = bool(args.prev)
    started = time.time()
    log(f"{cpu_model()}; python {platform.python_version()}")
    results = {}
    for t in threads_list:
        results[t] = {"now": ours(ROOT, os.environ.get("CARGO_TARGET_DIR", ""), t, "now")}
        if have_prev:
            results[t]["prev"] = ours(args.prev, args.prev_target, t, "prev")
        if have_pt:
            results[t]["pytorch"] = pytorch(args.ref, t)
    md = table(results, threads_list, have_prev, have_pt)
    text = (f"Machine: {cpu_model()}. One run, {time.strftime('%Y-%m-%d')}, "
            f"{(time.time() - started) / 60:.0f} minutes; ours: criterion medians; PyTorch: "
            f"median of its runs, each workload in its own process.\n\n{md}\n")
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n<!-- raw: " + json.dumps(results) + " -->\n")


if __name__ == "__main__":
    main()
