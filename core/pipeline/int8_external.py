"""The int8 steps when the user's own tools do the work: generate-int8-scale-table and/or ncnn2int8.

Which backend runs each half is decided here (``calibration.backend``:
builtin, external = the tools that are found, auto = the same without
insisting). The tools run as child processes like pnnx (log pane, progress from
their output, cancel); their exit codes lie, so a step is judged from what they
print and write (core.int8.tools). As the reference prescribes, the table tool
reads fp32 params that carry SherpaMetaData (it builds the model through
sherpa-ncnn), and ncnn2int8 reads params without it; the metadata line is put
back into the int8 encoder afterwards, byte for byte the fp16 encoder's.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from core.common.atomic import atomic_write_bytes
from core.int8.calibration import ModelFiles
from core.int8.tools import (
    QUANTIZE_TOOL,
    TABLE_TOOL,
    WEIGHT_ONLY_KEYS,
    describe_unreadable,
    find_int8_tools,
    quantize_tool_argv,
    quantize_tool_succeeded,
    table_keys,
    table_tool_argv,
    table_tool_succeeded,
    unreadable_wavs,
)
from core.model.metadata import META_TYPE
from core.ncnn.param import insert_line, load_param, replace_header
from core.pipeline.layout import INT8_NETS, fp32_model_files, int8_file, table_file
from core.pipeline.runner import Step, StepContext, StepError

# custom layers whose weights stock ncnn2int8 drops (it writes none for custom layers), shifting every later layer
_CUSTOM_WITH_WEIGHTS = ("SimpleUpsample",)


@dataclass
class Int8Backend:
    """Who does each half of int8: a tool's path, or None for the built-in one."""

    table_tool: Path | None = None
    quantize_tool: Path | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"calibrate": str(self.table_tool) if self.table_tool else "builtin",
                "quantize": str(self.quantize_tool) if self.quantize_tool else "builtin", "notes": list(self.notes)}


def choose_backend(config) -> Int8Backend:
    """Resolve ``calibration.backend`` and the tool paths of a WizardConfig into an Int8Backend."""
    choice = config.calibration.backend
    wanted = {TABLE_TOOL: config.tools.generate_int8_scale_table, QUANTIZE_TOOL: config.tools.ncnn2int8}
    keys = {TABLE_TOOL: "tools.generate_int8_scale_table", QUANTIZE_TOOL: "tools.ncnn2int8"}
    backend = Int8Backend()
    found = find_int8_tools(wanted[TABLE_TOOL], wanted[QUANTIZE_TOOL])
    for name, path in ((TABLE_TOOL, found.table_tool), (QUANTIZE_TOOL, found.quantize_tool)):
        if wanted[name] and path is None:
            backend.problems.append(f"{keys[name]}: {wanted[name]} was not found or is not executable; fix the "
                                    "path, or clear it to use the built-in one")
    if choice == "builtin" or backend.problems:
        if choice == "builtin" and (found.table_tool or found.quantize_tool):
            backend.notes.append("external int8 tools found but not used (calibration.backend = \"builtin\"): "
                                 + ", ".join(str(p) for p in (found.table_tool, found.quantize_tool) if p))
        return backend
    backend.table_tool, backend.quantize_tool = found.table_tool, found.quantize_tool
    if backend.table_tool is None and backend.quantize_tool is None:
        if choice == "external":
            backend.problems.append(f"calibration.backend: \"external\" but neither {TABLE_TOOL} nor {QUANTIZE_TOOL} "
                                    "is on PATH; set tools.generate_int8_scale_table / tools.ncnn2int8, or use "
                                    "\"builtin\"")
        return backend
    for name, path in ((TABLE_TOOL, backend.table_tool), (QUANTIZE_TOOL, backend.quantize_tool)):
        backend.notes.append(f"{name}: {path}" if path else f"{name} not found: the built-in one is used instead")
    return backend


def wav_list_file(layout) -> Path:
    return layout.work / "calibration-wavs.txt"


def no_meta_file(layout, net: str) -> Path:
    return layout.work / "int8" / f"{net}.nometa.param"


def _int8_no_meta(layout) -> Path:
    return layout.work / "int8" / "encoder.int8.nometa.param"


def tool_table_file(layout, net: str) -> Path:
    """The table ncnn2int8 reads: the calibration table plus ncnn2table's weight-only lines."""
    return layout.work / "int8" / f"{net}-scale-table.ncnn2int8.txt"


