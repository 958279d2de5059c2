"""OUT/README.md: the model card that goes with the files to whoever ships the app.

Everything in it is read from the run directory (metadata line, sizes, validation.json, speed.json,
int8-layers.json) or given by the plan (architecture, recipe, export flags), so it says what was made and
measured, not what was intended. The file list carries each file's sha256; the manifest hash is the sha256
of that list, so two packages with the same hash hold the same bytes.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.validation.report import ValidationReport, read_validation

NETS = ("encoder", "decoder", "joiner")


@dataclass
class CardInfo:
    """What only the plan knows."""

    arch: str  # core.model.architectures name
    title: str  # e.g. "LSTM transducer"
    recipe: str = ""  # icefall recipe (directory name), or the pnnx output it came from
    flags: list[str] = field(default_factory=list)  # the model flags as icefall's export takes them
    export_command: str = ""  # the export command line (relative names)
    int8: bool = False


def tool_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("sherpa-ncnn-wizard")
    except metadata.PackageNotFoundError:
        return "unknown"


def _versions() -> dict[str, str]:
    from importlib import metadata
    out = {}
    for dist in ("pnnx", "ncnn", "sherpa-ncnn", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def metadata_line(out: Path) -> str:
    param = out / "encoder_jit_trace-pnnx.ncnn.param"
    try:
        for line in param.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("SherpaMetaData"):
                return " ".join(line.split())
    except OSError:
        pass
    return ""


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_files(out: Path) -> list[Path]:
    """The files a package holds: the model sets, tokens.txt, test wavs, bench.py (README.md is added by the card)."""
    names = [f"{n}_jit_trace-pnnx.ncnn.{k}" for n in NETS for k in ("param", "bin", "int8.param", "int8.bin")]
    files = [out / n for n in names + ["tokens.txt", "bench.py", "int8-layers.json", "speed.json"]]
    files += sorted((out / "test_wavs").glob("*.wav"))
    return [f for f in files if f.is_file()]


def file_hashes(out: Path) -> list[tuple[str, int, str]]:
    return [(str(f.relative_to(out)), f.stat().st_size, sha256(f)) for f in shipped_files(out)]


def manifest_hash(hashes: list[tuple[str, int, str]]) -> str:
    return hashlib.sha256("".join(f"{h}  {n}\n" for n, _, h in hashes).encode()).hexdigest()


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def _sizes(out: Path, int8: bool) -> list[str]:
    rows = ["| net | fp16 | int8 |", "|---|---:|---:|"]
    for n in NETS:
        fp16 = out / f"{n}_jit_trace-pnnx.ncnn.bin"
        i8 = out / f"{n}_jit_trace-pnnx.ncnn.int8.bin"
        rows.append(f"| {n} | {_mb(fp16.stat().st_size) if fp16.is_file() else '-'} | "
                    f"{_mb(i8.stat().st_size) if int8 and i8.is_file() else '-'} |")
    return rows


def _validation(v: ValidationReport) -> list[str]:
    if v.problem:
        return ["validation.json could not be read (run validation again)."]
    if not v.raw:
        return ["No validation was run."]
    lines = []
    if v.numeric:
        worst = max((r for r in v.numeric if r.max_abs is not None), key=lambda r: r.max_abs / r.tolerance,
                    default=None)
        ok = all(r.ok for r in v.numeric)
        lines.append(f"- torch vs ncnn: {len(v.numeric)} comparisons, {'all within tolerance' if ok else 'SOME FAILED'}"
                     + (f" (worst: {worst.net} {worst.output}: max abs diff {worst.max_abs:.2e}, "
                        f"tolerance {worst.tolerance:.0e})" if worst else ""))
    for model in dict.fromkeys(a.model for a in v.agreement):
        runs = [a for a in v.agreement if a.model == model]
        same = sum(1 for a in runs if a.match)
        lines.append(f"- torch vs sherpa-ncnn {model} tokens: {same}/{len(runs)} decodes identical"
                     + (" (int8 is expected to differ a little)" if model == "int8" and same < len(runs) else ""))
    for d in (v.decode, v.decode_int8):
        if d is None:
            continue
        if not d.ok:
            lines.append(f"- sherpa-ncnn {d.model}: FAILED: {d.error or None}")
            continue
        for t in d.results:
            wer = f" (WER {t.wer:.1%} vs {t.reference!r})" if t.wer is not None else ""
            lines.append(f"- sherpa-ncnn {d.model}: `{t.name}` -> {t.text!r}{wer}")
    for s in v.int8_cosine:
        lines.append(f"- int8 vs fp32 {s.net} {s.output}: cosine mean {s.mean:.4f}, worst {s.worst:.4f}{s.on}")
    return lines or ["validation.json holds no figures."]


def _speed(speed: dict | None) -> list[str]:
    if not speed or not speed.get("rows"):
        return ["Not measured (no test wavs)."]
    # each row's own audio: the 1-thread rows come from validation's decode of every test wav, the all-cores rows
    # from the speed step's first seconds of it
    lines = ["| model | threads | RTF | first result | load | peak RSS | audio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in speed["rows"]:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r['threads']} | failed: {r['error']} | | | | |")
            continue
        first = "-" if r.get("first_result_seconds") is None else f"{r['first_result_seconds']:.3f} s"
        audio = "-" if r.get("audio_seconds") is None else f"{r['audio_seconds']:.1f} s"
        lines.append(f"| {r['model']} | {r['threads']} | {r['rtf']:.3f} | {first} | {r['load_seconds']:.3f} s | "
                     f"{r.get('peak_mb', 0):.1f} MB | {audio} |")
    load = speed.get("load_average")
    busy = load is not None and speed.get("cores") and load > 0.5 * speed["cores"]
    lines += ["", f"Measured on the machine that made the model ({speed.get('cores')} cores"
                  + (f", load average {load} while measuring: other work shared the cores, so the multi-thread "
                     "figures understate this model" if busy else "") + "), each row over the test audio in "
                  "its audio column. RTF is decoding time / audio time "
                  "(below 1 is faster than real time); peak RSS includes Python. Run `python bench.py` on the "
                  "target device for its own figures."]
    return lines


def _int8(report: dict | None) -> list[str]:
    if not report:
        return []
    from core.int8.report import format_by_type
    return ["## int8: what each layer type became", "",
            "Per layer in `int8-layers.json`. `int8`: weights and activations (calibrated scale table); "
            "`w-only`: int8 weights, activations quantized at run time; `fp16`/`fp32`: kept in float "
            "(ncnn has no int8 for that layer type, or its parameters are raw fp32).", "", "```",
            *format_by_type(report), "```", ""]


def _wer(dataset: dict | None) -> list[str]:
    if not dataset:
        return []
    lines = ["## Accuracy on a dataset", "", "| model | WER | substitutions | deletions | insertions | words |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in dataset.get("models", []):
        lines.append(f"| {m['model']} | {m['wer']:.2%} | {m['substitutions']} | {m['deletions']} | "
                     f"{m['insertions']} | {m['words']} |")
    if "int8_increase_points" in dataset:
        lines += ["", f"int8 vs fp16: {dataset['int8_increase_points']:+.2f} WER points"
                  + (f" (allowed: {dataset['max_wer_increase']})" if "max_wer_increase" in dataset else "")]
    return lines + [""]


def _usage(name: str, int8: bool) -> list[str]:
    enc = "encoder_jit_trace-pnnx.ncnn" + (".int8" if int8 else "")
    join = "joiner_jit_trace-pnnx.ncnn" + (".int8" if int8 else "")
    return [
        "## How to use it", "",
        "Python (`pip install sherpa-ncnn`):", "", "```python",
        "import sherpa_ncnn",
        "recognizer = sherpa_ncnn.Recognizer(",
        f'    tokens="{name}/tokens.txt",',
        f'    encoder_param="{name}/{enc}.param", encoder_bin="{name}/{enc}.bin",',
        f'    decoder_param="{name}/decoder_jit_trace-pnnx.ncnn.param", '
        f'decoder_bin="{name}/decoder_jit_trace-pnnx.ncnn.bin",',
        f'    joiner_param="{name}/{join}.param", joiner_bin="{name}/{join}.bin",',
        "    num_threads=2,  # decoding_method=\"modified_beam_search\" for hotwords",
        ")",
        "recognizer.accept_waveform(16000, samples)  # float32 mono in [-1, 1]",
        "recognizer.input_finished()",
        "print(recognizer.text)", "```", "",
        "C++ binary (built from k2-fsa/sherpa-ncnn):", "", "```bash",
        f"./build/bin/sherpa-ncnn {name}/tokens.txt \\",
        f"  {name}/{enc}.param {name}/{enc}.bin \\",
        f"  {name}/decoder_jit_trace-pnnx.ncnn.param {name}/decoder_jit_trace-pnnx.ncnn.bin \\",
        f"  {name}/{join}.param {name}/{join}.bin \\",
        f"  {name}/test_wavs/<file>.wav 2 greedy_search", "```", "",
        "Android: copy the directory into the app's `assets/` and point the model config's file names at "
        "these (sherpa-ncnn's Android demo reads the same six files and tokens.txt from the asset manager).", "",
        "Speed on the device: `python bench.py` here (needs only `sherpa_ncnn` and `numpy`).", ""]


def render_card(out: Path, info: CardInfo) -> str:
    out = Path(out)
    meta = metadata_line(out)
    validation = read_validation(out)
    speed = _json(out / "speed.json")
    layers = _json(out / "int8-layers.json") if info.int8 else None
    dataset = _json(out / "dataset-wer.json")
    hashes = file_hashes(out)
    versions = _versions()
    lines = [f"# {out.name}: {info.title} for sherpa-ncnn", "",
             f"A streaming {info.title} ({info.arch}) converted for sherpa-ncnn by sherpa-ncnn-wizard "
             f"{tool_version()}" + (" with an int8 encoder and joiner." if info.int8 else "."), "",
             "## Architecture and recipe", "",
             f"- architecture: {info.title} (`--arch {info.arch}`)"]
    if info.recipe:
        lines.append(f"- recipe: `{info.recipe}`")
    if info.flags:
        lines.append(f"- export flags: `{' '.join(info.flags)}`")
    if info.export_command:
        lines.append(f"- export: `{info.export_command}`")
    lines += [f"- SherpaMetaData (in the encoder .param): `{meta or 'missing'}`", "",
              "## Sizes", "", *_sizes(out, info.int8), "",
              "## Validation", "", *_validation(validation), "",
              "## Speed", "", *_speed(speed), "", *_int8(layers), *_wer(dataset),
              *_usage(out.name, info.int8),
              "## Provenance", "",
              f"- tool: sherpa-ncnn-wizard {tool_version()}; "
              + ", ".join(f"{k} {v}" for k, v in versions.items()),
              f"- manifest hash (sha256 of the file list below): `{manifest_hash(hashes)}`", "",
              "| file | bytes | sha256 |", "|---|---:|---|",
              *[f"| {n} | {s} | `{h}` |" for n, s, h in hashes], ""]
    return "\n".join(lines)
