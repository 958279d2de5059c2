"""core.int8.quantize on real pnnx output: Gemm and LSTM weight-only int8, static Convolution int8, fp16 for the rest.

Small torch modules are traced and converted with the real pnnx (fp16=0), quantized, and then

* python ncnn computes int8 outputs close to the fp32 ones (cosine);
* every layer's loads are compared one by one, as ncnn itself performs them on both files: raw (type 1)
  loads are byte-identical, float loads of non-int8 layers are the fp32 values rounded to fp16, int8
  loads belong to the quantized layers only and are ~4x smaller, and the scales follow each int8 layer;
* the param lines are unchanged except for ``18=2`` (Gemm) / ``8=2`` (LSTM, Convolution), the keys the
  ncnn that sherpa-ncnn 2.1.15 links reads (Tencent/ncnn c4193aad src/layer/gemm.cpp:31, lstm.cpp:20);
* what cannot be written correctly is refused, naming the layer and its type.

The whole-pipeline checks (sherpa-ncnn decoding the int8 demo models) are in tests/e2e/test_demo_run.py.
Run: .venv/bin/python -m pytest tests/core/int8/test_quantize_layers.py -q
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from core.int8.calibrate import ActivationScale, ScaleTable, weight_scales
from core.int8.quantize import FP16_TAG, INT8_TAG, QuantizeError, quantize
from core.ncnn.bin_layout import record_loads
from core.pnnx.tools import wheel_pnnx

pytestmark = pytest.mark.slow

T = 6
FEAT = 16
EXTRA_LOADS = {"Convolution": 2, "InnerProduct": 2, "Gemm": 1, "LSTM": 2, "Embed": 1}  # scales appended by int8


def _modules():
    import torch
    from torch import nn

    class Mixed(nn.Module):
        """Conv2d (static int8 with a table), Linear on 3-D input (Gemm), LayerNorm (raw loads), Conv1d."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.lin1 = nn.Linear(4 * FEAT, 64)
            self.norm = nn.LayerNorm(64)
            self.conv1d = nn.Conv1d(64, 32, 3, padding=1)
            self.lin2 = nn.Linear(32, 24, bias=False)

        def forward(self, x):  # x (1, T, FEAT)
            y = torch.relu(self.conv(x.unsqueeze(1)))  # (1, 4, T, FEAT)
            y = y.permute(0, 2, 1, 3).reshape(1, T, 4 * FEAT)
            y = torch.relu(self.norm(self.lin1(y)))
            y = torch.relu(self.conv1d(y.transpose(1, 2))).transpose(1, 2)
            return self.lin2(y)

    class Recurrent(nn.Module):
        """LSTM with a projection, a bidirectional LSTM, then Linear on 3-D input."""

        def __init__(self):
            super().__init__()
            self.lstm1 = nn.LSTM(FEAT, 48, proj_size=20, batch_first=True)
            self.lstm2 = nn.LSTM(20, 24, batch_first=True, bidirectional=True)
            self.out = nn.Linear(48, 16)

        def forward(self, x):
            y, _ = self.lstm1(x)
            y, _ = self.lstm2(y)
            return self.out(y)

    torch.manual_seed(0)
    return {"mixed": Mixed().eval(), "recurrent": Recurrent().eval()}


@dataclass
class Converted:
    param: Path
    bin: Path
    fp16_param: Path
    fp16_bin: Path
    x: np.ndarray
    torch_out: np.ndarray


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Converted]:
    import torch

    pnnx, _ = wheel_pnnx()
    if pnnx is None or not pnnx.is_file():
        pytest.skip("the pnnx binary is not installed")
    root = tmp_path_factory.mktemp("qlayers")
    out = {}
    rng = np.random.default_rng(1)
    for name, module in _modules().items():
        x = rng.standard_normal((1, T, FEAT)).astype(np.float32)
        pt = root / f"{name}.pt"
        with torch.no_grad():
            torch.jit.trace(module, torch.from_numpy(x)).save(str(pt))
            ref = module(torch.from_numpy(x)).numpy()
        files = {}
        for tag, flag in (("fp32", ["fp16=0"]), ("fp16", [])):
            stem = root / f"{name}.{tag}"
            subprocess.run([str(pnnx), str(pt), f"pnnxparam={stem}.pnnx.param", f"pnnxbin={stem}.pnnx.bin",
                            f"pnnxpy={stem}_pnnx.py", f"pnnxonnx={stem}.pnnx.onnx", f"ncnnparam={stem}.ncnn.param",
                            f"ncnnbin={stem}.ncnn.bin", f"ncnnpy={stem}_ncnn.py", f"inputshape=[1,{T},{FEAT}]", *flag],
                           check=True, capture_output=True, timeout=120)
            files[tag] = (Path(f"{stem}.ncnn.param"), Path(f"{stem}.ncnn.bin"))
        out[name] = Converted(*files["fp32"], *files["fp16"], x[0], ref[0])
    return out


