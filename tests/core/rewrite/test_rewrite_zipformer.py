"""The Zipformer rewrites (core/rewrite/zipformer.py) on small synthetic graphs: python-ncnn vs numpy.

Each graph comes with the pnnx graph (``*.pnnx.param``) the rules read sizes from; the rewritten graph is run
with python-ncnn and compared with the numpy version of the torch operator. Unrecognised variants refuse,
naming the layer, and leave the files untouched; planning the output again finds nothing to do.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from core.ncnn.param import load_param, parse_param
from core.ncnn.net import as_mat
from core.rewrite.driver import RewriteError, apply_rewrites, plan_file, plan_rewrites
from tests.paths import KIT, REPO

ncnn = pytest.importorskip("ncnn")


def _write(tmp: Path, layers: list[str], pnnx: list[str]) -> Path:
    body = "".join(x + "\n" for x in layers)
    model = parse_param(f"7767517\n{len(layers)} 1\n{body}").model
    param = tmp / "enc.param"
    param.write_text(f"7767517\n{len(layers)} {model.counted_blobs()}\n{body}")
    (tmp / "enc.bin").write_bytes(b"")
    (tmp / "enc.pnnx.param").write_text(f"7767517\n{len(pnnx)} 0\n" + "".join(x + "\n" for x in pnnx))
    return param


def _rewrite(param: Path) -> tuple[Path, object]:
    plan = plan_file(param, pnnx_param=param.with_name("enc.pnnx.param"))
    assert plan.action == "rewrite" and plan.can_apply, plan.errors
    out = param.with_name("out.param")
    apply_rewrites(plan, param, param.with_suffix(".bin"), out_param=out, out_bin=param.with_name("out.bin"))
    if not param.with_name("out.bin").exists():
        param.with_name("out.bin").write_bytes(b"")
    again = plan_file(out, pnnx_param=param.with_name("enc.pnnx.param"))
    assert again.action == "unchanged", (again.errors, again.summary())  # idempotent
    return out, plan


def _run(param: Path, feeds: dict[str, np.ndarray], outs: list[str]) -> dict[str, np.ndarray]:
    net = ncnn.Net()
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(param.with_suffix(".bin"))) == 0
    ex = net.create_extractor()
    ex.set_light_mode(False)  # several blobs of one forward are read back, intermediate ones included
    mats = []
    for name, arr in feeds.items():
        mats.append(as_mat(np.asarray(arr, dtype=np.float32)))
        ex.input(name, mats[-1])
    got = {}
    for name in outs:
        rc, mat = ex.extract(name)
        assert rc == 0, name
        got[name] = np.array(mat).copy()
    del ex  # the extractor goes before the net and the input mats it points to
    del mats
    net.clear()
    return got


def _sha(d: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in d.iterdir()}


@pytest.mark.parametrize("t", [5, 8, 16])
def test_cumsum_scan_equals_numpy_cumsum(tmp_path, t):
    param = _write(tmp_path, ["Input in0 0 1 in0", "CumulativeSum cumsum_7 1 1 in0 out0 0=0"],
                   ["pnnx.Input pnnx_input_0 0 1 0 #0=(%d,1,3)f32" % t,
                    "torch.cumsum torch.cumsum_1 1 1 0 1 dim=0 $input=0 #0=(%d,1,3)f32 #1=(%d,1,3)f32" % (t, t)])
    out, plan = _rewrite(param)
    assert [c.rule for c in plan.changes] == ["cumsum-scan"] and "CumulativeSum" not in out.read_text()
    x = np.random.default_rng(0).standard_normal((t, 3)).astype(np.float32)
    got = _run(out, {"in0": x}, ["out0"])["out0"]
    np.testing.assert_allclose(got, np.cumsum(x, axis=0), rtol=1e-5, atol=1e-5)


def _strided(heads, rows, kv, offset_attr=""):
    width = kv + rows - 1
    return (["Input in0 0 1 in0", "torch.as_strided torch.as_strided_3 1 1 in0 out0"],
            [f"pnnx.Input pnnx_input_0 0 1 0 #0=({heads},{rows},{width})f32",
             f"torch.as_strided torch.as_strided_3 1 1 0 1 size=({heads},{rows},{kv}) "
             f"stride=({rows * width},{width - 1},1){offset_attr} $input=0 #0=({heads},{rows},{width})f32 "
             f"#1=({heads},{rows},{kv})f32"], width)


@pytest.mark.parametrize("offset_attr,offset", [("", None), (" storage_offset=2", 2)])
def test_rel_shift_equals_numpy_as_strided(tmp_path, offset_attr, offset):
    heads, rows, kv = 3, 4, 6
    layers, pnnx, width = _strided(heads, rows, kv, offset_attr)
    param = _write(tmp_path, layers, pnnx)
    out, plan = _rewrite(param)
    assert [c.rule for c in plan.changes] == ["rel-shift"]
    off = rows - 1 if offset is None else offset
    x = np.random.default_rng(1).standard_normal((heads, rows, width)).astype(np.float32)
    flat = x.reshape(-1)
    want = np.lib.stride_tricks.as_strided(flat[off:], shape=(heads, rows, kv),
                                           strides=(rows * width * 4, (width - 1) * 4, 4))
    got = _run(out, {"in0": x}, ["out0"])["out0"]
    np.testing.assert_array_equal(got, want)


def test_as_strided_that_is_not_a_row_shift_is_refused_and_nothing_written(tmp_path):
    layers = ["Input in0 0 1 in0", "torch.as_strided torch.as_strided_3 1 1 in0 out0"]
    pnnx = ["pnnx.Input pnnx_input_0 0 1 0 #0=(2,4,9)f32",
            "torch.as_strided torch.as_strided_3 1 1 0 1 size=(2,4,6) stride=(36,3,1) $input=0 #0=(2,4,9)f32"]
    param = _write(tmp_path, layers, pnnx)
    before = _sha(tmp_path)
    plan = plan_file(param, pnnx_param=tmp_path / "enc.pnnx.param")
    assert plan.action == "refused"
    assert plan.errors[0].startswith("layer 'torch.as_strided_3' (torch.as_strided) at line 4: not a pattern any "
                                     "rewrite recognises")
    with pytest.raises(RewriteError, match="torch.as_strided_3"):
        apply_rewrites(plan, param, tmp_path / "enc.bin")
    assert _sha(tmp_path) == before


def test_without_pnnx_graph_the_sizes_are_unknown_and_refused(tmp_path):
    layers, pnnx, _ = _strided(2, 4, 6)
    param = _write(tmp_path, layers, pnnx)
    (tmp_path / "enc.pnnx.param").unlink()
    plan = plan_file(param)
    assert plan.action == "refused" and "torch.as_strided_3" in plan.errors[0] and "pnnx" in plan.errors[0]


def test_tile_equals_numpy_repeat_and_the_bias_follows(tmp_path):
    layers = ["Input in0 0 1 in0", "Input in1 0 1 in1", "ExpandDims unsqueeze_1 1 1 in0 a",
              "Tile expand_2 1 1 a b -23302=3,1,2,1", "BinaryOp add_3 2 1 b in1 out0 0=0"]
    # a MemoryData can't be fed in a weightless test; the bias re-layout is checked on the fixture instead
    pnnx = ["pnnx.Input pnnx_input_0 0 1 0 #0=(3,1,4)f32", "pnnx.Input pnnx_input_1 0 1 1 #1=(2,1,4)f32",
            "torch.unsqueeze torch.unsqueeze_1 1 1 0 2 dim=1 $input=0 #0=(3,1,4)f32 #2=(3,1,1,4)f32",
            "Tensor.expand Tensor.expand_5 1 1 2 3 sizes=(3,2,1,4) $input=2 #2=(3,1,1,4)f32 #3=(3,2,1,4)f32"]
    param = _write(tmp_path, layers, pnnx)
    out, plan = _rewrite(param)
    assert [c.rule for c in plan.changes] == ["tile-concat"] and "Tile" not in out.read_text()
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    got = _run(out, {"in0": x, "in1": np.zeros((1, 2, 4), np.float32)}, ["b"])["b"]
    np.testing.assert_array_equal(got.reshape(3, 2, 4), np.repeat(x[:, None, :], 2, axis=1))


def test_tile_of_two_axes_is_refused(tmp_path):
    layers = ["Input in0 0 1 in0", "Tile expand_2 1 1 in0 out0 -23302=3,2,2,1"]
    pnnx = ["pnnx.Input pnnx_input_0 0 1 0 #0=(3,1,1,4)f32",
            "Tensor.repeat Tensor.repeat_5 1 1 0 1 sizes=(2,2,1,1) $input=0 #0=(3,1,1,4)f32 #1=(6,2,1,4)f32"]
    plan = plan_file(_write(tmp_path, layers, pnnx), pnnx_param=tmp_path / "enc.pnnx.param")
    assert plan.action == "refused" and "layer 'expand_2' (Tile)" in plan.errors[0]


STATES = [(2, 1), (2, 1, 3), (2, 4, 1, 3), (2, 4, 1, 2), (2, 4, 1, 2), (2, 1, 3, 5), (2, 1, 3, 5)]


def _states(n_layers: int) -> list[tuple[int, ...]]:
    return [(n_layers,) + s[1:] for s in STATES]


def _state_graph(tmp: Path, n_layers: int = 2) -> Path:
    """One Zipformer stack's seven states unbound and stacked again, as pnnx lowers them for ``n_layers``."""
    states = _states(n_layers)
    tops = lambda stem: " ".join(f"{stem}{x}" for x in "ab"[:n_layers])  # noqa: E731
    layers = ["Input in0 0 1 in0"] + [f"Input in{k} 0 1 in{k}" for k in range(1, 8)] + ["ReLU relu_0 1 1 in0 out0"]
    for k in range(1, 8):
        if k in (3, 4, 5):  # pnnx lowers the attention caches' unbind itself (axis 0 + Reshape), and writes
            w = states[k - 1][-1]  # a 4-D Reshape after the stack
            layers += [f"Slice unbind_{k} 1 {n_layers} in{k} {tops(f'r{k}')} -23300={n_layers},"
                       + ",".join(["-233"] * n_layers) + " 1=0"]
            layers += [f"Reshape reshape_{k}{x} 1 1 r{k}{x} p{k}{x} 0={w} 1=4" for x in "ab"[:n_layers]]
            layers += [f"Concat stack_{k} {n_layers} 1 {tops(f'p{k}')} s{k} 0=0",
                       f"Reshape reshape_{k}s 1 1 s{k} out{k} 0={w} 1=1 11=4 2={n_layers}"]
        else:  # the parameterless Slice of 'unbind along batch axis 0 is not supported' (one output for one layer)
            layers += [f"Slice unbind_{k} 1 {n_layers} in{k} {tops(f'p{k}')}",
                       f"Concat stack_{k} {n_layers} 1 {tops(f'p{k}')} out{k} 0=0"]
    pnnx = [f"pnnx.Input pnnx_input_{k} 0 1 {k} #{k}=({','.join(map(str, s))})f32"
            for k, s in enumerate([(1, 9, 4)] + states)]
    return _write(tmp, layers, pnnx)