def weight_only_lines(layers, data: bytes, keys: set[str]) -> list[str]:
    """The lines ``ncnn2table`` writes for the weight-only int8 types, in its order, for the keys not in ``keys``.

    Current ncnn2int8 (since ncnn 3724d10) quantizes LSTM/GRU/RNN/Embed/MultiHeadAttention only with these
    lines and sherpa-ncnn's table tool does not write them; older ones ignore them. Scales as ncnn2table
    computes them: 127/absmax per gate row (weight_xc ``_param_0``, weight_hc ``_param_1``), one for an Embed,
    per output row for attention's q/k/v and one for its output; an all-zero row gets 1.
    """
    import numpy as np

    from core.int8.quantize import _floats

    def rows(values, n):
        if values is None or n <= 0 or values.size % n:
            return None
        absmax = np.abs(values.reshape(n, -1)).max(axis=1)
        return np.where(absmax > 0, 127.0 / np.where(absmax > 0, absmax, 1.0), 1.0).astype(np.float32)

    lines = []
    for kind in ("Embed", "MultiHeadAttention", "RNN", "LSTM", "GRU"):
        for layer in (entry for entry in layers if entry.type == kind):
            p, loads = layer.params, layer.loads
            dirs = 2 if p.get(2) == 2 else 1
            if kind == "Embed":
                parts = [(0, 1)]
            elif kind == "MultiHeadAttention":
                parts = [(0, p[0]), (2, p[0]), (4, p[0]), (6, 1)]
            else:
                gates = {"RNN": 1, "LSTM": 4, "GRU": 3}[kind]
                width = (p.get(3) or p[0]) if kind == "LSTM" else p[0]
                parts = [(0, dirs * width * gates), (2, dirs * width * gates)]
            for i, (index, n) in enumerate(parts):
                key = f"{layer.name}_param_{i}"
                if key in keys or index >= len(loads):
                    continue
                scales = rows(_floats(data, loads[index]), n)
                if scales is not None:
                    lines.append(f"{key} " + "".join(f"{s:f} " for s in scales))
    return lines


def complete_table(table_text: str, layers, data: bytes) -> str:
    """The table as ncnn2int8 should read it: its lines without blank ones (a blank line ends ncnn2int8's reading)
    and the weight-only lines it lacks."""
    kept = [line for line in table_text.splitlines() if line.strip()]
    extra = weight_only_lines(layers, data, table_keys("\n".join(kept)))
    return "".join(line + "\n" for line in kept + extra)


def make_external_calibrate(layout, tool: Path, wavs: list[Path], files: ModelFiles | None = None) -> Step:
    files = files or fp32_model_files(layout)
    tables = [table_file(layout, n) for n in INT8_NETS]
    argv = table_tool_argv(tool, (files.encoder_param, files.encoder_bin), (files.decoder_param, files.decoder_bin),
                           (files.joiner_param, files.joiner_bin), tables[0], tables[1], wav_list_file(layout))

    def before() -> None:
        atomic_write_bytes(wav_list_file(layout), "".join(f"{w}\n" for w in wavs).encode())

    def verify(lines: list[str]) -> str | None:
        unreadable = unreadable_wavs(lines)
        if unreadable:
            return describe_unreadable(unreadable)
        problem = table_tool_succeeded(lines, *tables)
        return problem or _tables_usable(tables)

    listing = " ".join(shlex.quote(f"{w}") for w in wavs)
    return Step("calibrate", f"Calibrate int8 scales ({TABLE_TOOL})", argv=argv, parser="int8-table-tool",
                inputs=[*vars(files).values(), *wavs], outputs=tables, before=before, verify=verify,
                script=[f"printf '%s\\n' {listing} > {shlex.quote(str(wav_list_file(layout)))}", shlex.join(argv)],
                fingerprint_extra="\n".join(map(str, wavs)))


def _tables_usable(tables: list[Path]) -> str | None:
    from core.int8.calibrate import CalibrationError, read_table
    for table in tables:
        try:
            read_table(table.read_text(encoding="utf-8", errors="replace"), str(table))
        except CalibrationError as exc:
            return str(exc)
    return None


