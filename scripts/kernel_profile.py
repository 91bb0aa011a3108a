#!/usr/bin/env python3
"""Summarise a CubeCL kernel-profiling log: GPU time per kernel kind for one model pass.

    cp scripts/cubecl-profile.toml cubecl.toml
    cargo run --release --features wgpu --example bench -- --device wgpu \\
        --models resnet50_ibn_a --batches 32 --iters 3 --no-train
    rm cubecl.toml
    python3 scripts/kernel_profile.py /tmp/cubecl-profile/profile.log

The log holds one line per kernel launch (`| duration | name`). Passes are cut at each launch
whose name contains --marker (default: the max-pooling kernel, one per pass of every model of
the zoo); the last complete pass is summarised: launches and summed GPU time per kernel kind
(the name without its hash suffix; matrix products by their matmul family), largest first.
With --autotune FILE (the decisions log of the same run) it also lists, for each convolution
that burn autotuned, the candidates that ran and their median times.
"""
import argparse
import collections
import json
import re
import sys

UNITS = {"s": 1e3, "ms": 1.0, "µs": 1e-3, "us": 1e-3, "ns": 1e-6}
LINE = re.compile(r"^\| ([0-9.]+)(s|ms|µs|us|ns)\s*\| (.+)$")


def kind(name):
    parts = [p.strip() for p in name.split(" | ")]
    if parts[0] == "MatmulEntry":
        family = next((p for p in parts if p.endswith("Family")), "?")
        return f"matmul ({family})"
    return re.sub(r"_[0-9a-f]{8}$", "", parts[0])


def launches(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = LINE.match(line.rstrip("\n"))
            if m:
                yield float(m.group(1)) * UNITS[m.group(2)], m.group(3)


def summarise(path, marker):
    records = list(launches(path))
    cuts = [i for i, (_, name) in enumerate(records) if marker in name]
    if len(cuts) < 2:
        sys.exit(f"fewer than two launches named like `{marker}` in {path}: no complete pass")
    a, b = cuts[-2], cuts[-1]
    per_kind = collections.defaultdict(lambda: [0, 0.0])
    for ms, name in records[a:b]:
        per_kind[kind(name)][0] += 1
        per_kind[kind(name)][1] += ms
    total = sum(t for _, t in per_kind.values())
    print(f"one pass ({len(cuts) - 1} complete in the log): {b - a} launches, {total:.2f} ms GPU time")
    print("| kernel | launches | GPU time | share |")
    print("|---|---:|---:|---:|")
    for k, (n, t) in sorted(per_kind.items(), key=lambda kv: -kv[1][1]):
        print(f"| {k} | {n} | {t:.3f} ms | {100 * t / total:.1f} % |")


def autotune(path):
    print("\n| convolution (autotune key) | candidates that ran (median) |")
    print("|---|---|")
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            conv = record.get("key", {}).get("Conv")
            if conv is None:
                continue
            ran = []
            for result in record.get("results", []):
                ok = result.get("outcome", {}).get("Ok")
                if ok:
                    median = ok["computation"]["median"]
                    ms = median["secs"] * 1e3 + median["nanos"] / 1e6
                    ran.append(f"{ok['name']} {ms:.3f} ms")
            key = (f"{conv['kernel_size'][0]}x{conv['kernel_size'][1]} stride {conv['stride'][0]}, "
                   f"{conv['in_channels']} -> {conv['out_channels']}, {conv['shape']}, "
                   f"batch {conv['batch_size']}")
            print(f"| {key} | {', '.join(ran) or 'none'} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="the profiling log (profiling.logger.file)")
    p.add_argument("--marker", default="Pool2d", help="a kernel name launched once per pass")
    p.add_argument("--autotune", metavar="FILE", help="the autotune decisions log")
    args = p.parse_args()
    summarise(args.log, args.marker)
    if args.autotune:
        autotune(args.autotune)


if __name__ == "__main__":
    main()
