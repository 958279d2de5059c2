"""The int8 part of a run: fp32 conversions, built-in calibration, built-in quantization.

The fp32 set that calibration and quantization read is the final encoder param
(rewritten, with SherpaMetaData) with pnnx's fp32 weights, and the joiner's
param with its fp32 weights: pnnx writes the same param text for fp16 and fp32,
and the calibrate step checks that, and that no rewrite moved weights, before
it relies on it. The decoder stays fp16 (it is tiny; core.int8.quantize could do its Embed weight-only).
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from core.common.atomic import atomic_same_file, atomic_write_bytes
from core.int8.calibration import ModelFiles
from core.int8.histograms import HISTOGRAMS
from core.model.architectures import ResolvedValues
from core.pipeline.config import WizardConfig
from core.pipeline.layout import (
    INT8_NETS,
    Layout,
    fp32_bin,
    fp32_dir,
    fp32_model_files,
    fp32_raw,
    fp32_set_dir,
    int8_file,
    table_file,
)
from core.pipeline.runner import Step, StepContext, StepError


def make_fp32_set(layout, arch: str | None) -> Step:
    """The encoder rewrite again, on pnnx's fp32 output: it must give the fp16 run's graph, and its .bin changes
    (e.g. the Zipformer's integer constants) are applied to the fp32 weights too."""
    from core.pipeline.rewrite_step import rewritten
    from core.rewrite.driver import plan_file
    raw_param, raw_bin = fp32_raw(layout, "encoder", "param"), fp32_raw(layout, "encoder", "bin")
    outputs = [fp32_bin(layout, "encoder"), fp32_bin(layout, "joiner")]

    def run(ctx: StepContext) -> None:
        _check_fp32_set(layout)
        plan = plan_file(raw_param, arch=arch)
        if plan.action == "refused":
            raise StepError(f"{raw_param}: " + "; ".join(plan.errors))
        graph = plan.new_param if plan.new_param is not None else raw_param.read_bytes()
        if graph != rewritten(layout, "param").read_bytes():
            raise StepError(f"{raw_param}: the rewrite gives a different graph for pnnx's fp32 output than for its "
                            "fp16 output; the int8 path assumes they are the same",
                            hint="run without --int8 for the fp16 model, and report this")
        fp32_set_dir(layout).mkdir(parents=True, exist_ok=True)
        if plan.new_bin is not None:
            atomic_write_bytes(outputs[0], plan.new_bin)
        else:  # pnnx's own file, linked (the published LSTM's is 230 MB)
            atomic_same_file(raw_bin, outputs[0])
        atomic_same_file(fp32_raw(layout, "joiner", "bin"), outputs[1])
        ctx.log(f"{outputs[0]}: " + (f"pnnx's fp32 weights with the rewrite's .bin changes ({plan.summary()})"
                                     if plan.new_bin is not None else "pnnx's fp32 weights (no .bin rewrite)"))

    return Step("fp32-set", "Prepare the fp32 weights for calibration", func=run,
                inputs=[raw_param, raw_bin, fp32_raw(layout, "joiner", "bin"), rewritten(layout, "param")],
                outputs=outputs, fingerprint_extra=arch or "",
                describe="the encoder rewrite on pnnx's fp32 output (same graph, same .bin changes)",
                script=[f"mkdir -p {shlex.quote(str(fp32_set_dir(layout)))}",
                        f"cp {shlex.quote(str(raw_bin))} {shlex.quote(str(outputs[0]))}  # plus the rewrite's .bin "
                        "changes, if any", f"cp {shlex.quote(str(fp32_raw(layout, 'joiner', 'bin')))} "
                        f"{shlex.quote(str(outputs[1]))}"])


def make_pnnx_fp32(pnnx: Path, layout, net: str) -> Step:
    from core.pipeline.pnnx_step import pnnx_step
    return pnnx_step(f"pnnx-{net}-fp32", f"Convert the {net} with pnnx (fp32, for int8)", pnnx, layout.pt(net),
                     fp32_dir(layout) / net, fp32_raw(layout, net, "param"), fp32_raw(layout, net, "bin"), fp16=False)


def _check_fp32_set(layout) -> None:
    for net, fp16_raw in (("encoder", layout.raw("encoder", "param")), ("joiner", layout.final("joiner", "param"))):
        if fp32_raw(layout, net, "param").read_bytes() != fp16_raw.read_bytes():
            raise StepError(f"pnnx wrote a different {net} graph with fp16=0 than with fp16=1; the int8 path assumes "
                            "they are the same", hint="report this pnnx version; run without --int8 meanwhile")


def make_calibrate(layout, wavs: list[Path], files: ModelFiles | None = None, histogram: str | None = None,
                   reference: Path | None = None) -> Step:
    """Built-in calibration of ``files`` (default: the run's fp32 set, which the fp32-set step checked);
    ``reference``: where it also records the int8 check's fp32 half (core.int8.check_reference).

    ncnn runs in a child process (core.ncnn.child): its progress is relayed live, cancel stops it, and a crash
    fails the step with a sentence naming the file and the first layer that crashes."""
    files = files or fp32_model_files(layout)
    outputs = [table_file(layout, n) for n in INT8_NETS] + [layout.out / HISTOGRAMS]  # + where int8 clips most
    outputs += [reference] if reference is not None else []

    def run(ctx: StepContext) -> None:
        from core.int8.calibrate import CalibrationError
        from core.int8.children import CalibrationCrashed, calibrate_in_child
        from core.ncnn.child import ChildCancelled
        from core.pipeline.runner import StepCancelled
        try:
            result = calibrate_in_child(files, wavs, on_progress=lambda i, n, note: (ctx.progress(i, n, note),
                                                                                      ctx.log(note)),
                                        cancelled=ctx._cancelled.is_set, cache_dir=layout.work / "calibration-cache",
                                        tables=(outputs[0], outputs[1]), on_line=ctx.log, step="calibrate",
                                        histogram=histogram, reference=reference)
        except ChildCancelled:
            raise StepCancelled() from None
        except CalibrationCrashed as exc:
            raise StepError(str(exc), hint="the layer named cannot run in ncnn as written; `sherpa-ncnn-wizard "
                                           f"doctor --run {files.encoder_param}` repeats the search") from None
        except CalibrationError as exc:
            raise StepError(str(exc), hint="calibration needs 16 kHz mono wavs longer than one chunk") from None
        for s in result.skipped:
            ctx.log(f"skipped: {s}")
        for part, table in (("encoder", result.encoder), ("joiner", result.joiner)):
            for a in table.activations.values():
                ctx.log(f"{part} {a.layer:<28} max = {a.absmax:<12.6g} threshold = {a.threshold:<12.6g} "
                        f"scale = {a.scale:.6g}")
        ctx.log(f"{result.files} files, {result.chunks} encoder chunks, {result.frames} joiner frames in "
                f"{result.seconds:.1f} s ({result.histogram} histograms)")

    wav_args = " ".join(f"--wav {shlex.quote(str(w))}" for w in wavs)
    return Step("calibrate", "Calibrate int8 scales (built in)", func=run,
                inputs=[*vars(files).values(), *wavs], outputs=outputs, fingerprint_extra=histogram or "",
                describe=f"stream {len(wavs)} calibration wav(s) through the fp32 model (ncnn in a child process); "
                         "write the scale tables",
                script=[f"sherpa-ncnn-wizard calibrate {shlex.quote(str(fp32_dir(layout)))} {wav_args} "
                        f"--out {shlex.quote(str(layout.out))}  # expects the fp32 set in one directory"])


SENSITIVITY_AUTO_BYTES = 32 << 20  # "auto" measures sensitivity up to this much float encoder + joiner weights


def make_quantize(layout, files: ModelFiles | None = None, wavs: list[Path] | None = None,
                  min_cosine: float | None = None, sensitivity: str = "auto") -> Step:
    """Quantize encoder and joiner (ncnn in a child process), measuring every layer's sensitivity on the calibration
    audio (core.int8.sensitivity) and, with ``min_cosine``, keeping the most sensitive layers float until each net
    reaches it. Writes OUT/int8-sensitivity.json beside the int8 files (merged into int8-layers.json)."""
    from core.int8.sensitivity import SIDECAR
    files = files or fp32_model_files(layout)
    wavs = list(wavs or [])
    sources = {"encoder": (files.encoder_param, files.encoder_bin), "joiner": (files.joiner_param, files.joiner_bin)}
    outputs = [int8_file(layout, n, e) for n in INT8_NETS for e in ("param", "bin")]
    sidecar = layout.out / SIDECAR

    def run(ctx: StepContext) -> None:
        from core.common.formatting import human
        from core.int8.calibrate import CalibrationError
        from core.int8.children import CalibrationCrashed
        from core.int8.sensitivity import quantize_with_sensitivity_in_child
        from core.ncnn.child import ChildCancelled
        from core.pipeline.runner import StepCancelled
        weights = sum(Path(b).stat().st_size for _, b in sources.values() if Path(b).is_file())
        measure = min_cosine is not None or sensitivity == "on" or (
            sensitivity == "auto" and weights <= SENSITIVITY_AUTO_BYTES)
        if not measure:
            ctx.log(f"per-layer sensitivity not measured: {human(weights)} of float encoder + joiner weights would "
                    "take minutes and GBs (calibration.sensitivity = \"on\" or a min_cosine measures it)")
        try:  # ncnn reads and runs the weights in a child process
            result = quantize_with_sensitivity_in_child(
                files, (table_file(layout, "encoder"), table_file(layout, "joiner")), wavs,
                {n: (int8_file(layout, n, "param"), int8_file(layout, n, "bin")) for n in INT8_NETS}, min_cosine,
                sidecar, on_progress=lambda i, n, note: ctx.progress(i, n, f"sensitivity {note}"), on_line=ctx.log,
                cancelled=ctx._cancelled.is_set, measure=measure)
        except ChildCancelled:
            raise StepCancelled() from None
        except CalibrationCrashed as exc:
            raise StepError(str(exc)) from None
        except CalibrationError as exc:
            raise StepError(str(exc)) from None
        for net in INT8_NETS:
            report = result["reports"][net]
            dyn = report.get("dynamic", [])
            dynamic = ", ".join(dyn) if len(dyn) <= 8 else f"{len(dyn)} layers ({', '.join(dyn[:4])}, ...)"
            ctx.log(f"{net}: quantized {', '.join(report.get('quantized', [])) or 'nothing'}; weight-only int8 "
                    f"{dynamic or 'nothing'}; int8 weights {report.get('weight_bytes_before')} -> "
                    f"{report.get('weight_bytes_after')} bytes; {len(report.get('fp16', []))} layer(s) with fp16 "
                    f"weights; .bin {report.get('bytes_before')} -> {report.get('bytes_after')} bytes")
            for note in report.get("notes", []):
                ctx.log(note)
        from core.int8.report import sensitivity_lines
        for line in sensitivity_lines(json.loads(sidecar.read_text())):
            ctx.log(line)

    script = [f"sherpa-ncnn-wizard quantize {shlex.quote(str(p))} {shlex.quote(str(b))} "
              f"{shlex.quote(str(int8_file(layout, n, 'param')))} {shlex.quote(str(int8_file(layout, n, 'bin')))} "
              f"{shlex.quote(str(table_file(layout, n)))}" for n, (p, b) in sources.items()]
    if min_cosine is not None:
        script.append(f"# then: layers kept float, most sensitive first, until each net's cosine >= {min_cosine} "
                      f"(see {SIDECAR})")
    return Step("quantize", "Quantize encoder and joiner to int8 (built in)", func=run,
                inputs=[*(p for pair in sources.values() for p in pair), *(table_file(layout, n) for n in INT8_NETS),
                        files.decoder_param, files.decoder_bin, *wavs],
                outputs=outputs + [sidecar], fingerprint_extra=json.dumps({"min_cosine": min_cosine, "sensitivity": sensitivity}),
                describe="write the int8 encoder and joiner; measure each layer's sensitivity on the calibration "
                         "audio" + (f"; keep the most sensitive float until cosine >= {min_cosine}"
                                    if min_cosine is not None else ""), script=script)


def make_int8_steps(layout, wavs: list[Path], backend, files: ModelFiles | None = None,
                    min_cosine: float | None = None, histogram: str | None = None,
                    sensitivity: str = "auto", reference: Path | None = None) -> list[Step]:
    """calibrate and quantize, each with the built-in code or the user's tool (``backend``: an Int8Backend)."""
    from core.pipeline.int8_external import make_external_calibrate, make_external_quantize, make_int8_metadata
    steps = [make_external_calibrate(layout, backend.table_tool, wavs, files) if backend.table_tool
             else make_calibrate(layout, wavs, files, histogram, reference)]
    if backend.quantize_tool:
        steps += [make_external_quantize(layout, backend.quantize_tool, net, files) for net in INT8_NETS]
        steps.append(make_int8_metadata(layout))
    else:
        steps.append(make_quantize(layout, files, wavs, min_cosine, sensitivity))
    return steps


def calibration_steps(config: WizardConfig, layout: Layout, backend, warnings: list[str], files=None,
                      reference: Path | None = None) -> list[Step]:
    """[resample,] calibrate, quantize: the int8 steps after the float set exists (``reference``: make_calibrate's)."""
    from core.pipeline.calibration_audio import make_calibration_audio, plan_audio
    from core.pipeline.int8_steps import make_int8_steps
    audio = plan_audio(layout, [Path(w) for w in config.calibration.wavs], config.calibration.resample)
    warnings += audio.notes
    if config.calibration.min_cosine is not None and backend.quantize_tool:
        warnings.append(f"calibration.min_cosine = {config.calibration.min_cosine} is ignored: ncnn2int8 "
                        f"({backend.quantize_tool}) quantizes, and only the built-in quantizer measures each layer's "
                        "sensitivity and keeps layers float (calibration.backend = \"builtin\")")
    steps = [make_calibration_audio(audio)] if audio.resample else []
    return steps + make_int8_steps(layout, audio.wavs, backend, files, config.calibration.min_cosine,
                                   config.calibration.histogram, config.calibration.sensitivity, reference)


def int8_readiness(config: WizardConfig, resolved: ResolvedValues):
    """Before an int8 run (a checkpoint run or --from-ncnn): the calibration audio checked and the tools chosen:
    (problems, warnings, core.pipeline.int8_external.Int8Backend)."""
    from core.pipeline.int8_external import choose_backend
    problems, warnings = check_calibration_wavs(config, resolved)
    backend = choose_backend(config)
    return problems + backend.problems, warnings + [f"int8: {n}" for n in backend.notes], backend


def check_calibration_wavs(config: WizardConfig, resolved: ResolvedValues) -> tuple[list[str], list[str]]:
    """int8 needs calibration audio: (problems, warnings), every file named before anything runs.

    Unreadable files and other sample rates (unless resampling) are problems; a file shorter than one chunk is
    skipped with a warning while other files remain usable, and a problem only when nothing else is."""
    if not config.calibration.wavs:
        return ["calibration.wavs: int8 needs calibration audio (16 kHz wavs like the ones the model will hear); "
                "list some in [calibration] wavs"], []
    if not resolved.ok:
        return [], []
    from core.common.audio import SAMPLE_RATE, AudioError, read_wav
    from core.common.problems import ProblemKind, kind_of
    from core.int8.calibration import check_wavs
    segment, _ = resolved.arch.segment_offset(resolved.values)
    wavs = [Path(w) for w in config.calibration.wavs]
    other_rate = []
    if config.calibration.resample:  # checked here by length; the rate is the resample step's job
        for w in wavs:
            try:
                wave = read_wav(w)
            except AudioError:
                continue
            if wave.sample_rate != SAMPLE_RATE:
                other_rate.append(w)
    check = check_wavs([w for w in wavs if w not in other_rate], segment)
    hard = [p for p in check.problems if p not in check.short and p not in check.notes]
    problems = [f"calibration.wavs: {p}" for p in hard]
    if any(kind_of(p) is ProblemKind.SAMPLE_RATE for p in hard):
        problems.append("calibration.wavs: or set calibration.resample = true to resample them to 16 kHz")
    short_resampled = [w for w in other_rate if read_wav(w).seconds < (segment + 1) * 0.01]
    short = check.short + [f"{w}: shorter than one chunk ({(segment + 1) * 0.01:.2f} s); it would contribute "
                           "nothing" for w in short_resampled]
    usable = len(check.usable) + len(other_rate) - len(short_resampled)
    if usable:
        return problems, [f"calibration.wavs: {s}; skipped" for s in short]
    return problems + [f"calibration.wavs: {s}" for s in short] + ["calibration.wavs: none of the files can be "
                                                                   "used"], []
