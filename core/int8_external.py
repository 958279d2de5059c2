"""The int8 steps when the user's own tools do the work: generate-int8-scale-table and/or ncnn2int8.

Which backend runs each half is decided here (``calibration.backend``:
builtin, external = the tools that are found, auto = the same without
insisting). The tools run as child processes like pnnx (log pane, progress from
their output, cancel); their exit codes lie, so a step is judged from what they
print and write (core.int8_tools). As the reference prescribes, the table tool
reads fp32 params that carry SherpaMetaData (it builds the model through
sherpa-ncnn), and ncnn2int8 reads params without it; the metadata line is put
back into the int8 encoder afterwards, byte for byte the fp16 encoder's.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write_bytes
from .calibration_run import ModelFiles
from .int8_steps import INT8_NETS, fp32_model_files, int8_file, table_file
from .int8_tools import (QUANTIZE_TOOL, TABLE_TOOL, find_int8_tools, quantize_tool_argv, quantize_tool_succeeded,
                         table_tool_argv, table_tool_succeeded)
from .metadata import META_TYPE
from .ncnn_param import insert_line, load_param, replace_header
from .runner import Step, StepContext, StepError

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


def make_external_calibrate(layout, tool: Path, wavs: list[Path], files: ModelFiles | None = None) -> Step:
    files = files or fp32_model_files(layout)
    tables = [table_file(layout, n) for n in INT8_NETS]
    argv = table_tool_argv(tool, (files.encoder_param, files.encoder_bin), (files.decoder_param, files.decoder_bin),
                           (files.joiner_param, files.joiner_bin), tables[0], tables[1], wav_list_file(layout))

    def before() -> None:
        atomic_write_bytes(wav_list_file(layout), "".join(f"{w}\n" for w in wavs).encode())

    def verify(lines: list[str]) -> str | None:
        unreadable = [line.split("Failed to read", 1)[1].strip() for line in lines if "Failed to read" in line]
        if unreadable:
            return f"{TABLE_TOOL} could not read {', '.join(unreadable)}; it must be 16 kHz PCM/float wav"
        problem = table_tool_succeeded(lines, *tables)
        return problem or _tables_usable(tables)

    listing = " ".join(shlex.quote(f"{w}") for w in wavs)
    return Step("calibrate", f"Calibrate int8 scales ({TABLE_TOOL})", argv=argv, parser="int8-table-tool",
                inputs=[*vars(files).values(), *wavs], outputs=tables, before=before, verify=verify,
                script=[f"printf '%s\\n' {listing} > {shlex.quote(str(wav_list_file(layout)))}", shlex.join(argv)],
                fingerprint_extra="\n".join(map(str, wavs)))


def _tables_usable(tables: list[Path]) -> str | None:
    from .calibrate import CalibrationError, read_table
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
    argv = quantize_tool_argv(tool, source, binary, out_param, out_bin, table_file(layout, net))

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

    def verify(lines: list[str]) -> str | None:
        return quantize_tool_succeeded(lines, out_param, out_bin)

    script = [shlex.join(argv)]
    if net == "encoder":
        script.insert(0, f"grep -v '^{META_TYPE} ' {shlex.quote(str(param))} > {shlex.quote(str(source))}  "
                         "# and lower the header's layer count by one")
    return Step(f"quantize-{net}", f"Quantize the {net} to int8 ({QUANTIZE_TOOL})", argv=argv, parser="ncnn2int8",
                inputs=[param, binary, table_file(layout, net)], outputs=[out_param, out_bin], before=before,
                verify=verify, script=script)


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

    return Step("int8-metadata", "Add SherpaMetaData to the int8 encoder", func=run, inputs=[final_param, source],
                outputs=[target], describe=f"copy the metadata line of {final_param.name} into {target.name}",
                script=[f"# insert the {META_TYPE} line of {final_param} after the header of {source}, "
                        f"count +1, save as {target}"])
