#!/usr/bin/env python3
"""Where a training step spends the GPU's time, ours beside PyTorch's (issue 11's gap).

There (a GPU machine; `run` with carry [".bin/throughput-cuda.xz", ".bin/peer-configs.json"],
after `source scripts/gpu-env.sh`):

    python3 scripts/gpu/kernel_profile.py --pair baseline --preset seed --out $OUT

runs two warm-up-plus-one training steps of our throughput bench's row (`baseline seed`) and of
the peer bench's PyTorch peer of the same dimensions (`LlamaForCausalLM`) under Nsight Compute,
which times every kernel (`gpu__time_duration.sum`, one pass, `--clock-control none`), and
prints for each side the kernels per step, their summed time per step and the kernels that take
most of it, summed by name; `--out` also gets the two CSV files (`ncu --csv`) and
`kernel-profile.json`. Steps under the profiler run slower than without it (it serialises
kernels): compare the summed kernel times with the step times of `peer_bench.py`, whose
difference is the host's share (launches, allocation, synchronisation).

Here (no GPU): `--summarise OURS.csv PEER.csv` prints the tables of two such files again.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import peer_bench  # noqa: E402  (the pairs, the config keys, the peer's training step)

STEPS = 2  # the bench's and the peer's one warm-up step, then one timed step (ITERA_BENCH_STEPS=1)
UNITS = {"nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3, "second": 1.0, "s": 1.0}


def find_ncu():
    found = shutil.which("ncu")
    if found:
        return found
    base = "/opt/nvidia/nsight-compute"
    if os.path.isdir(base):
        for version in sorted(os.listdir(base), reverse=True):
            path = os.path.join(base, version, "ncu")
            if os.access(path, os.X_OK):
                return path
    sys.exit("error: no `ncu` on PATH or under /opt/nvidia/nsight-compute (Nsight Compute)")


def profile(ncu, cmd, csv_path, env):
    """Runs `cmd` under Nsight Compute, every kernel's duration into `csv_path`."""
    full = [ncu, "--clock-control", "none", "--metrics", "gpu__time_duration.sum", "--csv",
            "--log-file", csv_path, *cmd]
    done = subprocess.run(full, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(full)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def read_kernels(csv_path):
    """(name, seconds) of every kernel in an `ncu --csv` file of the one metric."""
    with open(csv_path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's own log lines are not quoted
    rows = []
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "")
        if unit not in UNITS:
            sys.exit(f"error: {csv_path}: unknown time unit `{unit}`")
        name = r.get("Kernel Name") or r.get("Function Name") or "?"
        rows.append((name, float(r["Metric Value"].replace(",", "")) * UNITS[unit]))
    if not rows:
        sys.exit(f"error: {csv_path} holds no kernel timed by gpu__time_duration.sum")
    return rows


def summary(rows, steps=STEPS, top=20):
    """Per step: kernel count, summed time, and the `top` kernel names by time."""
    by_name = defaultdict(lambda: [0, 0.0])
    for name, secs in rows:
        short = name.split("(")[0].strip()[:90]
        by_name[short][0] += 1
        by_name[short][1] += secs
    total = sum(s for _, s in rows)
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "kernels_per_step": len(rows) / steps,
        "kernel_s_per_step": total / steps,
        "top": [{"kernel": k, "launches_per_step": n / steps, "s_per_step": s / steps, "share": s / total}
                for k, (n, s) in ranked],
    }


def show(label, s):
    print(f"\n### {label}: {s['kernels_per_step']:.0f} kernels, {s['kernel_s_per_step'] * 1e3:.2f} ms of kernel time a step")
    print("| kernel | launches / step | ms / step | share |")
    print("|---|---|---|---|")
    for t in s["top"]:
        print(f"| `{t['kernel']}` | {t['launches_per_step']:.1f} | {t['s_per_step'] * 1e3:.3f} | {t['share'] * 100:.1f}% |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", default="baseline", choices=sorted(peer_bench.PAIRS))
    p.add_argument("--preset", default="seed")
    p.add_argument("--ours-bin", default="throughput-cuda", help="the CUDA throughput bench (on PATH after gpu-env.sh)")
    p.add_argument("--configs", default=os.path.join(ROOT, ".bin", "peer-configs.json"))
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--autocast", choices=["f32", "bf16", "f16"], default="f32",
                   help="the dtype of both sides' matrix products (as peer_bench.py --autocast)")
    p.add_argument("--out", help="folder for the CSV files and kernel-profile.json")
    p.add_argument("--summarise", nargs=2, metavar=("OURS_CSV", "PEER_CSV"), help="only print the tables of two CSV files")
    a = p.parse_args()
    if a.summarise:
        for label, path in zip(("ours", "peer"), a.summarise):
            show(label, summary(read_kernels(path), top=a.top))
        return
    run, _, cls = peer_bench.PAIRS[a.pair]
    run = run.format(a.preset)
    key = peer_bench.config_key(a.pair, a.preset, "cuda")
    with open(a.configs) as f:
        configs = json.load(f)
    if key not in configs:
        sys.exit(f"error: {a.configs} has no config `{key}` (write it with peer_bench.py --write-configs)")
    out = a.out or "."
    os.makedirs(out, exist_ok=True)
    ncu = find_ncu()
    tag = f"{a.pair}-{a.preset}"
    env = dict(os.environ, ITERA_BENCH_STEPS="1", ITERA_AUTOCAST=a.autocast)
    ours_csv, peer_csv = os.path.join(out, f"ncu-ours-{tag}.csv"), os.path.join(out, f"ncu-peer-{tag}.csv")
    profile(ncu, [a.ours_bin, "--device", "cuda", "--no-kernels", "--run", run], ours_csv, env)
    profile(ncu, [sys.executable, os.path.join(ROOT, "scripts", "peer_bench.py"), "--no-venv", "--peer-child", cls,
                  json.dumps(configs[key]), "0", "1", "cuda", a.autocast], peer_csv, env)
    result = {"ours": run, "peer": cls, "steps_profiled": STEPS}
    for label, path in (("ours", ours_csv), ("peer", peer_csv)):
        result[label + "_profile"] = summary(read_kernels(path), top=a.top)
        show(f"{label} ({run if label == 'ours' else cls})", result[label + "_profile"])
    with open(os.path.join(out, "kernel-profile.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
