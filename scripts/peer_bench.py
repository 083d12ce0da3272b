#!/usr/bin/env python3
"""Training speed side by side with what a user would pick instead (issue 13).

For each pair, the project's trainer step (the throughput bench: forward, backward, clipping,
AdamW) and the same model in PyTorch eager with Hugging Face `transformers`, at the same
dimensions and batch (16 x 256 random tokens, vocabulary 4096), one process per measurement,
alternating ours and theirs, at 1 and 2 threads:

  baseline demo            <-> LlamaForCausalLM  (config from `native-trainer config`)
  itera-lite demo, no MoE  <-> MambaForCausalLM  (the same config; HF's CPU path)
  itera-lite demo          <-> JambaForCausalLM  with no attention layer and top-2 of 8 experts
                                                 of the same width in every block
  itera-lite demo          <-> LlamaForCausalLM  at the baseline's dims (`lite-llama`: the SSM
                                                 against the Transformer a user would train)

Ratios depend on the CPU (its vector ISA most: the two sides' kernels differ per ISA); the table
names the machine's CPU first.

Usage (from the repository root; installs torch and transformers from PyPI into
target/peer-venv on first use, then re-runs itself there):

  python3 scripts/peer_bench.py                       # every pair, 1 and 2 threads, 2 rounds
  python3 scripts/peer_bench.py --threads 1 --pairs baseline --rounds 3
  python3 scripts/peer_bench.py --out target/peer-bench.json

On a GPU machine without a Rust toolchain (docs/gpu.md): write the Hugging Face configs here,
carry them and the CUDA throughput bench (`scripts/build-cuda.sh --bench`), and run there with a
Python that has torch and transformers (`--no-venv`):

  python3 scripts/peer_bench.py --write-configs .bin/peer-configs.json          # here
  python3 scripts/peer_bench.py --no-venv --device cuda --configs .bin/peer-configs.json \
      --ours-bin throughput-cuda --presets demo,seed --pairs baseline,mamba --rounds 2   # there

On CUDA both sides train at the GPU bench's batch, 32 x 256 of vocabulary 2048, in f32 (PyTorch's
TF32 matmuls left off, its default), each timed span ended by a device synchronisation. There the
GPU's matmul peak is measured too (8192^3 products in bf16 and in f32, PyTorch, TF32 off); on the
CPU, PyTorch's f32 2048^3 product at each thread count, and the CPU's own f32 multiply-add rate
(the throughput bench's `--fma-peak`: a register-only FMA loop in the widest vectors the CPU has,
on every thread at once), the ceiling of both sides' products: PyTorch's BLAS need not reach it
(MKL runs its AVX2 kernels on AMD CPUs that have AVX-512). Each row gets its model FLOPs
utilisation against them: training FLOPs per token taken as 6 x parameters (the active ones of a sparse MoE),
plus 12 x layers x width x context for attention (PaLM's count, the Transformer only), times
tokens/s, over the peak. On the CPU both sides spend most of a step in f32 products, so the
utilisation says how much any speed-up can still move a ratio.
Our CUDA rows run what `Kernels::for_device` picks, the device's fused ops included
(`Kernels::device_ops`); `--elementary-ops` times them with candle's elementary ops instead (the
throughput bench's `, elementary ops` rows).

Figures depend on the machine and on what else runs: use a quiet one. On the CPU the FMA loop
runs again after every round, and each row shows the range of those readings: a row whose low
reading is well under the rest ran while the cores were shared (a VM's neighbours), both sides'
figures with it. It catches cores taken away, not every disturbance: PyTorch's Llama has fallen
from about 5,300 to 3,400 tokens/s within an hour while the loop read both cores' worth. Not a test.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "target", "peer-venv")
# The throughput bench's shapes: on the CPU 16 x 256 of vocabulary 4096, on CUDA 32 x 256 of 2048.
SHAPES = {"cpu": (4096, 16, 256), "cuda": (2048, 32, 256)}
# The throughput bench's CUDA rows without the device's fused ops (`Kernels::device_ops` off).
ELEMENTARY_ROWS = ["baseline demo, elementary ops", "itera-lite demo, elementary ops", "baseline seed, elementary ops"]

PAIRS = {
    # name: (our bench run, with {} for the preset; native-trainer config flags; peer class)
    "baseline": ("baseline {}", ["--model", "baseline"], "LlamaForCausalLM"),
    "mamba": ("itera-lite {}, no MoE", ["--model", "itera-lite", "--experts", "0"], "MambaForCausalLM"),
    "jamba": ("itera-lite {}", ["--model", "itera-lite"], "JambaForCausalLM"),
    # issue 13's second goal: the SSM against the Transformer a user would otherwise train
    # (Itera-Lite demo 4.38M parameters, 3.20M active; the Llama at the baseline's dims, 4.26M)
    "lite-llama": ("itera-lite {}", ["--model", "baseline"], "LlamaForCausalLM"),
}


def cpu_name():
    """This machine's CPU as a user would name it: model, family/model numbers, vector ISA."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (x.strip() for x in line.split(":", 1))
                    info.setdefault(k, v)
    except OSError:
        return "unknown CPU"
    flags = info.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')}, "
            f"model {info.get('model', '?')}), {isa}, {os.cpu_count()} logical CPUs")


