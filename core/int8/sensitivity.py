"""Which layers int8 hurts, and mixed precision: keep the most sensitive ones float until the output is close enough.

The fp32 model is streamed over the calibration audio once (core.int8.calibration.Streamer, as sherpa-ncnn
streams it) and the encoder's and the joiner's inputs and fp32 outputs are recorded. A layer's sensitivity is
the mean output cosine (like core.int8.check) when only that layer is int8: the quantizer (core.int8.quantize
.Quantizer, the same bytes the run ships) writes a model where only that layer is int8 and every other weight is
exactly as read, and real ncnn runs it on the recorded inputs — no simulation of ncnn's int8 kernels. Only the
net that holds the layer is re-run. The same recorded inputs then measure the whole int8 net (fp16 elsewhere, as
shipped); when its cosine is below ``min_cosine`` the most sensitive layers are kept float, most sensitive
first, and the net is re-quantized until it reaches it (a galloping then bisecting search on how many).

ncnn on a user's model never runs in the tool's process: :func:`quantize_with_sensitivity_in_child` and
:func:`predict_in_child` run ``python -m core.int8.sensitivity ...``.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from core.int8.calibrate import CalibrationError
from core.int8.check import cosine

SIDECAR = "int8-sensitivity.json"  # beside the int8 files; core.int8.report merges it into int8-layers.json
MAX_CHUNKS = 96  # recorded encoder chunks kept (evenly spread over the audio): bounds the per-layer cost
MAX_FRAMES = 768  # recorded joiner frames kept
# the per-layer pass gets about this many seconds per net: when a candidate's load and forwards would take longer,
# each layer is measured on fewer of the recorded forwards (evenly spread, at least MIN_FORWARDS); the whole net's
# cosine and the search always use all of them
SENSITIVITY_SECONDS = 60.0
MIN_FORWARDS = 8
NETS = ("encoder", "joiner")


@dataclass
class Recording:
    """One net's recorded fp32 inputs (per forward: the arrays fed as in0, in1, ...) and its out0."""

    inputs: list[list[np.ndarray]] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)

    def thin(self, limit: int) -> None:
        if len(self.inputs) > limit:
            keep = np.unique(np.linspace(0, len(self.inputs) - 1, limit).round().astype(int))
            self.inputs = [self.inputs[i] for i in keep]
            self.outputs = [self.outputs[i] for i in keep]


@dataclass
class NetResult:
    """What the search found for one net; cosines are means over the recorded forwards."""

    net: str
    sensitivity: dict[str, float]  # layer -> cosine with only that layer int8 (lower: more sensitive)
    cosine_int8: float  # every candidate int8 (as quantized without a target)
    cosine: float  # as written
    kept_float: list[str]  # most sensitive first
    bytes_int8: int  # the .bin with every candidate int8
    bytes: int  # the .bin as written
    evaluations: int
    seconds: float
    forwards: int = 0  # recorded forwards the whole net's cosine (and the search) used
    forwards_per_layer: int = 0  # recorded forwards each layer's sensitivity used
    reached: bool = True  # min_cosine reached (always True without a target)
    report: dict = field(default_factory=dict)  # the quantizer's report of what was written


