"""integer-constant on a real icefall Zipformer (the kit): int32 bit patterns become float32, in place."""
import numpy as np

from core.ncnn.child import record_loads_in_child
from core.rewrite.driver import plan_file
from tests.paths import KIT

ZIP = KIT / "zipformer-1layer-stacks"


def test_integer_constants_become_floats_in_one_buffer_patched_in_place(tmp_path):
    original = (ZIP / "encoder_jit_trace-pnnx.ncnn.bin").read_bytes()
    plan = plan_file(ZIP / "encoder_jit_trace-pnnx.ncnn.param", arch="zipformer")
    fixed = [c for c in plan.changes if c.rule == "integer-constant"]
    assert len(fixed) == 3
    # the weights are held once, patched where the constants are (a published fp32 .bin is 275 MB)
    assert isinstance(plan.new_bin, bytearray) and len(plan.new_bin) == len(original)
    (tmp_path / "g.param").write_bytes(plan.new_param)
    (tmp_path / "g.bin").write_bytes(plan.new_bin)
    loads, _ = record_loads_in_child(tmp_path / "g.param", tmp_path / "g.bin")
    names = {e.layer for e in fixed}
    changed = 0
    for entry in loads:
        for ld in entry.loads:
            old, new = original[ld.start:ld.end], plan.new_bin[ld.start:ld.end]
            if entry.name in names:
                ints, floats = np.frombuffer(old, "<i4"), np.frombuffer(new, "<f4")
                assert np.array_equal(ints.astype("<f4"), floats) and ints.any()
                changed += 1
            else:
                assert old == new  # every other byte stays
    assert changed == 3