def make_external_quantize(layout, tool: Path, net: str, files: ModelFiles | None = None) -> Step:
    """ncnn2int8 on one net; the encoder's input is the final param without its SherpaMetaData line."""
    files = files or fp32_model_files(layout)
    param = files.encoder_param if net == "encoder" else files.joiner_param
    binary = files.encoder_bin if net == "encoder" else files.joiner_bin
    source = no_meta_file(layout, net) if net == "encoder" else param
    out_param = _int8_no_meta(layout) if net == "encoder" else int8_file(layout, net, "param")
    out_bin = int8_file(layout, net, "bin")
    table, tool_table = table_file(layout, net), tool_table_file(layout, net)
    argv = quantize_tool_argv(tool, source, binary, out_param, out_bin, tool_table)

    def before() -> None:
        parsed = load_param(param)
        if parsed.model is None:
            raise StepError(f"{param}: {parsed.describe()}")
        carrying = sorted({layer.type for layer in parsed.model.layers if layer.type in _CUSTOM_WITH_WEIGHTS})
        if carrying:
            raise StepError(f"{param}: {', '.join(carrying)} carries weights that stock {QUANTIZE_TOOL} drops, which "
                            "would shift every later layer's weights", hint="use the built-in quantizer "
                            "(calibration.backend = \"builtin\" or \"auto\" without ncnn2int8 on PATH)")
        if net == "encoder":
            atomic_write_bytes(source, _without_metadata(parsed.model))
        layers, data = [], b""
        if parsed.model.layers_of_type(*WEIGHT_ONLY_KEYS):
            layers, data = _loads(source, binary)
        atomic_write_bytes(tool_table, complete_table(table.read_text(encoding="utf-8", errors="replace"),
                                                      layers, data).encode())

    def verify(lines: list[str]) -> str | None:
        return quantize_tool_succeeded(lines, out_param, out_bin, source, tool_table)

    script = [f"cp {shlex.quote(str(table))} {shlex.quote(str(tool_table))}  # and append ncnn2table's weight-only "
              "lines for LSTM/GRU/RNN/Embed/MultiHeadAttention, which current ncnn2int8 needs (ncnn2table "
              f"{shlex.quote(str(source))} {shlex.quote(str(binary))} weights.txt; cat weights.txt >> table)",
              shlex.join(argv)]
    if net == "encoder":
        script.insert(0, f"grep -v '^{META_TYPE} ' {shlex.quote(str(param))} > {shlex.quote(str(source))}  "
                         "# and lower the header's layer count by one")
    return Step(f"quantize-{net}", f"Quantize the {net} to int8 ({QUANTIZE_TOOL})", argv=argv, parser="ncnn2int8",
                inputs=[param, binary, table], outputs=[out_param, out_bin], before=before,
                verify=verify, script=script)


def _loads(param: Path, binary: Path):
    """Every layer's weight loads as ncnn performs them (in a child process), and the .bin's bytes."""
    from core.int8.quantize import QuantizeError
    from core.ncnn.child import NcnnCrash, record_loads_in_child
    try:
        layers, _ = record_loads_in_child(param, binary)
    except (QuantizeError, NcnnCrash) as exc:
        raise StepError(str(exc)) from None
    return layers, binary.read_bytes()


def gemm_clipping(fp32_layers, fp32_data: bytes, int8_layers, int8_data: bytes) -> list[str]:
    """Warnings for each int8 Gemm whose constant B scale clips B, the worst (lowest weight cosine) first:
    ncnn2int8 (every version) takes B's scale from its first row only (``quantize_gemm`` loops
    ``j < B_data.w``, one row when transB=1)."""
    import numpy as np

    from core.int8.quantize import _floats
    source = {layer.name: layer for layer in fp32_layers if layer.type == "Gemm"}
    warnings = []
    for layer in int8_layers:
        fp32 = source.get(layer.name)
        if layer.type != "Gemm" or fp32 is None or not layer.params.get(18) or not layer.params.get(5):
            continue
        values = _floats(fp32_data, fp32.loads[0]) if fp32.loads else None
        raw = [ld for ld in layer.loads if ld.type == 1 and ld.w == 1]
        if values is None or not values.size or not raw:
            continue
        written = float(np.frombuffer(int8_data[raw[-1].start:raw[-1].start + 4], "<f4")[0])
        absmax = float(np.abs(values).max())
        if absmax == 0 or written * absmax <= 127.0 * (1 + 1e-4):
            continue
        q = np.clip(np.round(values * written), -127, 127) / written
        clipped = float(np.mean(np.abs(values) * written > 127.5))
        cosine = float(np.dot(values, q) / (np.linalg.norm(values) * np.linalg.norm(q)))
        warnings.append((cosine, f"warning: {QUANTIZE_TOOL} scaled Gemm {layer.name}'s weight by {written:.6g}, from its "
                        f"first row only; the whole matrix needs 127/absmax = {127.0 / absmax:.6g}: "
                        f"{clipped:.1%} of its weights are clipped (up to {written * absmax / 127.0:.2f}x the int8 "
                        f"range), weight cosine {cosine:.5f}. The built-in quantizer scales by the whole matrix "
                        "(calibration.backend = \"builtin\", or leave tools.ncnn2int8 unset)"))
    return [text for _, text in sorted(warnings, key=lambda w: w[0])]


