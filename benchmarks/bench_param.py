"""Benchmark: parse a 10,000-layer param, plan the SherpaMetaData edit, apply it.

Not a test. Run from the repository root:

    .venv/bin/python benchmarks/bench_param.py [--layers 10000] [--repeats 9]

It builds a synthetic pnnx-like encoder param (36 Input layers as a 5-stack
streaming Zipformer has, then blocks of Split / InnerProduct / BinaryOp /
Reshape / Slice / Concat lines with realistic params, including old-style
arrays, and 36 outputs), then times over several repeats:

  (a) parse  core.ncnn.param.parse_param on the file's bytes
  (b) plan   resolve(get_arch("zipformer"), {}) + build_metadata + plan_metadata(model, metadata, values)
  (c) apply  core.model.metadata.apply_plan to a fresh temp copy (backup + atomic write + fsync)

and prints the median and best milliseconds of each and of parse+plan (the
interactive preview path), against a 100 ms target for parse+plan.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.model.architectures import get_arch, resolve  # noqa: E402
from core.model.metadata import apply_plan, build_metadata, plan_metadata  # noqa: E402
from core.ncnn.param import MAGIC, format_layer_line, parse_param  # noqa: E402

TARGET_MS = 100.0
N_IO = 1 + 7 * 5  # zipformer with the default 5 stacks: in0..in35 / out0..out35


def synthetic_param(n_layers: int) -> bytes:
    """A pnnx-looking encoder param with exactly ``n_layers`` layer lines and a consistent header."""
    lines: list[str] = []
    blobs = 0

    def add(type_, name, bottoms, tops, params=()):
        nonlocal blobs
        lines.append(format_layer_line(type_, name, bottoms, tops, list(params)))
        blobs += len(tops)

    for i in range(N_IO):
        add("Input", f"in{i}", [], [f"in{i}"])
    tail = N_IO  # one layer per output at the end
    x = "in0"
    k = 0
    block = 7
    while len(lines) + block + tail <= n_layers:
        a, b, c, y, z, w, r, s1, s2, nx = (f"{k}_{t}" for t in ("a", "b", "c", "y", "z", "w", "r", "s1", "s2", "x"))
        add("Split", f"splitncnn_{k}", [x], [a, b, c])
        add("InnerProduct", f"linear_{k}", [a], [y], ["0=384", "1=1", "2=147456", "8=0", "9=0"])
        add("BinaryOp", f"add_{k}", [y, b], [z], ["0=0"])
        add("BinaryOp", f"mul_{k}", [z, c], [w], ["0=2", "1=1", "2=1.000000e-05"])
        add("Reshape", f"reshape_{k}", [w], [r], ["0=-1", "1=384"])
        add("Slice", f"slice_{k}", [r], [s1, s2], ["-23300=2,192,-233", "1=0"])
        add("Concat", f"cat_{k}", [s1, s2], [nx], ["0=0"])
        x = nx
        k += 1
    while len(lines) + tail < n_layers:  # fill the remainder with single ReLU layers
        add("ReLU", f"relu_{k}", [x], [f"{k}_relu"], ["0=0.000000e+00"])
        x = f"{k}_relu"
        k += 1
    add("Permute", "permute_out0", [x], ["out0"], ["0=1"])
    for i in range(1, N_IO):
        add("BinaryOp", f"state_{i}", [f"in{i}"], [f"out{i}"], ["0=2", "1=1", "2=1.000000e+00"])
    assert len(lines) == n_layers, (len(lines), n_layers)
    return "\n".join([MAGIC, f"{n_layers} {blobs}", *lines, ""]).encode()


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)

    data = synthetic_param(args.layers)
    arch = get_arch("zipformer")

    # sanity: the synthetic graph is valid and the plan is an applicable insert
    check = parse_param(data, "encoder.ncnn.param")
    assert check.ok and check.model.to_bytes() == data, check.describe()
    resolved = resolve(arch, {})
    plan = plan_metadata(check.model, build_metadata(resolved), resolved.values)
    assert plan.action == "insert" and plan.can_apply, (plan.errors, plan.warnings)

    parse_t, plan_t, both_t, apply_t = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_param_") as tmp:
        path = Path(tmp) / "encoder_jit_trace-pnnx.ncnn.param"
        for i in range(args.repeats + 1):  # the first round warms up and is not counted
            gc.collect()
            t0 = time.perf_counter()
            result = parse_param(data, str(path))
            t1 = time.perf_counter()
            resolved = resolve(arch, {})
            metadata = build_metadata(resolved)
            plan = plan_metadata(result.model, metadata, resolved.values)
            t2 = time.perf_counter()

            path.write_bytes(data)  # a fresh file with no backup yet, as on a first edit
            path.with_name(path.name + ".orig").unlink(missing_ok=True)
            gc.collect()
            t3 = time.perf_counter()
            applied = apply_plan(plan, path)
            t4 = time.perf_counter()
            assert applied.applied and path.read_bytes() == plan.new_bytes
            if i == 0:
                continue
            parse_t.append(t1 - t0)
            plan_t.append(t2 - t1)
            both_t.append(t2 - t0)
            apply_t.append(t4 - t3)
        written = parse_param(path.read_bytes())
        assert written.ok and written.model.layer_count == args.layers + 1

    n_blobs = check.model.blob_count
    print(f"synthetic param: {args.layers} layers, {n_blobs} blobs, {len(data) / 1e6:.2f} MB; "
          f"{args.repeats} repeats after 1 warm-up (Python {sys.version.split()[0]})")
    print(f"plan: {plan.action} at line {plan.line_no}, header {plan.header_before} -> {plan.header_after}")
    print(f"{'step':<12}{'median ms':>12}{'best ms':>12}")
    for name, ts in (("parse", parse_t), ("plan", plan_t), ("apply", apply_t), ("parse+plan", both_t)):
        print(f"{name:<12}{_ms(statistics.median(ts)):>12.1f}{_ms(min(ts)):>12.1f}")
    med, best = _ms(statistics.median(both_t)), _ms(min(both_t))
    if med < TARGET_MS:
        verdict = f"UNDER the {TARGET_MS:.0f} ms target (median {med:.1f} ms)"
    elif best < TARGET_MS:
        verdict = f"OVER the {TARGET_MS:.0f} ms target at the median ({med:.1f} ms); only the best run ({best:.1f} ms) is under"
    else:
        verdict = f"OVER the {TARGET_MS:.0f} ms target (median {med:.1f} ms, best {best:.1f} ms)"
    print(f"parse+plan is {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