def _layout(shape):
    for axis in (2, 1, 0):
        if axis < len(shape) - 1 and shape[axis] == 1:
            return shape[:axis] + shape[axis + 1:]
    return shape


@pytest.mark.parametrize("n_layers", [2, 1])
def test_unbind_and_stack_of_states_round_trip_in_sherpa_layouts(tmp_path, n_layers):
    param = _state_graph(tmp_path, n_layers)
    before = plan_rewrites(load_param(param).model)
    assert before.action == "refused" and "unbind_1" in before.errors[0]  # without pnnx's graph: refused
    out, plan = _rewrite(param)
    rules = [c.rule for c in plan.changes]
    assert rules.count("unbind-states") == 4 and rules.count("state-output-layout") == 7
    assert not [x for x in load_param(out).model.layers if x.type == "Slice" and not x.params]  # none left
    rng = np.random.default_rng(3)
    feeds = {"in0": rng.standard_normal((9, 4)).astype(np.float32)}
    for k, shape in enumerate(_states(n_layers), start=1):
        feeds[f"in{k}"] = rng.standard_normal(_layout(shape)).astype(np.float32)
    names = [f"out{k}" for k in range(1, 8)] + [f"p{k}{x}" for k in range(1, 8) for x in "ab"[:n_layers]]
    got = _run(out, feeds, names)
    for k in range(1, 8):
        x = feeds[f"in{k}"]
        for i, piece in enumerate("ab"[:n_layers]):
            np.testing.assert_array_equal(got[f"p{k}{piece}"].reshape(-1), x[i].reshape(-1))  # numpy unbind
        np.testing.assert_array_equal(got[f"out{k}"].reshape(-1), np.stack(list(x)).reshape(-1))  # stack
    # the layouts sherpa-ncnn's RunEncoder expects: cached_len (h=L, w=1), cached_avg (c=L, h=1, w=C),
    # the others exactly as the matching input
    n = n_layers
    assert got["out1"].shape == (n, 1) and got["out2"].shape == (n, 1, 3)
    assert got["out3"].shape == (n, 4, 3) and got["out6"].shape == (n, 3, 5)
    assert got["p2a"].shape == (3,) and got["p6a"].shape == (3, 5)