def _run(param: Path, binary: Path, x: np.ndarray) -> np.ndarray:
    import ncnn
    net = ncnn.Net()
    assert net.load_param(str(param)) == 0 and net.load_model(str(binary)) == 0
    ex = net.create_extractor()
    ex.input("in0", ncnn.Mat(np.ascontiguousarray(x)))
    ret, mat = ex.extract("out0")
    assert ret == 0
    return np.array(mat).copy()


def _cos(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _types(param: Path) -> dict[str, str]:
    lines = param.read_text().splitlines()[2:]
    return {line.split()[1]: line.split()[0] for line in lines if line.strip()}


def _conv_table(c: Converted) -> ScaleTable:
    """Static int8 for the Conv2d: weight scales from its weights, input scale from the input's absmax."""
    layers, _ = record_loads(c.param, c.bin.read_bytes())
    conv = next(l for l in layers if l.type == "Convolution")
    data = c.bin.read_bytes()
    w = np.frombuffer(data[conv.loads[0].start + 4:conv.loads[0].end], dtype="<f4")
    absmax = float(np.abs(c.x).max())
    return ScaleTable({conv.name: weight_scales(conv.name, w, conv.params[0], six_bit=True)},
                      {conv.name: ActivationScale(conv.name, absmax, absmax, 127.0 / absmax)})


def check_layout(old_param: Path, old_bin: Path, new_param: Path, new_bin: Path, report) -> dict[str, float]:
    """Compare every load of every layer, as ncnn performs them on both files; returns the int8 layers'
    fp32/int8 weight size ratios."""
    old, new = old_bin.read_bytes(), new_bin.read_bytes()
    old_layers, n_old = record_loads(old_param, old)
    new_layers, n_new = record_loads(new_param, new)
    assert (n_old, n_new) == (len(old), len(new)), "a .bin is not consumed to its last byte"
    assert [(l.name, l.type) for l in old_layers] == [(l.name, l.type) for l in new_layers]
    int8_layers = set(report.quantized) | set(report.dynamic)
    ratios = {}
    for o, n in zip(old_layers, new_layers):
        extra = EXTRA_LOADS[o.type] if o.name in int8_layers else 0
        assert len(n.loads) == len(o.loads) + extra, o.name
        assert all(ld.type == 1 for ld in n.loads[len(o.loads):]), f"{o.name}: scales are raw fp32 loads"
        for lo, ln in zip(o.loads, n.loads):
            assert (lo.w, lo.type) == (ln.w, ln.type), o.name
            ob, nb = old[lo.start:lo.end], new[ln.start:ln.end]
            if lo.type == 1:
                assert ob == nb, f"{o.name}: a raw fp32 load changed"
            elif nb[:4] == INT8_TAG:
                assert o.name in int8_layers, f"{o.name} ({o.type}) has int8 data but is not reported as int8"
                assert len(nb) == 4 + lo.w + (-lo.w % 4)
                ratios[o.name] = max(ratios.get(o.name, 0.0), len(ob) / len(nb))
            else:
                before = np.frombuffer(ob[4:], dtype="<f4") if ob[:4] != FP16_TAG else \
                    np.frombuffer(ob[4:4 + 2 * lo.w], dtype="<f2").astype(np.float32)
                if nb[:4] == FP16_TAG:
                    after = np.frombuffer(nb[4:4 + 2 * lo.w], dtype="<f2").astype(np.float32)
                    assert np.array_equal(after, before.astype(np.float16).astype(np.float32)), o.name
                else:
                    assert ob == nb, f"{o.name}: a float load changed without becoming fp16"
    # no byte outside the recorded loads (none in these models): the files are exactly the loads
    assert sum(ld.end - ld.start for l in new_layers for ld in l.loads) == len(new)
    # param lines: unchanged but for the int8 key
    old_lines = old_param.read_text().splitlines()
    new_lines = new_param.read_text().splitlines()
    assert len(old_lines) == len(new_lines)
    for a, b in zip(old_lines, new_lines):
        name = a.split()[1] if len(a.split()) > 1 else None
        if name in int8_layers:
            key = "18" if a.split()[0] in ("Gemm", "Embed") else "8"
            assert b == f"{a} {key}=2"
        else:
            assert a == b
    return ratios


def test_gemm_lstm_conv_int8_and_fp16_elsewhere(converted, tmp_path):
    for name, c in converted.items():
        fp32 = _run(c.param, c.bin, c.x)
        assert _cos(fp32, c.torch_out) > 0.9999, f"{name}: pnnx/ncnn fp32 does not match torch"
        table = _conv_table(c) if name == "mixed" else ScaleTable()
        out_param, out_bin = tmp_path / f"{name}.int8.param", tmp_path / f"{name}.int8.bin"
        report = quantize(c.param, c.bin, table, out_param, out_bin)
        types = _types(c.param)
        gemms = sorted(n for n, t in types.items() if t == "Gemm")
        lstms = sorted(n for n, t in types.items() if t == "LSTM")
        assert gemms, f"{name}: pnnx wrote no Gemm for Linear on a 3-D input"
        assert sorted(report.dynamic) == sorted(gemms + lstms) and not report.notes
        assert report.quantized == list(table.activations)
        if name == "mixed":
            assert "Convolution1D" in types.values() and "LayerNorm" in types.values()
            assert any(types[n] == "Convolution1D" for n in report.fp16)
        else:
            assert len(lstms) == 2
            assert set(lstms) <= set(report.fp16)  # bias_c and weight_hr
        ratios = check_layout(c.param, c.bin, out_param, out_bin, report)
        assert set(ratios) == set(report.quantized) | set(report.dynamic)
        big = {n: r for n, r in ratios.items() if types[n] != "Convolution"}  # the 3x3x1 conv is tiny
        assert all(r > 3.5 for r in big.values()), ratios
        assert report.bytes_after < report.bytes_before / 2  # the Conv1d stays fp16
        int8 = _run(out_param, out_bin, c.x)
        assert int8.shape == fp32.shape
        assert _cos(int8, fp32) > 0.99, f"{name}: int8 cosine {_cos(int8, fp32):.4f}"


def test_an_fp16_export_quantizes_the_same_way(converted, tmp_path):
    c = converted["recurrent"]
    report = quantize(c.fp16_param, c.fp16_bin, ScaleTable(), tmp_path / "r.param", tmp_path / "r.bin")
    assert report.dynamic and not report.fp16  # already fp16: nothing left to convert
    check_layout(c.fp16_param, c.fp16_bin, tmp_path / "r.param", tmp_path / "r.bin", report)
    assert _cos(_run(tmp_path / "r.param", tmp_path / "r.bin", c.x), _run(c.param, c.bin, c.x)) > 0.99


def test_dynamic_types_and_fp16_can_be_switched_off(converted, tmp_path):
    c = converted["recurrent"]
    report = quantize(c.param, c.bin, ScaleTable(), tmp_path / "r.param", tmp_path / "r.bin", dynamic=("Gemm",),
                      fp16=False)
    types = _types(c.param)
    assert {types[n] for n in report.dynamic} == {"Gemm"} and not report.fp16
    text = (tmp_path / "r.param").read_text()
    assert not any(" 8=2" in line for line in text.splitlines() if line.startswith("LSTM"))
    check_layout(c.param, c.bin, tmp_path / "r.param", tmp_path / "r.bin", report)
    report = quantize(c.param, c.bin, ScaleTable(), tmp_path / "n.param", tmp_path / "n.bin", dynamic=(), fp16=False)
    assert (tmp_path / "n.bin").read_bytes() == c.bin.read_bytes()
    assert (tmp_path / "n.param").read_bytes() == c.param.read_bytes()


def test_an_int8_model_is_refused_by_layer_name(converted, tmp_path):
    c = converted["recurrent"]
    quantize(c.param, c.bin, ScaleTable(), tmp_path / "a.param", tmp_path / "a.bin")
    with pytest.raises(QuantizeError, match=r"'lstm_\d+' \(LSTM\) is already int8|'gemm_\d+' \(Gemm\) is already int8"):
        quantize(tmp_path / "a.param", tmp_path / "a.bin", ScaleTable(), tmp_path / "b.param", tmp_path / "b.bin")
    assert not (tmp_path / "b.param").exists() and not (tmp_path / "b.bin").exists()


def test_a_table_entry_on_a_gemm_is_refused(converted, tmp_path):
    c = converted["mixed"]
    gemm = next(n for n, t in _types(c.param).items() if t == "Gemm")
    table = ScaleTable({gemm: np.ones(64)}, {gemm: ActivationScale(gemm, 1.0, 1.0, 127.0)})
    with pytest.raises(QuantizeError, match=rf"'{gemm}' \(Gemm\) has a table entry"):
        quantize(c.param, c.bin, table, tmp_path / "x.param", tmp_path / "x.bin")


def test_an_unknown_layer_type_is_refused_by_name(converted, tmp_path):
    c = converted["mixed"]
    lines = c.param.read_text().splitlines(keepends=True)
    layers, blobs = lines[1].split()
    lines[1] = f"{int(layers) + 1} {blobs}\n"
    lines.insert(2, "MysteryLayer             mystery_0                0 0\n")
    param = tmp_path / "m.param"
    param.write_text("".join(lines))
    with pytest.raises(QuantizeError, match=r"'mystery_0' \(MysteryLayer\)"):
        quantize(param, c.bin, ScaleTable(), tmp_path / "o.param", tmp_path / "o.bin")
    assert not (tmp_path / "o.param").exists()


def test_embed_is_weight_only_int8(converted, tmp_path):
    """A decoder-like net: Embedding -> Linear on 3-D input (Embed, Gemm), ids as int32."""
    import ncnn
    import torch
    from torch import nn

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(12, 24)
            self.proj = nn.Linear(24, 16)

        def forward(self, y):
            return torch.relu(self.proj(self.embed(y)))

    pnnx, _ = wheel_pnnx()
    torch.manual_seed(0)
    ids = torch.tensor([[3, 7]], dtype=torch.int64)
    pt = tmp_path / "dec.pt"
    with torch.no_grad():
        torch.jit.trace(Decoder().eval(), ids).save(str(pt))
    stem = tmp_path / "dec"
    subprocess.run([str(pnnx), str(pt), f"pnnxparam={stem}.pnnx.param", f"pnnxbin={stem}.pnnx.bin",
                    f"pnnxpy={stem}_pnnx.py", f"pnnxonnx={stem}.pnnx.onnx", f"ncnnparam={stem}.ncnn.param",
                    f"ncnnbin={stem}.ncnn.bin", f"ncnnpy={stem}_ncnn.py", "inputshape=[1,2]i64", "fp16=0"],
                   check=True, capture_output=True, timeout=120)
    param, binary = Path(f"{stem}.ncnn.param"), Path(f"{stem}.ncnn.bin")
    report = quantize(param, binary, ScaleTable(), tmp_path / "d8.param", tmp_path / "d8.bin")
    types = _types(param)
    assert {types[n] for n in report.dynamic} == {"Embed", "Gemm"}
    ratios = check_layout(param, binary, tmp_path / "d8.param", tmp_path / "d8.bin", report)
    assert all(r > 3.5 for r in ratios.values()), ratios

    def run(p, b):
        net = ncnn.Net()
        assert net.load_param(str(p)) == 0 and net.load_model(str(b)) == 0
        ex = net.create_extractor()
        ex.input("in0", ncnn.Mat(np.array([3, 7], dtype=np.int32)))
        return np.array(ex.extract("out0")[1]).copy()

    assert _cos(run(param, binary), run(tmp_path / "d8.param", tmp_path / "d8.bin")) > 0.99


SHERPA_CHILD = r"""
import json, sys, wave
import numpy as np
import sherpa_ncnn
cfg = json.loads(sys.argv[1])
r = sherpa_ncnn.Recognizer(tokens=cfg["tokens"], num_threads=1, **cfg["files"])
with wave.open(cfg["wav"]) as w:
    s = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
r.accept_waveform(16000, s)
r.accept_waveform(16000, np.zeros(8000, np.float32))
r.input_finished()
print(json.dumps({"text": r.text}))
"""


@pytest.mark.parametrize("arch", ["lstm", "zipformer"])
def test_sherpa_ncnn_decodes_weight_only_int8_of_every_net(tmp_path, arch):
    """Gemm, LSTM and Embed int8 (from the fp16 export, no table) load and decode in sherpa-ncnn 2.1.15's own
    ncnn, in a child process (sherpa-ncnn can kill its interpreter)."""
    import json
    import sys

    from core.pipeline.demo import demo_recipe
    from tui.cli.main import main

    out = tmp_path / "demo"
    assert main(["run", "--demo", arch, "--out", str(out)]) == 0
    files, kinds = {}, set()
    for net in ("encoder", "decoder", "joiner"):
        src = out / f"{net}_jit_trace-pnnx.ncnn"
        rep = quantize(Path(f"{src}.param"), Path(f"{src}.bin"), ScaleTable(), tmp_path / f"{net}.param",
                       tmp_path / f"{net}.bin")
        types = _types(Path(f"{src}.param"))
        kinds |= {types[n] for n in rep.dynamic}
        files[f"{net}_param"], files[f"{net}_bin"] = str(tmp_path / f"{net}.param"), str(tmp_path / f"{net}.bin")
    assert {"Gemm", "Embed"} <= kinds and ("LSTM" in kinds) == (arch == "lstm")
    assert "SherpaMetaData" in (tmp_path / "encoder.param").read_text()
    cfg = {"tokens": str(out / "tokens.txt"), "files": files, "wav": str(demo_recipe(arch).test_wavs[0])}
    proc = subprocess.run([sys.executable, "-c", SHERPA_CHILD, json.dumps(cfg)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "text" in json.loads(proc.stdout.strip().splitlines()[-1])
