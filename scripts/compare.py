#!/usr/bin/env python3
"""Compare the speed of PyTorch with the `ibn-net` crate (burn) on IBN-Net models.

PyTorch side: the model definitions from `make_fixtures.py` (full size, 1000
classes, PyTorch's default init), timed in this process.
Rust side: `cargo run --release --example bench -- ... --json`, which prints one
JSON object per line on stdout:

    {"model": str, "batch": int, "mode": "eval"|"train", "median_ms": float,
     "peak_mib": float|null, "device": str}

Other stdout lines are ignored. Instead of running cargo, results can be read
from a file holding such lines (`--rust-json FILE`), or the Rust side can be
skipped altogether (`--skip-rust`).

Timing: inference is `model.eval()` under `torch.inference_mode()`, 2 warm-up
runs, then the median of `--iters` timed runs. Training (batch 8, the models
named by `--train-models`, resnet50_ibn_a by default) is one SGD step (lr 0.01, momentum 0.9) with cross-entropy on random
labels: forward + backward + step, 1 warm-up step, median of `--iters`.

Order: one model at a time, the Rust side then the PyTorch side, so that the
two times of a ratio are taken seconds apart. `--rounds N` repeats the whole
sequence N times and reports per case the median time of each side and the
median of the N per-round ratios, with their range: on shared machines whose
speed drifts over minutes, a single pair of runs says little.

Memory (`--memory`, Linux, CPU devices): each case then runs in a process of its own on
both sides, and the table adds each side's peak working memory: how far the process's
resident memory (`VmRSS`) rose above what it held once the model and the input existed,
over the warm-up and timed runs (the peak, `VmHWM`, is reset through
`/proc/self/clear_refs` first). That is the activations, scratch buffers and, in training,
gradients and optimizer state; the model's weights and the libraries are not counted.

Usage:
    python3 scripts/compare.py                         # both sides, Markdown table
    python3 scripts/compare.py --rounds 3              # 3 alternating rounds
    python3 scripts/compare.py --memory                # adds peak working memory
    python3 scripts/compare.py --models resnext50_ibn_a --batches 8 \
        --train-models resnext50_ibn_a                 # its training step too
    python3 scripts/compare.py --skip-rust --iters 3   # PyTorch only
    python3 scripts/compare.py --rust-json rust.jsonl --out BENCH.md
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)
from make_fixtures import named_model  # noqa: E402  (needs the sys.path entry above)

DEFAULT_MODELS = ["resnet18_ibn_a", "resnet50_ibn_a", "resnet50_ibn_b",
                  "resnext50_ibn_a", "densenet121_ibn_a"]
TRAIN_MODELS = ["resnet50_ibn_a"]
TRAIN_BATCH = 8
EVAL_WARMUP = 2
TRAIN_WARMUP = 1
IMAGE = (3, 224, 224)


# ---------------------------------------------------------------------------
# PyTorch timing
# ---------------------------------------------------------------------------
def _sync(device):
    """Wait for queued GPU work, so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_mib(field):
    """A field of /proc/self/status (`VmRSS`, `VmHWM`) in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _measure(fn, warmup, iters, device):
    """Run `fn` `warmup` times untimed, then `iters` times.

    Returns (median ms, peak working memory in MiB or None): the rise of the resident
    memory over the runs above what it was before them (see the module docstring).
    """
    before = _status_mib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        reset = True
    except OSError:
        reset = False
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    peak = _status_mib("VmHWM")
    mib = max(peak - before, 0.0) if reset and before is not None and peak is not None else None
    return statistics.median(times), mib


def time_torch_eval(name, batch, iters, device):
    """(median ms, peak MiB) of one inference forward pass of model `name` at `batch`."""
    model = named_model(name).to(device).eval()
    x = torch.randn(batch, *IMAGE, device=device)

    def step():
        with torch.inference_mode():
            model(x)

    return _measure(step, EVAL_WARMUP, iters, device)


def time_torch_train(name, batch, iters, device):
    """(median ms, peak MiB) of one SGD training step (forward, backward, update) of `name`."""
    model = named_model(name).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, *IMAGE, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return _measure(step, TRAIN_WARMUP, iters, device)


def run_cases(models, batches, train_models=()):
    """The (model, batch, mode) cases of a run: every model and batch in evaluation, plus
    the training step of each model also in `train_models`."""
    out = [(name, batch, "eval") for name in models for batch in batches]
    out += [(name, TRAIN_BATCH, "train") for name in models if name in train_models]
    return out


def torch_case(case, iters, device):
    """(median ms, peak MiB or None) of one case, in this process."""
    name, batch, mode = case
    torch.manual_seed(0)
    run = time_torch_train if mode == "train" else time_torch_eval
    return run(name, batch, iters, device)


def torch_case_subprocess(case, iters, device, threads):
    """`torch_case` in a fresh Python process (so that its memory is the case's alone)."""
    name, batch, mode = case
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-case", f"{name},{batch},{mode}",
           "--iters", str(iters), "--torch-device", str(device), "--threads", str(threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    if proc.returncode != 0:
        sys.exit(f"the PyTorch case {case} exited with status {proc.returncode}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    return rec["median_ms"], rec["peak_mib"]


def run_torch(case_list, iters, device, threads=None):
    """Time the given cases; with `threads`, each in a process of its own using that many.

    Returns a dict {(model, batch, mode): (median_ms, peak_mib or None)}.
    """
    results = {}
    for case in case_list:
        if threads is None:
            res = torch_case(case, iters, device)
        else:
            res = torch_case_subprocess(case, iters, device, threads)
        results[case] = res
        name, batch, mode = case
        log(f"pytorch {name:<18} batch {batch:<3} {mode:<5} {res[0]:10.2f} ms")
    return results


# ---------------------------------------------------------------------------
# Rust timing
# ---------------------------------------------------------------------------
def parse_rust_lines(lines):
    """Parse the bench example's JSON lines; other lines are skipped.

    Returns ({(model, batch, mode): (median_ms, peak_mib or None)}, sorted list of devices
    seen).
    """
    results, devices = {}, set()
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
            key = (str(rec["model"]), int(rec["batch"]), str(rec["mode"]))
            peak = rec.get("peak_mib")
            results[key] = (float(rec["median_ms"]), None if peak is None else float(peak))
        except (ValueError, KeyError, TypeError):
            continue
        if rec.get("device"):
            devices.add(str(rec["device"]))
    return results, sorted(devices)


def rust_command(models, batches, iters, features, device, no_default_features, extra=()):
    """The cargo command line that runs the crate's bench example (`extra`: its options)."""
    cmd = ["cargo", "run", "--release", "--example", "bench"]
    if no_default_features:
        cmd.append("--no-default-features")
    if features:
        cmd += ["--features", features]
    cmd += ["--", "--models", ",".join(models),
            "--batches", ",".join(str(b) for b in batches),
            "--iters", str(iters), "--json", *extra]
    if device:
        cmd += ["--device", device]
    return cmd


def run_rust(cmd):
    """Run `cmd` in the repo root (cargo's stderr passes through); parse its stdout."""
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/ibn-target"))
    log("running: " + " ".join(cmd) + f"  (CARGO_TARGET_DIR={env['CARGO_TARGET_DIR']})")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=None, text=True)
    if proc.returncode != 0:
        sys.exit(f"cargo exited with status {proc.returncode}")
    return parse_rust_lines(proc.stdout.splitlines())


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def _command_output(cmd):
    """First line of a command's stdout, or 'unknown' when it cannot run."""
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, timeout=30).stdout.strip()
        return out.splitlines()[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model():
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "Model", "cpu model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(threads, torch_device, rust_devices):
    """Key/value pairs that describe the machine and the software versions."""
    env = [
        ("date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("arch (`uname -m`)", _command_output(["uname", "-m"])),
        ("CPU", cpu_model()),
        ("cores", str(os.cpu_count())),
        ("torch", torch.__version__),
        ("torch device", str(torch_device)),
        ("threads (torch)", str(threads)),
        ("rustc", _command_output(["rustc", "--version"])),
    ]
    if torch_device.type == "cuda":
        env.append(("GPU", torch.cuda.get_device_name(torch_device)))
        env.append(("PyTorch TF32 (cuDNN conv / matmul)",
                    f"{torch.backends.cudnn.allow_tf32} / {torch.backends.cuda.matmul.allow_tf32}"))
    if rust_devices:
        env.append(("ibn-net device", ", ".join(rust_devices)))
    return env


def _fmt(value, digits=2):
    """A number for the table, or an em dash when absent."""
    return "—" if value is None else f"{value:.{digits}f}"


def _mib_cell(values):
    """Median MiB over the rounds, with the range when the rounds differ by 1 MiB or more."""
    if not values:
        return "—"
    cell = f"{statistics.median(values):.0f}"
    if max(values) - min(values) >= 1:
        cell += f" ({min(values):.0f}-{max(values):.0f})"
    return cell


def _median_or_none(values):
    """The median of the values that are not None, or None when there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def combine(torch_rounds, rust_rounds):
    """Per case, over the rounds: (median PyTorch ms, median ibn-net ms, per-round ratios,
    PyTorch MiB per round, ibn-net MiB per round; rounds without memory figures left out).

    Each argument is a list (one entry per round) of {(model, batch, mode): (ms, MiB or
    None)}; a ratio pairs the two sides' times of the same round.
    """
    keys = set().union(*torch_rounds, *rust_rounds)
    out = {}
    for key in keys:
        pts = [r[key] for r in torch_rounds if key in r]
        rss = [r[key] for r in rust_rounds if key in r]
        ratios = [rr[key][0] / tr[key][0] for tr, rr in zip(torch_rounds, rust_rounds)
                  if key in tr and key in rr and tr[key][0]]
        out[key] = (_median_or_none(ms for ms, _ in pts), _median_or_none(ms for ms, _ in rss),
                    ratios, [mib for _, mib in pts if mib is not None],
                    [mib for _, mib in rss if mib is not None])
    return out


def markdown(env, cases, models, rounds=1):
    """Render the header and the comparison table as Markdown; `cases` as from `combine`."""
    order = {m: i for i, m in enumerate(models)}
    keys = sorted(cases,
                  key=lambda k: (order.get(k[0], len(order)), k[0], k[2] != "eval", k[1]))
    lines = ["# IBN-Net: PyTorch vs ibn-net (burn)", ""]
    lines += [f"- {k}: {v}" for k, v in env]
    memory = any(c[3] or c[4] for c in cases.values())
    head = "| model | batch | mode | PyTorch ms | ibn-net ms | ratio (ibn-net / PyTorch) |"
    rule = "|---|---:|---|---:|---:|---:|"
    if rounds > 1:
        head += " ratio range |"
        rule += "---:|"
    if memory:
        head += " PyTorch peak MiB | ibn-net peak MiB | memory ratio |"
        rule += "---:|---:|---:|"
    lines += ["", head, rule]
    for key in keys:
        pt, rs, ratios, pt_mib, rs_mib = cases[key]
        ratio = f"{statistics.median(ratios):.2f}×" if ratios else "—"
        row = f"| {key[0]} | {key[1]} | {key[2]} | {_fmt(pt)} | {_fmt(rs)} | {ratio} |"
        if rounds > 1:
            row += f" {min(ratios):.2f}-{max(ratios):.2f}× |" if ratios else " — |"
        if memory:
            pt_med, rs_med = _median_or_none(pt_mib), _median_or_none(rs_mib)
            mem_ratio = f"{rs_med / pt_med:.2f}×" if pt_med and rs_med is not None else "—"
            row += f" {_mib_cell(pt_mib)} | {_mib_cell(rs_mib)} | {mem_ratio} |"
        lines.append(row)
    if rounds > 1:
        lines += ["", f"{rounds} rounds (per model, ibn-net then PyTorch): median of each "
                  "side's per-round median wall-clock time per call; the ratio is the median "
                  "of the per-round ratios, with their range. Ratio > 1 means ibn-net is slower."]
    else:
        lines += ["", "Median wall-clock time per call; ratio > 1 means ibn-net is slower."]
    if memory:
        lines += ["", "Peak working memory: each case in a process of its own, the rise of the "
                  "resident memory over the warm-up and timed runs above what the process held "
                  "once the model and the input existed: median over the rounds, with their range "
                  "where they differ. Memory ratio (of the medians) > 1 means ibn-net needs "
                  "more."]
    return "\n".join(lines) + "\n"


def log(msg):
    """Progress message on stderr (stdout carries the table)."""
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated model names (default: %(default)s)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default: 1,8)")
    p.add_argument("--iters", type=int, default=10, help="timed runs per case (default: 10)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternating rounds of both sides (default: 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    p.add_argument("--torch-device", default="cpu", help="PyTorch device (default: cpu)")
    p.add_argument("--no-tf32", action="store_true",
                   help="CUDA: turn off TF32 in cuDNN convolutions and matmuls (PyTorch's "
                        "default lets cuDNN use TF32), so both sides compute in float32")
    p.add_argument("--train-models", default=",".join(TRAIN_MODELS),
                   help=f"comma-separated models whose training step (batch {TRAIN_BATCH}) is "
                        "timed too, among --models (default: %(default)s)")
    p.add_argument("--no-train", action="store_true", help="skip the training steps")
    p.add_argument("--features", default="flex",
                   help="cargo --features for the bench example (default: flex)")
    p.add_argument("--no-default-features", action="store_true",
                   help="pass --no-default-features to cargo")
    p.add_argument("--device", default="flex",
                   help="--device passed to the bench example (default: flex)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--skip-rust", action="store_true", help="time PyTorch only")
    src.add_argument("--rust-json", metavar="FILE",
                     help="read the Rust results (JSON lines) from FILE instead of running cargo")
    p.add_argument("--memory", action="store_true",
                   help="run each case in a process of its own on both sides and add their "
                        "peak working memory to the table (Linux, CPU devices)")
    p.add_argument("--out", metavar="FILE", help="also write the Markdown report to FILE")
    p.add_argument("--torch-case", metavar="MODEL,BATCH,MODE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    args.train_models = [] if args.no_train else [
        m.strip() for m in args.train_models.split(",") if m.strip()]
    if args.iters < 1:
        p.error("--iters must be at least 1")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.memory and (args.torch_device != "cpu" or args.device not in ("flex", "ndarray")):
        p.error("--memory measures host memory: it needs --torch-device cpu and a CPU --device")
    if args.torch_case:
        name, batch, mode = args.torch_case.split(",")
        args.torch_case = (name, int(batch), mode)
    for m in args.models + args.train_models:
        try:
            named_model_check(m)
        except (ValueError, KeyError):
            p.error(f"unknown model {m}")
    return args


def named_model_check(name):
    """Raise ValueError/KeyError when make_fixtures.py cannot build model `name`."""
    with torch.device("meta"):
        named_model(name)


def main(argv=None):
    """Time both sides and print (and optionally write) the Markdown report."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch_device = torch.device(args.torch_device)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    if args.torch_case:  # one case for a parent in --memory mode: a JSON line on stdout
        ms, mib = torch_case(args.torch_case, args.iters, torch_device)
        print(json.dumps({"median_ms": ms, "peak_mib": mib}))
        return 0

    # Rounds, and inside each round one model at a time, Rust then PyTorch: the two sides
    # of a ratio are timed seconds apart, not minutes. With --memory, each case is a
    # process of its own on both sides.
    torch_rounds, rust_rounds, rust_devices = [], [], []
    if args.rust_json:
        with open(args.rust_json) as f:
            rust_file, rust_devices = parse_rust_lines(f)
    for r in range(args.rounds):
        if args.rounds > 1:
            log(f"round {r + 1} of {args.rounds}")
        rust_res, torch_res = {}, {}
        for model in args.models:
            model_cases = run_cases([model], args.batches, args.train_models)
            # The bench example's runs: all of the model's cases at once, or one per case.
            train = ["--train-models", ",".join(args.train_models)] if args.train_models else []
            runs = [(args.batches, train or ["--no-train"])]
            if args.memory:
                runs = [([batch], [*train, "--no-eval"] if mode == "train" else ["--no-train"])
                        for _, batch, mode in model_cases]
            if args.rust_json:
                rust_res.update({k: v for k, v in rust_file.items() if k[0] == model})
            elif not args.skip_rust:
                for batches, extra in runs:
                    cmd = rust_command([model], batches, args.iters, args.features,
                                       args.device, args.no_default_features, extra)
                    res, rust_devices = run_rust(cmd)
                    if not res:
                        log(f"warning: the bench example printed no JSON results for {model}")
                    rust_res.update(res)
            torch_res.update(run_torch(model_cases, args.iters, torch_device,
                                       threads=args.threads if args.memory else None))
        rust_rounds.append(rust_res)
        torch_rounds.append(torch_res)
    report = markdown(environment(args.threads, torch_device, rust_devices),
                      combine(torch_rounds, rust_rounds), args.models, args.rounds)
    sys.stdout.write(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