ONE_LAYER = KIT / "zipformer-1layer-stacks"

_COMPARE_CHILD = """
import json, sys
from pathlib import Path
from core.validation.reference import compare_encoder
d, npz = Path(sys.argv[1]), Path(sys.argv[2])
res = compare_encoder(d / "enc.param", d / "enc.bin", npz)
print(json.dumps([[r.output, r.note, r.max_abs, r.ok] for r in res]))
"""


@pytest.mark.skipif(not ONE_LAYER.is_dir(), reason=f"the icefall kit is not at {KIT}")
def test_one_layer_stacks_of_the_real_kit_match_every_reference_output(tmp_path):
    """icefall's --num-encoder-layers 1,2,1: pnnx leaves 8 one-output parameterless Slices; after the rewrite
    none is left and every encoder output of both chunks matches the traced encoder (ncnn in a child)."""
    import json
    import shutil
    import subprocess
    import sys
    param = tmp_path / "raw.param"
    shutil.copyfile(ONE_LAYER / "encoder_jit_trace-pnnx.ncnn.param", param)
    shutil.copyfile(ONE_LAYER / "encoder_jit_trace-pnnx.ncnn.bin", tmp_path / "raw.bin")
    plan = plan_file(param, pnnx_param=ONE_LAYER / "encoder.pnnx.param", arch="zipformer")
    assert plan.can_apply, plan.errors
    one_output = [c for c in plan.changes if c.rule == "unbind-states" and "one-layer stack" in c.what]
    assert sorted(c.layer for c in one_output) == sorted(f"unbind_{i}" for i in (0, 1, 5, 6, 14, 15, 19, 20))
    apply_rewrites(plan, param, tmp_path / "raw.bin", out_param=tmp_path / "enc.param", out_bin=tmp_path / "enc.bin")
    if not (tmp_path / "enc.bin").exists():
        shutil.copyfile(tmp_path / "raw.bin", tmp_path / "enc.bin")
    model = load_param(tmp_path / "enc.param").model
    assert not [layer for layer in model.layers if layer.type == "Slice" and not layer.params]
    proc = subprocess.run([sys.executable, "-c", _COMPARE_CHILD, str(tmp_path), str(ONE_LAYER / "encoder-reference.npz")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 44  # 22 outputs x 2 chunks (chunk 1 fed chunk 0's ncnn states)
    assert all(ok for *_, ok in results), [r for r in results if not r[-1]]


def test_an_unbind_of_something_else_than_a_state_input_is_refused(tmp_path):
    param = _state_graph(tmp_path)
    text = param.read_text().replace("Slice unbind_2 1 2 in2 p2a p2b", "Slice unbind_2 1 2 out0 p2a p2b")
    param.write_text(text)
    plan = plan_file(param, pnnx_param=tmp_path / "enc.pnnx.param")
    assert plan.action == "refused" and "'unbind_2' does not slice a graph input" in plan.errors[0]