def record(files, wavs: list[Path], max_chunks: int = MAX_CHUNKS, max_frames: int = MAX_FRAMES
           ) -> tuple[Recording, Recording]:
    """The fp32 encoder's and joiner's inputs and outputs over ``wavs`` (in this process: call it in a child)."""
    import ncnn

    from core.common.audio import fbank, read_wav
    from core.int8.streamer import Streamer
    from core.model.architectures import BY_MODEL_TYPE
    from core.model.metadata import read_metadata
    from core.ncnn.net import Keeper, register_meta_layer
    from core.ncnn.param import load_param

    meta = read_metadata(load_param(files.encoder_param).model)
    if not meta or meta.get(0) not in BY_MODEL_TYPE:
        raise CalibrationError(f"{files.encoder_param}: no SherpaMetaData; sensitivity needs the chunk sizes")
    keeper = Keeper()
    nets = []
    for param, binary, encoder in ((files.encoder_param, files.encoder_bin, True),
                                   (files.decoder_param, files.decoder_bin, False),
                                   (files.joiner_param, files.joiner_bin, False)):
        net = keeper.keep(ncnn.Net())
        net.opt.num_threads = 1
        if encoder:
            register_meta_layer(net, keeper)
        if net.load_param(str(param)) != 0 or net.load_model(str(binary)) != 0:
            raise CalibrationError(f"{param}: python ncnn could not load it with {binary}")
        nets.append(net)
    streamer = Streamer(*nets, BY_MODEL_TYPE[meta[0]], meta)
    enc, join = Recording(), Recording()

    def on_chunk(chunk, states, encoder_out, mats):
        enc.inputs.append([chunk, *[np.array(s, dtype=np.float32) for s in states]])
        enc.outputs.append(np.array(encoder_out, dtype=np.float32))

    def on_frame(frame, decoder_out, token, logits, mats):
        join.inputs.append([np.array(frame, dtype=np.float32), np.array(decoder_out, dtype=np.float32)])
        join.outputs.append(np.array(logits, dtype=np.float32))

    step = max(1, len(wavs) // 8)  # files in a spread order (0, s, 2s, ..., 1, 1+s, ...): stopping early still
    for i in [i for start in range(step) for i in range(start, len(wavs), step)]:  # samples the whole list
        if len(enc.inputs) >= 2 * max_chunks and len(join.inputs) >= 2 * max_frames:
            break  # enough to thin from: more audio would only cost time
        w = read_wav(wavs[i])
        if w.sample_rate != 16000:
            continue
        streamer.run(fbank(w.samples, w.sample_rate), on_chunk, on_frame, name=str(wavs[i]))
    if not enc.inputs or not join.inputs:
        raise CalibrationError("no calibration audio long enough for one encoder chunk: sensitivity needs some")
    enc.thin(max_chunks)
    join.thin(max_frames)
    return enc, join


class Evaluator:
    """Runs a candidate (param, bin) pair of one net on its recorded inputs: the mean out0 cosine vs fp32."""

    def __init__(self, recording: Recording, encoder: bool, workdir: Path):
        self.recording, self.encoder, self.workdir = recording, encoder, Path(workdir)
        self.count = 0
        self.load_seconds = self.forward_seconds = 0.0  # of the last call
        self.parent: Evaluator | None = None  # the evaluator this one was thinned from

    def thinned(self, limit: int) -> "Evaluator":
        """The same on at most ``limit`` of the recorded forwards (evenly spread); the count is shared."""
        rec = Recording(list(self.recording.inputs), list(self.recording.outputs))
        rec.thin(limit)
        other = Evaluator(rec, self.encoder, self.workdir)
        other.count = self.count
        other.parent = self
        return other

    def __call__(self, param_bytes: bytes, bin_bytes: bytes | bytearray) -> float:
        import ncnn

        from core.ncnn.net import Keeper, as_mat, register_meta_layer
        self.count += 1
        if self.parent is not None:
            self.parent.count += 1
        t0 = time.perf_counter()
        param, binary = self.workdir / "candidate.param", self.workdir / "candidate.bin"
        param.write_bytes(param_bytes)
        binary.write_bytes(bin_bytes)
        keeper = Keeper()
        net = keeper.keep(ncnn.Net())
        net.opt.num_threads = 1
        if self.encoder:
            register_meta_layer(net, keeper)
        if net.load_param(str(param)) != 0 or net.load_model(str(binary)) != 0:
            raise CalibrationError("python ncnn could not load a partly int8 model the quantizer wrote")
        t1 = time.perf_counter()
        cosines = []
        for inputs, expected in zip(self.recording.inputs, self.recording.outputs):
            ex = net.create_extractor()
            for k, arr in enumerate(inputs):
                ex.input(f"in{k}", as_mat(arr))
            ret, out = ex.extract("out0")
            if ret != 0:
                raise CalibrationError(f"the partly int8 {'encoder' if self.encoder else 'joiner'} failed "
                                       f"(extract returned {ret})")
            cosines.append(cosine(expected, np.array(out)))
        del ex, out
        net.clear()  # the weights go now: the keeper's creator closure is a reference cycle the collector may
        keeper.clear()  # reach only after many candidates, each holding a whole model
        self.load_seconds, self.forward_seconds = t1 - t0, time.perf_counter() - t1
        return float(np.mean(cosines))

    def fitting(self, seconds: float, per_forward: float) -> "Evaluator":
        """This evaluator, or one thinned to the recorded forwards that fit ``seconds`` (at least MIN_FORWARDS)."""
        n = len(self.recording.inputs)
        if per_forward <= 0 or per_forward * n <= seconds:
            return self
        return self.thinned(max(MIN_FORWARDS, min(n, int(seconds / per_forward))))


def layer_sensitivity(quantizer, candidates: list[str], evaluate: "Evaluator",
                      on_layer: Callable[[int, int, str], None] | None = None,
                      budget: float | None = SENSITIVITY_SECONDS) -> tuple[dict[str, float], int]:
    """(layer -> output cosine with only that layer int8 and every other weight exactly as read, the fewest
    recorded forwards a layer was measured on). With a ``budget`` (seconds for all layers), each next layer gets
    as many of the recorded forwards as the time left allows, re-estimated after every layer from what writing,
    loading and one forward really cost."""
    out = {}
    start = time.perf_counter()
    current, fewest = evaluate, len(evaluate.recording.inputs)
    root = evaluate.parent or evaluate  # every forward recorded: what each layer is thinned from
    for i, name in enumerate(candidates, start=1):
        t0 = time.perf_counter()
        param_bytes, bin_bytes, _ = quantizer.render(only={name}, fp16=False)
        out[name] = current(param_bytes, bin_bytes)
        fewest = min(fewest, len(current.recording.inputs))
        left = len(candidates) - i
        if budget is not None and left:
            overhead = time.perf_counter() - t0 - current.forward_seconds
            per_forward = current.forward_seconds / max(1, len(current.recording.inputs))
            each = (budget - (time.perf_counter() - start)) / left - overhead
            current = root.fitting(each, per_forward)
        if on_layer is not None:
            on_layer(i, len(candidates), name)
    return out, fewest


def most_sensitive_first(sensitivity: dict[str, float]) -> list[str]:
    return sorted(sensitivity, key=lambda n: (sensitivity[n], n))


def search_keep_float(order: list[str], cosine_of: Callable[[list[str]], float], min_cosine: float,
                      first: float) -> tuple[list[str], float, bool]:
    """The fewest most-sensitive-first layers to keep float so ``cosine_of(kept) >= min_cosine``.

    ``first``: the cosine with nothing kept. Gallops (1, 2, 4, ... layers) to a count that reaches the target,
    then bisects between the last count that did not and it; the count returned was measured to reach it.
    Returns (kept, its cosine, reached); when even every layer float misses the target, reached is False.
    """
    if first >= min_cosine or not order:
        return [], first, first >= min_cosine
    measured: dict[int, float] = {0: first}

    def at(k: int) -> float:
        if k not in measured:
            measured[k] = cosine_of(order[:k])
        return measured[k]

    lo, hi = 0, 1
    while at(hi) < min_cosine:
        if hi == len(order):
            return list(order), measured[hi], False
        lo, hi = hi, min(2 * hi, len(order))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid) >= min_cosine:
            hi = mid
        else:
            lo = mid
    return list(order[:hi]), measured[hi], True