def ensure_venv():
    """Re-runs this script inside target/peer-venv (created and filled from PyPI if needed)."""
    if os.path.abspath(sys.prefix) == os.path.abspath(VENV) or "--no-venv" in sys.argv:
        return
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        print(f"creating {VENV} (torch and transformers from PyPI)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    check = subprocess.run([py, "-c", "import torch, transformers"], capture_output=True)
    if check.returncode != 0:
        subprocess.run([py, "-m", "pip", "install", "-q", "torch", "transformers"], check=True)
    os.execv(py, [py] + sys.argv)


def hf_config(flags, preset, vocab):
    """The Hugging Face config.json that `native-trainer export` writes for this preset."""
    cmd = ["cargo", "run", "-q", "--release", "-p", "native-trainer", "--"]  # the bench builds release too
    out = subprocess.run(cmd + ["config", "--preset", preset, "--vocab-size", str(vocab)] + flags,
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# The project's throughput bench, built in release by `cargo bench` (arguments after "--").
BENCH = ["cargo", "bench", "-q", "-p", "itera-model", "--bench", "throughput"]


def config_key(name, preset, device):
    return f"{name} {preset} {device}"


def ours(run, threads, ours_bin=None, autocast="f32"):
    """Training tokens/s of one run of the project's throughput bench (1 warm-up, then
    ITERA_BENCH_STEPS timed steps, default 3); with `ours_bin`, that binary on CUDA; `autocast`:
    the dtype of its matrix products (ITERA_AUTOCAST)."""
    if ours_bin:
        cmd = [ours_bin, "--device", "cuda", "--no-kernels", "--run", run]
    else:
        cmd = BENCH + ["--", "--quick", "--no-kernels", "--threads", str(threads), "--run", run]
    env = dict(os.environ, ITERA_AUTOCAST=autocast)
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == run:
            params = float(re.match(r"([\d.]+)M", cells[1]).group(1)) * 1e6
            active = re.search(r"\(([\d.]+)M active\)", cells[1])
            return {"tok_per_s": float(cells[-1]), "params": params,
                    "active": float(active.group(1)) * 1e6 if active else params}
    raise RuntimeError(f"no row `{run}` in the bench's output:\n{out}")


def peer_model(cls, cfg):
    import transformers

    if cls == "LlamaForCausalLM":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    if cls == "MambaForCausalLM":
        return transformers.MambaForCausalLM(transformers.MambaConfig(**cfg))
    # Jamba without attention: an attention layer would sit at `attn_layer_offset` (past the
    # last layer here); a MoE feed-forward in every block, top-2 of the same experts.
    layers = cfg["num_hidden_layers"]
    jamba = transformers.JambaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_hidden_layers=layers,
        intermediate_size=cfg["expert_intermediate_size"], num_experts=cfg["num_experts"],
        num_experts_per_tok=cfg["num_experts_per_tok"], expert_layer_period=1, expert_layer_offset=0,
        attn_layer_period=layers + 1, attn_layer_offset=layers, num_attention_heads=4, num_key_value_heads=4,
        mamba_d_state=cfg["state_size"], mamba_d_conv=cfg["conv_kernel"], mamba_expand=cfg["expand"],
        mamba_dt_rank=cfg["time_step_rank"], mamba_conv_bias=cfg["use_conv_bias"], mamba_proj_bias=cfg["use_bias"],
        tie_word_embeddings=True, use_mamba_kernels=False, output_router_logits=True,
        router_aux_loss_coef=cfg["router_aux_loss_coef"], rms_norm_eps=cfg["layer_norm_epsilon"])
    model = transformers.JambaForCausalLM(jamba)
    assert not any("self_attn" in n for n, _ in model.named_parameters()), "Jamba peer has an attention layer"
    return model


def peer_child(cls, cfg, threads, steps, device, autocast="f32"):
    """One measurement in this process: `threads` threads (CPU), 1 warm-up step, then `steps` timed;
    `autocast` bf16: the forward and loss under `torch.autocast` (f32 weights and optimizer)."""
    import contextlib

    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = peer_model(cls, cfg).to(device)
    model.train()
    vocab, batch, ctx = SHAPES[device]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)

    def mixed():
        if autocast == "f32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype={"bf16": torch.bfloat16, "f16": torch.float16}[autocast])

    def step():
        ids = torch.randint(0, vocab, (batch, ctx), generator=gen).to(device)
        with mixed():
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss  # transformers shifts the labels itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    sync()
    t = time.perf_counter()
    step()
    sync()
    warm = time.perf_counter() - t
    # The slow peers (Mamba's CPU path loops over time in Python) get one timed step.
    steps = steps if warm < 20 else 1
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    took = time.perf_counter() - t
    return {"tok_per_s": batch * ctx * steps / took, "params": params, "steps": steps,
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}