def _lines_without_metadata(model) -> list[str]:
    """The file's lines with every SherpaMetaData line removed and the header's layer count lowered to match."""
    meta = {layer.line for layer in model.layers if layer.type == META_TYPE}
    lines = [line for i, line in enumerate(model.lines, start=1) if i not in meta]
    return replace_header(lines, model.header_line, model.layer_count - len(meta), model.blob_count) if meta else lines


def _without_metadata(model) -> bytes:
    return "".join(_lines_without_metadata(model)).encode("utf-8")


def make_int8_metadata(layout) -> Step:
    """Put the fp16 encoder's SherpaMetaData line, unchanged, into ncnn2int8's encoder."""
    final_param = layout.final("encoder", "param")
    source, target = _int8_no_meta(layout), int8_file(layout, "encoder", "param")

    def run(ctx: StepContext) -> None:
        fp16 = load_param(final_param).model
        meta = [layer for layer in fp16.layers if layer.type == META_TYPE] if fp16 else []
        if not meta:
            raise StepError(f"{final_param}: has no {META_TYPE} line to copy")
        line = fp16.lines[meta[0].line - 1].rstrip("\r\n")
        parsed = load_param(source)
        if parsed.model is None or parsed.model.errors:
            raise StepError(f"{source}: {QUANTIZE_TOOL} wrote a param ncnn would not load ({parsed.describe()})")
        model = parsed.model
        kept = model.layer_count - sum(1 for m in model.layers if m.type == META_TYPE)
        lines = insert_line(_lines_without_metadata(model), model.header_line, line, model.eol)
        lines = replace_header(lines, model.header_line, kept + 1, model.blob_count)
        atomic_write_bytes(target, "".join(lines).encode("utf-8"))
        ctx.log(f"{target}: inserted {line}")
        for net, (fp32_param, fp32_bin), (int8_param, int8_bin) in checks:
            model = load_param(fp32_param).model
            if model is None or not model.layers_of_type("Gemm"):
                continue
            fp32_layers, fp32_data = _loads(fp32_param, fp32_bin)
            int8_layers, int8_data = _loads(int8_param, int8_bin)
            warnings = gemm_clipping(fp32_layers, fp32_data, int8_layers, int8_data)
            if warnings:
                ctx.log(f"{net}: warning: {QUANTIZE_TOOL} clipped the weights of {len(warnings)} of "
                        f"{len(model.layers_of_type('Gemm'))} Gemm layer(s) (each scale taken from row 0 only); "
                        "the worst first:")
            for warning in warnings:
                ctx.log(f"{net}: {warning}")

    files = fp32_model_files(layout)
    checks = [("encoder", (no_meta_file(layout, "encoder"), files.encoder_bin),
               (source, int8_file(layout, "encoder", "bin"))),
              ("joiner", (files.joiner_param, files.joiner_bin),
               (int8_file(layout, "joiner", "param"), int8_file(layout, "joiner", "bin")))]
    return Step("int8-metadata", "Add SherpaMetaData to the int8 encoder; check ncnn2int8's Gemm scales", func=run,
                inputs=list(dict.fromkeys([final_param, source, *(p for _, a, b in checks for p in (*a, *b))])),
                outputs=[target], describe=f"copy the metadata line of {final_param.name} into {target.name}",
                script=[f"# insert the {META_TYPE} line of {final_param} after the header of {source}, "
                        f"count +1, save as {target}"])