def quantize_net(quantizer, recording: Recording, workdir: Path, min_cosine: float | None,
                 net: str, on_progress: Callable[[int, int, str], None] | None = None) -> tuple[NetResult, bytes,
                                                                                              bytearray]:
    """Sensitivity of every layer that becomes int8, then the pair to write (mixed precision when asked)."""
    t0 = time.perf_counter()
    evaluate = Evaluator(recording, net == "encoder", workdir)
    full_param, full_bin, report = quantizer.render()
    candidates = report.quantized + report.dynamic
    first = evaluate(full_param, full_bin) if candidates else 1.0
    # the first layer's forwards fitted from the whole net's timing, the rest re-fitted as they go
    per_forward = evaluate.forward_seconds / max(1, len(recording.inputs))
    start = evaluate.fitting(SENSITIVITY_SECONDS / max(1, len(candidates)) - 2 * evaluate.load_seconds, per_forward)
    sensitivity, fewest = layer_sensitivity(quantizer, candidates, start, on_progress)
    kept, cosine, reached = [], first, True
    param_bytes, bin_bytes = full_param, full_bin
    if min_cosine is not None and first < min_cosine:
        def cosine_of(keep: list[str]) -> float:
            p, b, _ = quantizer.render(keep_float=frozenset(keep))
            return evaluate(p, b)
        kept, cosine, reached = search_keep_float(most_sensitive_first(sensitivity), cosine_of, min_cosine, first)
        if kept:
            param_bytes, bin_bytes, report = quantizer.render(keep_float=frozenset(kept))
    result = NetResult(net, sensitivity, first, cosine, kept, len(full_bin), len(bin_bytes), evaluate.count,
                       time.perf_counter() - t0, len(recording.inputs), fewest, reached,
                       {k: v for k, v in vars(report).items() if isinstance(v, (int, str, list))})
    return result, param_bytes, bin_bytes


