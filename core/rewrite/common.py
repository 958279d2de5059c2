"""Rewrites for what the pnnx wheel gets wrong in any architecture's export.

- ``integer-constant`` (a ``.bin`` change): a MemoryData pnnx wrote from an integer tensor
  (``@data=(16,1)i64``) holds int32 bit patterns that ncnn reads as floats (1 -> 1.4e-45: in the Zipformer
  the pooling's 1/(1+t) becomes inf); the same integers are written as float32.
"""
from __future__ import annotations

import re
from pathlib import Path

from core.pnnx.graph import PnnxOp, read_pnnx_ops
from core.rewrite.rule import Edit, RuleContext, RuleResult

_INTEGER_DATA_RE = re.compile(r"\)(i64|i32|i16|i8|u8)$")


def integer_constant(ctx: RuleContext) -> RuleResult:
    """MemoryData constants pnnx wrote as int32 bits (read as tiny floats) -> the same integers as float32."""
    if ctx.pnnx_param is None:
        return RuleResult.no_match("pnnx's own graph (*.pnnx.param) says which constants are integers; not given")
    try:
        if ctx.bin_bytes is not None:
            new_bin, done = fix_integer_constants(ctx.param_bytes, ctx.bin_bytes, read_pnnx_ops(ctx.pnnx_param))
        else:  # read once into a buffer patched in place (a published Zipformer's fp32 .bin is 275 MB)
            bin_data = bytearray(Path(ctx.bin_path).stat().st_size)
            with open(ctx.bin_path, "rb") as fh:
                fh.readinto(bin_data)
            new_bin, done = fix_integer_constants(ctx.param_bytes, bin_data, read_pnnx_ops(ctx.pnnx_param),
                                                  Path(ctx.bin_path))
    except Exception as exc:  # python ncnn could not walk the weights: report, do not guess
        return RuleResult.no_match(str(exc), notes=[f"integer constants were not checked: {exc}"])
    if new_bin is None:
        return RuleResult.no_match("no integer constant is stored as int32 bits")
    return RuleResult.changed([Edit(name, "MemoryData", what) for name, what in done], new_bin=new_bin)


def fix_integer_constants(param_bytes: bytes, bin_data: bytes | bytearray, ops: list[PnnxOp],
                          bin_path: Path | None = None):
    """MemoryData that pnnx wrote from an integer tensor (``@data=(16,1)i64``) holds int32 bit patterns that
    ncnn reads as floats (1 -> 1.4e-45, so the pooling's 1/(1+t) becomes inf); write them as float32.

    Returns (new .bin or None, [(layer name, what)]). Values already written as floats are left alone, so
    planning the result again finds nothing to do. A ``bytearray`` is patched in place and returned (no second
    copy of the weights); ``bin_path``: the file ``bin_data`` was read from (ncnn's child reads it there).
    """
    import tempfile

    import numpy as np

    from core.ncnn.child import record_loads_in_child

    integer = {o.name: o.attrs["@data"] for o in ops
               if o.type == "pnnx.Attribute" and _INTEGER_DATA_RE.search(o.attrs.get("@data", ""))}
    if not integer:
        return None, []
    with tempfile.TemporaryDirectory(prefix="integer-constants-") as tmp:  # ncnn reads them in a child process
        (Path(tmp) / "g.param").write_bytes(param_bytes)
        if bin_path is None:
            bin_path = Path(tmp) / "g.bin"
            bin_path.write_bytes(bin_data)
        loads, _ = record_loads_in_child(Path(tmp) / "g.param", bin_path)
    out = bin_data if isinstance(bin_data, bytearray) else bytearray(bin_data)
    changes = []
    for entry in loads:
        if entry.type != "MemoryData" or entry.name not in integer or len(entry.loads) != 1:
            continue
        ld = entry.loads[0]
        if ld.type != 1 or ld.end - ld.start != 4 * ld.w:
            continue
        ints = np.frombuffer(out, dtype="<i4", count=ld.w, offset=ld.start).copy()
        if not ints.any() or np.abs(ints).max() >= 1 << 24:
            continue  # zeros, or already floats
        out[ld.start:ld.end] = ints.astype("<f4").tobytes()
        changes.append((entry.name, f"pnnx wrote the {integer[entry.name]} constant as int32 bits, which ncnn reads "
                                    f"as tiny floats; its {ld.w} values ({int(ints.min())}..{int(ints.max())}) are "
                                    "now written as float32 in the .bin"))
    return (out if changes else None), changes
