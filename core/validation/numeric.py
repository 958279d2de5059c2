"""The ncnn half of the numeric check: torch's inputs fed to ncnn, every output compared with torch's.

The validation process computes torch's side (core.validation.validate.torch_reference) and
runs this half in a child process (``python -m core.validation.numeric NPZ``), so the
process that holds torch and the traced modules never loads a second copy of the weights
in ncnn, and a crash in ncnn fails only the child. The npz holds ``NET/CHUNK/in/K`` and
``NET/CHUNK/out/K`` arrays; the child prints one ``result: JSON`` line.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

NETS = ("encoder", "decoder", "joiner")
TIMEOUT_SECONDS = 300
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}  # relative to max(1, |reference|max)


@dataclass
class NumericResult:
    net: str
    output: str
    shape: list[int]
    max_abs: float
    mean_abs: float
    tolerance: float
    ok: bool
    note: str = ""

    def line(self) -> str:
        mark = "✓" if self.ok else "✗"
        shape = "(" + ", ".join(map(str, self.shape)) + ")"
        rel = "≤" if self.ok else ">"
        note = f" {self.note}" if self.note else ""
        return f"-[{mark}] {self.net} {self.output}{note} {shape}: max abs diff {self.max_abs:.1e} {rel} {self.tolerance:.0e}"


def drop_batch_axis(arr):
    """Remove icefall's batch axis the way sherpa-ncnn lays the blob out.

    icefall puts the batch axis of states in the middle ((L, 1, D), (L, C, 1, A),
    (L, 1, D, K-1)) and of features, chunks and caches first ((1, T, 80),
    (1, D, K-1)); the innermost size-1 axis among the first three is it.
    """
    if arr.ndim < 2:
        return arr
    for axis in range(min(arr.ndim - 1, 2), -1, -1):
        if arr.shape[axis] == 1:
            return arr.reshape(arr.shape[:axis] + arr.shape[axis + 1:])
    return arr


def _precision(bin_path: Path, param_path: Path) -> str:
    """fp16 when the weights were stored as fp16 (pnnx's default)."""
    with open(bin_path, "rb") as fh:
        head = fh.read(4)
    return "fp16" if head == b"\x47\x6b\x30\x01" else "fp32"


def compare_chunks(net: str, param: Path, binary: Path, chunks: list[tuple[list, list]], threads: int = 1) -> list:
    """ncnn on each chunk's inputs, compared output by output with torch's (NumericResult list)."""
    import ncnn
    import numpy as np

    from core.ncnn.net import Keeper, register_meta_layer
    keep = Keeper()
    ncnn_net = keep.keep(ncnn.Net())
    ncnn_net.opt.num_threads = threads
    if net == "encoder":
        register_meta_layer(ncnn_net, keep)
    if ncnn_net.load_param(str(param)) != 0 or ncnn_net.load_model(str(binary)) != 0:
        raise ValueError(f"python ncnn could not load {param} / {binary}")
    precision = _precision(binary, param)
    results = []
    for c, (inputs, ref) in enumerate(chunks):
        ex = ncnn_net.create_extractor()
        ex.set_light_mode(False)  # several outputs are extracted: light mode recycles blobs and can crash
        arrays = []  # ncnn.Mat borrows the numpy buffer: keep every array alive until extraction is done
        for k, tensor in enumerate(inputs):
            arr = drop_batch_axis(np.asarray(tensor))
            if arr.dtype in (np.int64, np.int32):  # lengths are float Mats in sherpa-ncnn; token ids are int32
                arr = arr.astype(np.float32) if net == "encoder" else arr.astype(np.int32)
            arrays.append(np.ascontiguousarray(arr))
            ex.input(f"in{k}", ncnn.Mat(arrays[-1]))
        worst_state = None
        for k, r in enumerate(ref):
            ret, mat = ex.extract(f"out{k}")
            if ret != 0:
                raise ValueError(f"{param}: ncnn could not produce out{k} (extract returned {ret})")
            got = np.array(mat).reshape(-1)
            want = np.asarray(r).reshape(-1)
            shape = list(r.shape[1:]) if r.ndim > 1 and r.shape[0] == 1 else list(r.shape)
            tol = TOLERANCE[precision] * max(1.0, float(np.abs(want).max()) if want.size else 1.0)
            if got.size != want.size:
                res = NumericResult(net, f"out{k}", shape, float("inf"), float("inf"), tol, False,
                                    f"ncnn gave {got.size} values, torch {want.size}")
            else:
                diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
                res = NumericResult(net, f"out{k}", shape, float(diff.max()) if diff.size else 0.0,
                                    float(diff.mean()) if diff.size else 0.0, tol,
                                    bool(diff.size == 0 or diff.max() <= tol))
            if len(chunks) > 1:
                res.note = f"chunk {c}"
            if k == 0 or net != "encoder" or not res.ok:
                results.append(res)
            elif worst_state is None or res.max_abs / res.tolerance > worst_state.max_abs / worst_state.tolerance:
                worst_state = res
        if worst_state is not None:
            worst_state.output = f"states out1..out{len(ref) - 1} (worst {worst_state.output})"
            results.append(worst_state)
    return results


def save_chunks(path: Path, nets: dict[str, list[tuple[list, list]]]) -> None:
    import numpy as np
    arrays = {f"{net}/{c}/{side}/{k}": np.asarray(a) for net, chunks in nets.items()
              for c, pair in enumerate(chunks) for side, items in zip(("in", "out"), pair) for k, a in enumerate(items)}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _load_chunks(path: Path) -> dict[str, list[tuple[list, list]]]:
    import numpy as np
    data = np.load(path)
    nets: dict[str, dict[int, tuple[dict, dict]]] = {}
    for key in data.files:
        net, c, side, k = key.split("/")
        pair = nets.setdefault(net, {}).setdefault(int(c), ({}, {}))
        pair[0 if side == "in" else 1][int(k)] = data[key]
    return {net: [([ins[k] for k in sorted(ins)], [outs[k] for k in sorted(outs)]) for _, (ins, outs)
                  in sorted(chunks.items())] for net, chunks in nets.items()}


def compare_in_child(out: Path, npz: Path) -> dict[str, list | str]:
    """net -> NumericResult dicts, or net -> an error sentence (a crash names the net and the exit)."""
    proc = subprocess.run([sys.executable, "-m", "core.validation.numeric", str(out), str(npz)], capture_output=True,
                          text=True, errors="replace", timeout=TIMEOUT_SECONDS,
                          cwd=Path(__file__).resolve().parents[2])
    found = [line[len("result: "):] for line in proc.stdout.splitlines() if line.startswith("result: ")]
    if found:
        return json.loads(found[-1])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    rc = proc.returncode
    if rc < 0:
        try:
            what = f"python ncnn was killed by {signal.Signals(-rc).name} in the numeric check's child"
        except ValueError:
            what = f"python ncnn was killed by signal {-rc} in the numeric check's child"
    else:
        what = f"the numeric check's child exited with code {rc}"
    return {net: f"{what} ({tail[0]})" if tail[0] else what for net in NETS}


def main(argv: list[str]) -> int:
    out, npz = Path(argv[0]), Path(argv[1])
    report: dict[str, list | str] = {}
    for net, chunks in _load_chunks(npz).items():
        try:
            report[net] = [asdict(r) for r in compare_chunks(net, out / f"{net}_jit_trace-pnnx.ncnn.param",
                                                             out / f"{net}_jit_trace-pnnx.ncnn.bin", chunks)]
        except Exception as exc:  # noqa: BLE001 - said per net, as the in-process check did
            report[net] = str(exc)
        print("result: " + json.dumps(report), flush=True)  # what is done so far, should the next net crash
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