def sha256(path: Path) -> str:
    """Streamed (the published LSTM's int8 encoder .bin is 64 MB: not held whole just to hash it)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def run_here(files, tables: tuple[Path, Path], wavs: list[Path], outputs: dict[str, tuple[Path, Path]],
             min_cosine: float | None, sidecar: Path, on_progress=None, measure: bool = True) -> dict:
    """The child's side: record, quantize both nets with their sensitivity (and the search), write the int8 pairs
    and the sidecar. Returns the sidecar's contents. ``measure`` False (and no ``min_cosine``): quantize only, the
    sidecar says nothing was measured."""
    from core.common.atomic import atomic_write_bytes
    from core.int8.calibrate import read_table
    from core.int8.quantize import Quantizer, write_checked
    t0 = time.perf_counter()
    if not measure and min_cosine is None:
        reports = {}
        for net, table_path in zip(NETS, tables):
            param_bytes, bin_bytes, report = Quantizer(*sources_of(files)[net],
                                                       read_table(Path(table_path).read_text(), str(table_path))).render()
            write_checked(param_bytes, bin_bytes, *outputs[net])
            reports[net] = {k: v for k, v in vars(report).items() if isinstance(v, (int, str, list))}
        data = {"measured": False, "min_cosine": None, "seconds": round(time.perf_counter() - t0, 3),
                "nets": {net: {"int8_sha256": sha256(outputs[net][1])} for net in NETS}, "reports": reports}
        atomic_write_bytes(sidecar, json.dumps(data, indent=2).encode())
        return data
    recordings = dict(zip(NETS, record(files, wavs)))
    sources = sources_of(files)
    results = {}
    with tempfile.TemporaryDirectory(prefix="int8-sensitivity-") as tmp:
        for net, table_path in zip(NETS, tables):
            table = read_table(Path(table_path).read_text(), str(table_path))
            quantizer = Quantizer(*sources[net], table)
            progress = (lambda i, n, name, net=net: on_progress(i, n, f"{net} {name}")) if on_progress else None
            result, param_bytes, bin_bytes = quantize_net(quantizer, recordings[net], Path(tmp), min_cosine, net,
                                                          progress)
            del quantizer
            write_checked(param_bytes, bin_bytes, *outputs[net])
            results[net] = result
    sidecar_data = {
        "what": "sensitivity: mean output cosine (int8 vs fp32, on the recorded calibration forwards) with only that "
                "layer int8; cosine_int8: every layer int8; cosine: as written; kept_float: layers kept float to "
                "reach min_cosine, most sensitive first",
        "min_cosine": min_cosine,
        "forwards": {net: len(recordings[net].inputs) for net in NETS},
        "seconds": round(time.perf_counter() - t0, 3),
        "nets": {net: {**{k: v for k, v in asdict(r).items() if k != "report"}, "int8_sha256": sha256(outputs[net][1])}
                 for net, r in results.items()},
        "reports": {net: r.report for net, r in results.items()},
    }
    atomic_write_bytes(sidecar, json.dumps(sidecar_data, indent=2).encode())
    return sidecar_data


def sources_of(files) -> dict[str, tuple[Path, Path]]:
    return {"encoder": (files.encoder_param, files.encoder_bin), "joiner": (files.joiner_param, files.joiner_bin)}


def predict_here(param: Path, binary: Path) -> dict:
    """The int8 .bin size of one net before calibration: the quantizer's own plan with a stand-in table (one
    scale per output for every Convolution/InnerProduct with weights: sizes do not depend on the values)."""
    from core.int8.calibrate import ActivationScale, ScaleTable
    from core.int8.quantize import SUPPORTED, Quantizer
    from core.ncnn.bin_layout import record_loads
    data = Path(binary).read_bytes()
    layers, _ = record_loads(param, data)
    table = ScaleTable()
    for layer in layers:
        if layer.type in SUPPORTED and layer.loads and not layer.params[8]:
            table.weights[layer.name] = np.ones(max(layer.params[0], 1), np.float32)
            table.activations[layer.name] = ActivationScale(layer.name, 1.0, 1.0, 127.0)
    _, out, report = Quantizer(param, binary, table, data=data).render()
    return {"bytes_before": len(data), "bytes_after": len(out), "int8": report.quantized,
            "weight_only": report.dynamic, "notes": report.notes}


# -- the parent's side -----------------------------------------------------------------------------------------

def quantize_with_sensitivity_in_child(files, tables: tuple[Path, Path], wavs: list[Path],
                                       outputs: dict[str, tuple[Path, Path]], min_cosine: float | None,
                                       sidecar: Path, on_progress=None, on_line=None, cancelled=None,
                                       measure: bool = True) -> dict:
    """:func:`run_here` in a child process. A reported problem raises CalibrationError with the child's sentence;
    a crash raises core.int8.children.CalibrationCrashed naming the step and the files."""
    from core.int8.children import CalibrationCrashed
    from core.ncnn.child import EXIT_ERROR, PROGRESS_RE, error_line, exit_text, run_child
    result: dict = {}

    def line(text: str) -> None:
        m = PROGRESS_RE.match(text)
        if m and on_progress is not None:
            on_progress(int(m.group(1)), int(m.group(2)), m.group(3))
        elif text.startswith("result: "):
            result.update(json.loads(text[len("result: "):]))
        elif not m and on_line is not None:
            on_line(text)

    args = ["quantize", "--files", *map(str, vars(files).values()), "--tables", *map(str, tables),
            "--out", *(str(p) for net in NETS for p in outputs[net]), "--sidecar", str(sidecar)]
    args += [a for w in wavs for a in ("--wav", str(w))]
    if min_cosine is not None:
        args += ["--min-cosine", repr(min_cosine)]
    if not measure:
        args.append("--no-sensitivity")
    rc, lines = run_child(args, on_line=line, cancelled=cancelled, module=CHILD)
    if rc == EXIT_ERROR:
        raise CalibrationError(error_line(lines) or "quantization failed")
    if rc != 0 or not result:
        said = [x for x in lines if x.strip() and not x.startswith(("result: ", "progress: "))][-3:]
        raise CalibrationCrashed(f"quantize: ncnn crashed ({exit_text(rc)}) in a child process while quantizing "
                                 f"{files.encoder_param} / {files.joiner_param}" + (f": {'; '.join(said)}" if said
                                                                                    else ""))
    return result


def predict_in_child(nets: list[tuple[Path, Path]]) -> list[dict]:
    """:func:`predict_here` for each (param, bin) in a child process; raises CalibrationError with a sentence."""
    from core.ncnn.child import EXIT_ERROR, error_line, exit_text, run_child
    result: list = []
    rc, lines = run_child(["predict", *(str(p) for pair in nets for p in pair)], module=CHILD,
                          on_line=lambda t: result.append(json.loads(t[8:])) if t.startswith("result: ") else None)
    if rc == EXIT_ERROR:
        raise CalibrationError(error_line(lines) or "the int8 size could not be predicted")
    if rc != 0 or not result:
        raise CalibrationError(f"ncnn ended the size prediction ({exit_text(rc)}) reading {nets[0][0]}")
    return result[-1]


CHILD = "core.int8.sensitivity"


def main(argv: list[str] | None = None) -> int:
    import argparse

    from core.int8.calibration import ModelFiles
    from core.int8.quantize import QuantizeError
    from core.ncnn.bin_layout import LayoutError
    from core.ncnn.child import EXIT_ERROR, say
    p = argparse.ArgumentParser(prog=f"python -m {CHILD}", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    qu = sub.add_parser("quantize", help="record, sensitivity, mixed precision, write both int8 pairs")
    qu.add_argument("--files", nargs=6, required=True, metavar="PATH")
    qu.add_argument("--tables", nargs=2, required=True, metavar="TABLE")
    qu.add_argument("--out", nargs=4, required=True, metavar="PATH", help="encoder param/bin, joiner param/bin")
    qu.add_argument("--sidecar", required=True)
    qu.add_argument("--wav", action="append", default=[])
    qu.add_argument("--min-cosine", type=float, default=None)
    qu.add_argument("--no-sensitivity", action="store_true", help="quantize only (unless --min-cosine)")
    pr = sub.add_parser("predict", help="the int8 .bin size of each PARAM BIN pair")
    pr.add_argument("pairs", nargs="+")
    a = p.parse_args(argv)
    import signal
    # cancel ends the child with SIGTERM: exit through Python so the temporary model copies are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        if a.command == "predict":
            pairs = [(Path(a.pairs[i]), Path(a.pairs[i + 1])) for i in range(0, len(a.pairs) - 1, 2)]
            say("result: " + json.dumps([predict_here(*pair) for pair in pairs]))
            return 0
        outs = dict(zip(NETS, ((Path(a.out[0]), Path(a.out[1])), (Path(a.out[2]), Path(a.out[3])))))
        data = run_here(ModelFiles(*map(Path, a.files)), tuple(map(Path, a.tables)), list(map(Path, a.wav)), outs,
                        a.min_cosine, Path(a.sidecar), on_progress=lambda i, n, s: say(f"progress: {i}/{n} {s}"),
                        measure=not a.no_sensitivity)
    except (CalibrationError, QuantizeError, LayoutError, OSError) as exc:
        say(f"error: {exc}")
        return EXIT_ERROR
    say("result: " + json.dumps({k: v for k, v in data.items() if k != "nets"} |
                                {"nets": {n: {k: v for k, v in r.items() if k != "sensitivity"}
                                          for n, r in data["nets"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