def peak_child(device, threads):
    """The measured matmul throughput (FLOP/s) of PyTorch's large square products: on CUDA in
    bf16 and in f32 (TF32 off), 8192^3; on the CPU in f32 at `threads` threads, 2048^3 (what its
    BLAS reaches where nothing else limits it; the reference for the CPU rows' utilisation)."""
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
        n, iters, kinds = 2048, 10, (("f32", torch.float32),)
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        n, iters, kinds = 8192, 20, (("bf16", torch.bfloat16), ("f32", torch.float32))

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    out = {}
    for name, dtype in kinds:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync()
        t = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync()
        out[name] = 2 * n**3 * iters / (time.perf_counter() - t)
    return out


def peak(device, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or 1), MKL_NUM_THREADS=str(threads or 1))
    cmd = [sys.executable, __file__, "--no-venv", "--peak-child", device, str(threads or 0)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def fma_peak(threads):
    """The CPU's f32 fused multiply-add rate at `threads` threads (FLOP/s) and its ISA: the
    throughput bench's `--fma-peak` register-only loop in the widest vectors the CPU has, the
    ceiling of every product whoever computes it (PyTorch's BLAS may not use the widest: MKL
    runs its AVX2 kernels on AMD CPUs)."""
    cmd = BENCH + ["--", "--fma-peak", "--threads", str(threads)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    m = re.search(r"fma peak: (\S+) ([\d.]+) GFLOP/s", out)
    if not m:
        raise RuntimeError(f"no `fma peak:` line in the bench's output:\n{out}")
    return float(m.group(2)) * 1e9, m.group(1)


def flops_per_token(transformer, cfg, params, ctx):
    """Training FLOPs per token: 6 N (N the parameters a token uses: the active ones of a sparse
    MoE), and PaLM's attention term for a Transformer (cfg: its Hugging Face config). The
    selective scan's own arithmetic is not counted (as the model FLOPs of Mamba papers)."""
    f = 6 * params
    if transformer:
        f += 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * ctx
    return f


def theirs(cls, cfg, threads, steps, device, autocast="f32"):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--no-venv", "--peer-child", cls, json.dumps(cfg), str(threads), str(steps), device,
           autocast]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts (CPU only)")
    p.add_argument("--pairs", default="baseline,mamba,jamba", help="comma-separated: baseline, mamba, jamba, "
                   "lite-llama (Itera-Lite against the baseline's Llama)")
    p.add_argument("--presets", default="demo", help="comma-separated model presets (the CPU bench: demo only)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of ours and theirs per pair and thread count")
    p.add_argument("--steps", type=int, default=None, help="timed steps per PyTorch measurement (default: 3 on the "
                   "CPU, 10 on CUDA; the slow peers: 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--ours-bin", help="CUDA: the throughput bench binary (`scripts/build-cuda.sh --bench`)")
    p.add_argument("--configs", help="read the Hugging Face configs from this JSON (written by --write-configs) "
                   "instead of asking `native-trainer config` (a machine without cargo)")
    p.add_argument("--write-configs", metavar="FILE", help="write the configs of every pair and preset, for both "
                   "devices' shapes, to FILE and stop")
    p.add_argument("--elementary-ops", action="store_true", help="CUDA: time our rows without the device's fused "
                   "ops (the throughput bench's `, elementary ops` rows: baseline demo and seed, itera-lite demo)")
    p.add_argument("--no-venv", action="store_true", help="use this Python (it must have torch and transformers)")
    p.add_argument("--out", help="also write the figures as JSON here")
    p.add_argument("--autocast", choices=["f32", "bf16", "f16"], default="f32",
                   help="the dtype of both sides' matrix products: ours through `ops::set_autocast` (ITERA_AUTOCAST), "
                   "PyTorch's forward under torch.autocast; weights and optimizer f32 on both")
    p.add_argument("--peer-child", nargs=6, help=argparse.SUPPRESS)
    p.add_argument("--peak-child", nargs=2, metavar=("DEVICE", "THREADS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.peak_child:
        print(json.dumps(peak_child(a.peak_child[0], int(a.peak_child[1]))))
        return
    if a.peer_child:
        cls, cfg, threads, steps, device, autocast = a.peer_child
        print(json.dumps(peer_child(cls, json.loads(cfg), int(threads), int(steps), device, autocast)))
        return
    presets = a.presets.split(",")
    pairs = a.pairs.split(",")
    for name in pairs:
        if name not in PAIRS:
            sys.exit(f"error: unknown pair `{name}` (expected baseline, mamba or jamba)")
    if a.write_configs:
        configs = {config_key(n, pr, dev): hf_config(PAIRS[n][1], pr, SHAPES[dev][0])
                   for n in pairs for pr in presets for dev in SHAPES}
        with open(a.write_configs, "w") as f:
            json.dump(configs, f, indent=1)
        print(f"wrote {len(configs)} configs to {a.write_configs}")
        return
    if a.device == "cpu" and presets != ["demo"]:
        sys.exit("error: on the CPU the throughput bench runs the peers' shapes for the demo preset only")
    if a.device == "cuda" and not a.ours_bin:
        sys.exit("error: --device cuda needs --ours-bin (the CUDA throughput bench; scripts/build-cuda.sh --bench)")
    configs = None
    if a.configs:
        with open(a.configs) as f:
            configs = json.load(f)
    steps = a.steps or (10 if a.device == "cuda" else 3)
    ensure_venv()
    if a.device == "cpu":
        subprocess.run(BENCH + ["--no-run"], cwd=ROOT,
                       check=True)
    thread_counts = a.threads if a.device == "cpu" else [0]
    rows = []
    cpu = cpu_name()
    print(f"CPU: {cpu}\n")
    fma_col = " FMA loop GFLOP/s |" if a.device == "cpu" else ""
    print(f"| ours | peer | threads | params ours / peer | ours tok/s | peer tok/s | ratio |{fma_col}")
    print("|---|---|---|---|---|---|---|" + ("---|" if fma_col else ""))
    peaks = {}  # thread count (CPU) or 0 (CUDA) -> measured matmul FLOP/s by dtype
    for threads in thread_counts:
        if a.device == "cpu":
            peaks[threads] = peak("cpu", threads)
            peaks[threads]["fma"], fma_isa = fma_peak(threads)
        for preset in presets:
            for name in pairs:
                run, flags, cls = PAIRS[name]
                run = run.format(preset)
                if a.elementary_ops:
                    run += ", elementary ops"
                    if run not in ELEMENTARY_ROWS:
                        sys.exit(f"error: the throughput bench has no row `{run}` (it has {', '.join(ELEMENTARY_ROWS)})")
                key = config_key(name, preset, a.device)
                if configs is not None:
                    if key not in configs:
                        sys.exit(f"error: {a.configs} has no config `{key}` (write it with --write-configs)")
                    cfg = configs[key]
                else:
                    cfg = hf_config(flags, preset, SHAPES[a.device][0])
                mine, peer, fma = [], [], []
                for _ in range(a.rounds):
                    mine.append(ours(run, threads, a.ours_bin if a.device == "cuda" else None, a.autocast))
                    peer.append(theirs(cls, cfg, threads, steps, a.device, a.autocast))
                    if a.device == "cpu":
                        # The machine's state at this round: a low figure means the cores were
                        # shared with other work (a VM's), and both sides' figures with it.
                        fma.append(fma_peak(threads)[0])
                m = statistics.median(r["tok_per_s"] for r in mine)
                t = statistics.median(r["tok_per_s"] for r in peer)
                row = {"ours": run, "peer": cls, "pair": name, "preset": preset, "cfg": cfg,
                       "device": peer[0]["device"], "threads": threads or None,
                       "params_ours": mine[0]["params"], "params_peer": peer[0]["params"],
                       "active_ours": mine[0]["active"],
                       "ours_tok_per_s": [r["tok_per_s"] for r in mine],
                       "peer_tok_per_s": [r["tok_per_s"] for r in peer], "ratio": m / t,
                       "peer_steps": peer[0]["steps"], "torch": peer[0]["torch"], "autocast": a.autocast,
                       "transformers": peer[0]["transformers"]}
                fma_cell = ""
                if fma:
                    row["fma_loop_flops"] = fma  # one reading per round, after it
                    fma_cell = f" {min(fma) / 1e9:.0f}-{max(fma) / 1e9:.0f} |"
                rows.append(row)
                print(f"| {run} | {cls} | {threads or peer[0]['device']} | {mine[0]['params'] / 1e6:.2f}M / "
                      f"{peer[0]['params'] / 1e6:.2f}M | {m:.0f} | {t:.0f} | {m / t:.2f}x |{fma_cell}", flush=True)
    vocab, batch, ctx = SHAPES[a.device]
    if a.device == "cuda":
        peaks[0] = peak("cuda", 0)
        p0 = peaks[0]
        print(f"\nmatmul peak measured: bf16 {p0['bf16'] / 1e12:.1f} TFLOP/s, f32 {p0['f32'] / 1e12:.1f} TFLOP/s")
    else:
        print("\nmatmul peak measured (PyTorch, f32, 2048^3): " +
              ", ".join(f"{t} thread(s) {v['f32'] / 1e9:.1f} GFLOP/s" for t, v in peaks.items()))
        print(f"FMA loop (f32, {fma_isa}, every thread at once): " +
              ", ".join(f"{t} thread(s) {v['fma'] / 1e9:.1f} GFLOP/s" for t, v in peaks.items()))
    kinds = list(next(iter(peaks.values())).keys())
    names = {"bf16": "bf16 matmul", "f32": "f32 matmul", "fma": "FMA loop"}
    of = " / ".join(names[k] for k in kinds)
    print("\nModel FLOPs per second over each peak (6 N, N the active parameters, plus a Transformer's attention):")
    print(f"| ours | threads | ours ({of}) | peer ({of}) |")
    print("|---|---|---|---|")
    for row in rows:
        pk = peaks[row["threads"] or 0]
        row["matmul_peak_flops"] = pk
        for side in ("ours", "peer"):
            transformer = row["pair"] == "baseline" if side == "ours" else row["peer"] == "LlamaForCausalLM"
            params = row["active_ours"] if side == "ours" else row["params_peer"]
            fpt = flops_per_token(transformer, row["cfg"], params, ctx)
            tps = statistics.median(row[f"{side}_tok_per_s"])
            row[f"flops_per_token_{side}"] = fpt
            row[f"mfu_{side}"] = {k: tps * fpt / v for k, v in pk.items()}
        fmt = lambda m: " / ".join(f"{m[k]:.1%}" for k in kinds)  # noqa: E731
        print(f"| {row['ours']} | {row['threads'] or row['device']} | {fmt(row['mfu_ours'])} | {fmt(row['mfu_peer'])} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": a.device, "cpu": cpu, "batch": batch, "ctx": ctx, "vocab": vocab, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
