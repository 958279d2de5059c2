"""torch's side of the fp16 checks as its own early step: it runs in the background right after the export, beside
the pnnx conversions (pnnx keeps one core busy), instead of after the metadata step.

It needs only the traced modules, the test wavs and the metadata the run will write (given on the command line:
the encoder's param does not have it yet), and it reads no pnnx graph (pnnx may be writing one meanwhile): the
encoder's input shapes come from the metadata. It saves the numeric check's torch inputs and outputs (an npz) and
torch's streaming decode of every wav (JSON); the validate step then only runs ncnn and sherpa-ncnn, and uses
these only when the model it checks has the same metadata.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

VERSION = 1


def metadata_from_line(line: str) -> dict:
    """A SherpaMetaData layer line -> the metadata dict core.model.metadata.read_metadata gives for it."""
    from core.model.metadata import read_metadata
    from core.ncnn.param import parse_param
    parsed = parse_param(f"7767517\n1 0\n{line}\n", "<metadata>")
    meta = read_metadata(parsed.model) if parsed.model else None
    if not meta:
        raise ValueError(f"not a SherpaMetaData line: {line!r}")
    return meta


def run(out: Path, arch: str, traced_dir: Path, wavs: list[Path], metadata_line: str, save: Path, numeric: bool,
        decode: bool) -> dict:
    from core.validation import agreement
    from core.validation.numeric import save_chunks
    from core.validation.validate import torch_work
    agreement.METADATA_GIVEN[str(out)] = (metadata_from_line(metadata_line), arch)
    agreement.SHAPE_FILES["use"] = False
    report: dict = {"notes": [], "timings": {}}
    torch_side, errors = torch_work(out, arch, traced_dir, wavs, numeric, decode, report)
    npz = save.with_suffix(".npz")
    if torch_side:
        tmp = npz.with_name(f".{npz.name}.{os.getpid()}.tmp")
        save_chunks(tmp, torch_side)
        os.replace(tmp, npz)
    record = {"version": VERSION, "metadata_line": metadata_line, "traced_dir": str(traced_dir),
              "wavs": [str(w) for w in wavs], "errors": errors, "notes": report["notes"],
              "timings": report["timings"], "torch_decodes": agreement.torch_decodes(traced_dir),
              "npz": npz.name if torch_side else None}
    from core.common.atomic import atomic_write_bytes
    atomic_write_bytes(save, json.dumps(record).encode())
    return record


def load(path: Path, out: Path, traced_dir: Path | None, wavs: list[Path]) -> tuple[dict | None, str]:
    """The early step's record when it fits this validation (the same metadata in OUT's encoder, traced modules and
    wavs), else (None, why not)."""
    from core.model.metadata import read_metadata
    from core.ncnn.param import load_param
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{path}: unreadable ({exc})"
    if not isinstance(record, dict) or record.get("version") != VERSION:
        return None, f"{path}: not this version's record"
    parsed = load_param(out / "encoder_jit_trace-pnnx.ncnn.param")
    final = read_metadata(parsed.model) if parsed.model else None
    try:
        planned = metadata_from_line(record.get("metadata_line", ""))
    except ValueError:
        planned = None
    if final is None or planned is None or {k: str(v) for k, v in final.items()} != {k: str(v) for k, v in
                                                                                   planned.items()}:
        return None, "the encoder's metadata is not the one torch ran with"
    if record.get("traced_dir") != str(traced_dir) or record.get("wavs") != [str(w) for w in wavs]:
        return None, "other traced modules or wavs"
    npz = path.with_name(record["npz"]) if record.get("npz") else None
    if npz is not None and not npz.is_file():
        return None, f"{npz}: missing"
    return {"errors": record.get("errors") or {}, "notes": record.get("notes") or [],
            "timings": record.get("timings") or {}, "torch_decodes": record.get("torch_decodes") or {},
            "npz": npz}, ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.validation.early_torch", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--arch", required=True)
    p.add_argument("--traced-dir", type=Path, required=True)
    p.add_argument("--metadata-line", required=True, help="the SherpaMetaData line the metadata step will write")
    p.add_argument("--wav", action="append", type=Path, default=[])
    p.add_argument("--save", type=Path, required=True, help="the record (JSON; the npz is written beside it)")
    p.add_argument("--no-numeric", action="store_true")
    p.add_argument("--no-decode", action="store_true")
    a = p.parse_args(argv)
    print("torch's side of the fp16 checks, beside the pnnx conversions: loading torch and the traced modules ...",
          flush=True)
    try:
        record = run(a.out, a.arch, a.traced_dir, a.wav, a.metadata_line, a.save, not a.no_numeric,
                     not a.no_decode)
    except ValueError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    for net, error in record["errors"].items():
        print(f"{net}: torch could not run ({error}); the validate step reports it", flush=True)
    print(f"torch decoded {len(record['torch_decodes'])} wav(s); saved {a.save}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
