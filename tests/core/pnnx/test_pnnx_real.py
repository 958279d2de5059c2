"""End-to-end checks against the real toolchain: torch.jit.trace -> pnnx -> ncnn -> sherpa-ncnn.

A tiny stand-in LSTM transducer (encoder, decoder, joiner) that follows sherpa-ncnn's LstmModel I/O
contract is traced once per session and converted with the real pnnx binary (called directly, every
output path given explicitly). The tests then check that

* the produced ``.ncnn.param`` round-trips byte-exactly through core.ncnn.param, and fp16/fp32 exports
  differ only in the ``.bin``;
* core.model.metadata plans and applies exactly one inserted SherpaMetaData line (plus the header bump);
* python ncnn (with a custom SherpaMetaData layer) computes identical outputs with and without it;
* the real sherpa-ncnn runtime decodes with the metadata and dies without it (in a child process,
  because sherpa-ncnn kills the interpreter);
* core.ncnn.runtime_layers agrees with the installed sherpa-ncnn wheel on a sample of layer types.

Run: .venv/bin/python -m pytest tests/core/pnnx/test_pnnx_real.py -q
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from core.model.architectures import get_arch, resolve
from core.model.metadata import (META_NAME, META_TYPE, apply_plan, build_metadata, plan_metadata,
                           read_metadata)
from core.ncnn.param import format_layer_line, load_param
from core.ncnn.runtime_layers import runtime_problem

pytestmark = pytest.mark.slow

# -- sizes of the stand-in transducer ---------------------------------------------------------------
FEAT = 80          # fbank bins sherpa-ncnn feeds
T_SEG = 9          # LstmModel: segment = 9 frames, offset = 4
LAYERS = 1         # --num-encoder-layers
ENC_DIM = 32       # --encoder-dim (LSTM proj_size; width of hx)
HIDDEN = 48        # --rnn-hidden-size (width of cx)
CONV_CH = 32
DEC_DIM = 24
JOIN_DIM = 40
CONTEXT = 2
TOKENS = ["<blk>", "<sos/eos>", "<unk>"] + list("abcdefg")
VOCAB = len(TOKENS)

CHILD_TIMEOUT = 60  # seconds; every child process runs under it
NOT_REGISTERED = "not exists or registered"


def _pnnx_exe() -> Path:
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the pnnx package is not installed")
    exe = Path(list(spec.submodule_search_locations)[0]) / "pnnx"
    if not exe.is_file():
        pytest.skip(f"the pnnx binary is missing: {exe}")
    return exe


# -- the torch modules --------------------------------------------------------------------------------

def _torch_modules():
    import torch
    from torch import nn

    class Encoder(nn.Module):
        """in0 x (1,9,80), in1 x_lens (1,), in2 hx (L,1,D), in3 cx (L,1,H) -> out0..out3."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv1d(FEAT, CONV_CH, 3, stride=2)
            self.conv2 = nn.Conv1d(CONV_CH, CONV_CH, 3, stride=2)
            self.lstm = nn.LSTM(CONV_CH, HIDDEN, num_layers=LAYERS, proj_size=ENC_DIM, batch_first=True)
            self.out = nn.Linear(ENC_DIM, ENC_DIM)  # Linear on a 3-D input -> ncnn Gemm

        def forward(self, x, x_lens, hx, cx):
            y = x.permute(0, 2, 1)
            y = torch.relu(self.conv1(y))
            y = torch.relu(self.conv2(y))  # 9 frames -> 4 -> 1
            y = y.permute(0, 2, 1)
            y, (hn, cn) = self.lstm(y, (hx, cx))
            y = self.out(y)
            out_lens = (x_lens - 7) // 4  # float math: x_lens must be used or pnnx drops in1
            return y, out_lens, hn, cn

    class Decoder(nn.Module):
        """icefall's decoder as export-for-ncnn traces it (need_pad=False): Embedding + depthwise conv + ReLU."""

        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(VOCAB, DEC_DIM)
            self.conv = nn.Conv1d(DEC_DIM, DEC_DIM, CONTEXT, groups=DEC_DIM, bias=False)

        def forward(self, y):
            e = self.embedding(y).permute(0, 2, 1)
            e = self.conv(e).permute(0, 2, 1)
            return torch.relu(e)

    class Joiner(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder_proj = nn.Linear(ENC_DIM, JOIN_DIM)
            self.decoder_proj = nn.Linear(DEC_DIM, JOIN_DIM)
            self.output_linear = nn.Linear(JOIN_DIM, VOCAB)
            with torch.no_grad():  # random weights, but make sure greedy search emits real tokens
                self.output_linear.bias[0] -= 20.0  # <blk>
                self.output_linear.bias[2] -= 20.0  # <unk> (sherpa-ncnn skips it too)

        def forward(self, enc, dec):
            return self.output_linear(torch.tanh(self.encoder_proj(enc) + self.decoder_proj(dec)))

    torch.manual_seed(0)
    enc_inputs = (torch.randn(1, T_SEG, FEAT), torch.tensor([float(T_SEG)]),
                  torch.randn(LAYERS, 1, ENC_DIM), torch.randn(LAYERS, 1, HIDDEN))
    dec_inputs = (torch.tensor([[3, 4]], dtype=torch.int64),)
    join_inputs = (torch.randn(1, ENC_DIM), torch.randn(1, DEC_DIM))
    return {
        "encoder": (Encoder().eval(), enc_inputs, f"[1,{T_SEG},{FEAT}]f32,[1]f32,[{LAYERS},1,{ENC_DIM}]f32,"
                                                  f"[{LAYERS},1,{HIDDEN}]f32"),
        "decoder": (Decoder().eval(), dec_inputs, f"[1,{CONTEXT}]i64"),
        "joiner": (Joiner().eval(), join_inputs, f"[1,{ENC_DIM}]f32,[1,{DEC_DIM}]f32"),
    }


# -- conversion --------------------------------------------------------------------------------------

OUTPUT_KEYS = ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnparam", "ncnnbin", "ncnnpy")


def _outputs(out_dir: Path, stem: str) -> dict[str, Path]:
    names = {"pnnxparam": ".pnnx.param", "pnnxbin": ".pnnx.bin", "pnnxpy": "_pnnx.py", "pnnxonnx": ".pnnx.onnx",
             "ncnnparam": ".ncnn.param", "ncnnbin": ".ncnn.bin", "ncnnpy": "_ncnn.py"}
    return {k: out_dir / (stem + names[k]) for k in OUTPUT_KEYS}


def _pnnx_command(exe: Path, pt: Path, outputs: dict[str, Path], inputshape: str, fp16: bool) -> list[str]:
    cmd = [str(exe), str(pt)] + [f"{k}={outputs[k]}" for k in OUTPUT_KEYS] + [f"inputshape={inputshape}"]
    if not fp16:
        cmd.append("fp16=0")
    return cmd


@dataclass
class Conversion:
    name: str
    fp16: bool
    outputs: dict[str, Path]
    returncode: int
    stderr: str

    @property
    def param(self) -> Path:
        return self.outputs["ncnnparam"]

    @property
    def bin(self) -> Path:
        return self.outputs["ncnnbin"]


@dataclass
class Models:
    root: Path
    torch: dict  # name -> (module, example inputs, inputshape)
    conv: dict  # (name, fp16) -> Conversion
    tokens: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Models:
    """Trace the three stand-in models and convert each with pnnx twice (fp16 default, fp16=0)."""
    import torch

    exe = _pnnx_exe()
    root = tmp_path_factory.mktemp("pnnx_real")
    mods = _torch_modules()
    jobs = []
    for name, (module, inputs, shape) in mods.items():
        pt = root / f"{name}_jit_trace-pnnx.pt"  # icefall's names, with the '-' pnnx would rename by default
        with torch.no_grad():
            torch.jit.trace(module, inputs).save(str(pt))
        for fp16 in (True, False):
            out_dir = root / ("fp16" if fp16 else "fp32")
            out_dir.mkdir(exist_ok=True)
            outputs = _outputs(out_dir, pt.stem)
            proc = subprocess.Popen(_pnnx_command(exe, pt, outputs, shape, fp16), cwd=out_dir,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            jobs.append((name, fp16, outputs, proc))
    conv = {}
    for name, fp16, outputs, proc in jobs:
        try:
            _, err = proc.communicate(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"pnnx timed out converting {name}")
        conv[(name, fp16)] = Conversion(name, fp16, outputs, proc.returncode, err)
    tokens = root / "tokens.txt"
    tokens.write_text("".join(f"{t} {i}\n" for i, t in enumerate(TOKENS)))
    return Models(root, mods, conv, tokens)


def _lstm_resolved():
    resolved = resolve(get_arch("lstm"), {"--num-encoder-layers": str(LAYERS), "--encoder-dim": str(ENC_DIM),
                                          "--rnn-hidden-size": str(HIDDEN)})
    assert resolved.ok, resolved.errors
    return resolved


def _insert_metadata(param: Path):
    """plan + apply the LSTM metadata on ``param`` in place; returns (plan, apply result)."""
    parsed = load_param(param)
    assert parsed.ok, parsed.describe()
    resolved = _lstm_resolved()
    plan = plan_metadata(parsed.model, build_metadata(resolved), resolved.values)
    return plan, apply_plan(plan, param)


@pytest.fixture(scope="session")
def meta_encoder(models, tmp_path_factory) -> Path:
    """A copy of the fp32 encoder param with the SherpaMetaData line inserted (the .bin is shared)."""
    src = models.conv[("encoder", False)]
    assert src.returncode == 0, src.stderr[-3000:]
    dst = tmp_path_factory.mktemp("meta") / src.param.name
    shutil.copy(src.param, dst)
    plan, result = _insert_metadata(dst)
    assert result.applied, (plan.errors, result.message)
    return dst


# -- 1. pnnx output ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["encoder", "decoder", "joiner"])
def test_pnnx_outputs_roundtrip_and_fp16_only_changes_bin(models, name):
    c16, c32 = models.conv[(name, True)], models.conv[(name, False)]
    for c in (c16, c32):
        assert c.returncode == 0, f"pnnx failed on {name} (fp16={c.fp16}):\n{c.stderr[-3000:]}"
        assert "pass_ncnn" in c.stderr
        for key, path in c.outputs.items():
            assert path.is_file() and path.stat().st_size > 0, f"pnnx did not write {key}={path}"
        # nothing written under pnnx's default names (the '-' would have become '_')
        assert not list(c.param.parent.glob("*_jit_trace_pnnx*"))
        parsed = load_param(c.param)
        assert parsed.ok, parsed.describe()
        assert not parsed.issues, parsed.describe()
        assert parsed.model.to_bytes() == c.param.read_bytes()
    assert c16.param.read_bytes() == c32.param.read_bytes()
    assert c32.bin.stat().st_size > c16.bin.stat().st_size


def test_pnnx_encoder_graph_has_lstm_contract(models):
    model = load_param(models.conv[("encoder", False)].param).model
    assert model.input_names == ["in0", "in1", "in2", "in3"]
    assert {"out0", "out1", "out2", "out3"} <= set(model.output_names)
    types = model.layer_types()
    assert types.get("LSTM") == 1 and types.get("Convolution1D") == 2 and types.get("Gemm") == 1, types
    lstm = model.layers_of_type("LSTM")[0]
    assert lstm.get(0) == ENC_DIM and lstm.get(3) == HIDDEN  # 0=proj (num_output), 3=hidden
    dec = load_param(models.conv[("decoder", False)].param).model
    assert {"Embed", "ConvolutionDepthWise1D"} <= set(dec.layer_types())
    join = load_param(models.conv[("joiner", False)].param).model
    assert join.layer_types().get("InnerProduct") == 3


# -- 2. metadata insertion on a real pnnx param ------------------------------------------------------

def test_metadata_insert_on_real_param(models, tmp_path):
    src = models.conv[("encoder", False)].param
    param = tmp_path / src.name
    shutil.copy(src, param)
    original = param.read_bytes()
    before = load_param(param).model

    plan, result = _insert_metadata(param)
    assert plan.action == "insert"
    assert not plan.errors, plan.errors
    assert not plan.warnings, plan.warnings
    assert all(c.ok for c in plan.checks), [c.message for c in plan.checks if not c.ok]
    assert plan.header_before == f"{before.layer_count} {before.blob_count}"
    assert plan.header_after == f"{before.layer_count + 1} {before.blob_count}"
    assert result.applied, result.message

    backup = param.with_name(param.name + ".orig")
    assert backup.is_file() and result.backup == str(backup)
    assert backup.read_bytes() == original

    new_bytes = param.read_bytes()
    assert new_bytes == plan.new_bytes
    old_lines = original.decode().splitlines(keepends=True)
    new_lines = new_bytes.decode().splitlines(keepends=True)
    assert len(new_lines) == len(old_lines) + 1
    assert new_lines[0] == old_lines[0]
    assert new_lines[1] != old_lines[1] and new_lines[1].split() == [str(before.layer_count + 1),
                                                                     str(before.blob_count)]
    assert new_lines[2] == plan.line + "\n"
    assert new_lines[2].split()[:4] == [META_TYPE, META_NAME, "0", "0"]
    assert new_lines[3:] == old_lines[2:]

    after = load_param(param)
    assert after.ok and not after.issues, after.describe()
    assert after.model.to_bytes() == new_bytes
    assert read_metadata(after.model) == {0: 3, 1: LAYERS, 2: ENC_DIM, 3: HIDDEN}

    # planning again on the edited file is a no-op
    resolved = _lstm_resolved()
    again = plan_metadata(after.model, build_metadata(resolved), resolved.values)
    assert again.action == "unchanged"


# -- 3. python ncnn: the metadata layer changes nothing --------------------------------------------

def _load_ncnn(param: Path, bin_: Path, keep: list):
    import ncnn

    class SherpaMetaData(ncnn.Layer):
        def __init__(self):
            super().__init__()
            self.one_blob_only = False  # 0 bottoms / 0 tops: with True, load_param fails
            self.params = {}

        def load_param(self, pd):
            self.params = {k: pd.get(k, 0) for k in range(16)}
            return 0

    def creator():
        layer = SherpaMetaData()
        keep.append(layer)  # python must keep the instance alive, or ncnn segfaults in load_param
        return layer

    keep.append(creator)
    net = ncnn.Net()
    keep.append(net)
    assert net.register_custom_layer(META_TYPE, creator, lambda layer: None) == 0
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(bin_)) == 0
    return net


def _run_encoder(net, x, x_lens, hx, cx) -> dict[str, np.ndarray]:
    import ncnn

    ex = net.create_extractor()
    ex.set_light_mode(False)
    for name, arr in (("in0", x[0]), ("in1", x_lens), ("in2", hx[:, 0, :]), ("in3", cx[:, 0, :])):
        assert ex.input(name, ncnn.Mat(np.ascontiguousarray(arr, dtype=np.float32))) == 0
    out = {}
    for name in ("out0", "out1", "out2", "out3"):
        ret, mat = ex.extract(name)
        assert ret == 0, f"extract {name} -> {ret}"
        out[name] = np.array(mat).copy()
    return out


def test_python_ncnn_same_outputs_with_metadata(models, meta_encoder):
    import torch

    enc = models.conv[("encoder", False)]
    keep: list = []
    plain = _load_ncnn(enc.param, enc.bin, keep)
    with_meta = _load_ncnn(meta_encoder, enc.bin, keep)

    first = with_meta.layers()[0]
    assert first.type == META_TYPE and first.name == META_NAME
    assert first.params[0] == 3 and first.params[1] == LAYERS
    assert first.params[2] == ENC_DIM and first.params[3] == HIDDEN
    assert [layer.type for layer in plain.layers()] == [layer.type for layer in with_meta.layers()[1:]]

    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, T_SEG, FEAT)).astype(np.float32)
    x_lens = np.array([float(T_SEG)], dtype=np.float32)
    hx = rng.standard_normal((LAYERS, 1, ENC_DIM)).astype(np.float32)
    cx = rng.standard_normal((LAYERS, 1, HIDDEN)).astype(np.float32)
    a = _run_encoder(plain, x, x_lens, hx, cx)
    b = _run_encoder(with_meta, x, x_lens, hx, cx)
    for name in a:
        assert a[name].shape == b[name].shape
        assert np.max(np.abs(a[name] - b[name])) == 0, name

    # and the ncnn graph computes what the torch module does
    module = models.torch["encoder"][0]
    with torch.no_grad():
        ref = module(*(torch.from_numpy(v) for v in (x, x_lens, hx, cx)))
    for name, r in zip(("out0", "out1", "out2", "out3"), ref):
        np.testing.assert_allclose(b[name].reshape(-1), r.numpy().reshape(-1), atol=1e-4, rtol=1e-4,
                                   err_msg=name)


# -- 4. the real sherpa-ncnn runtime ---------------------------------------------------------------

DECODE_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import sherpa_ncnn
    tokens, ep, eb, dp, db, jp, jb = sys.argv[1:8]
    r = sherpa_ncnn.Recognizer(tokens=tokens, encoder_param=ep, encoder_bin=eb, decoder_param=dp,
                               decoder_bin=db, joiner_param=jp, joiner_bin=jb, num_threads=1)
    print("CREATED", flush=True)
    sr = 16000
    t = np.arange(sr, dtype=np.float32) / sr
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 3 * t) + 0.05 * rng.standard_normal(sr)
    r.accept_waveform(sr, wave.astype(np.float32))
    r.accept_waveform(sr, np.zeros(sr // 2, dtype=np.float32))
    r.input_finished()
    print("TEXT:" + r.text, flush=True)
""")


def _run_child(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"child process timed out after {CHILD_TIMEOUT} s: {exc.stdout!r} {exc.stderr!r}")


def _decode(models: Models, encoder_param: Path, decoder_param: Path | None = None) -> subprocess.CompletedProcess:
    enc, dec, join = (models.conv[(n, False)] for n in ("encoder", "decoder", "joiner"))
    return _run_child(DECODE_SCRIPT, models.tokens, encoder_param, enc.bin, decoder_param or dec.param, dec.bin,
                      join.param, join.bin, cwd=models.root)


def test_sherpa_ncnn_decodes_with_metadata(models, meta_encoder):
    proc = _decode(models, meta_encoder)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("TEXT:")]
    assert len(lines) == 1, proc.stdout
    text = lines[0][len("TEXT:"):]
    assert text.strip(), f"sherpa-ncnn decoded nothing: {proc.stdout!r} {proc.stderr!r}"
    assert set(text) <= set("".join(TOKENS[3:]) + " ")
    assert "still in use" not in proc.stderr and "FATAL" not in proc.stderr, proc.stderr


def test_sherpa_ncnn_dies_without_metadata(models):
    proc = _decode(models, models.conv[("encoder", False)].param)
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert "CREATED" not in proc.stdout and "TEXT:" not in proc.stdout
    assert "SherapMetaData" in proc.stdout + proc.stderr  # sherpa-ncnn's own spelling in its hint


# -- 5. core.ncnn.runtime_layers vs the installed sherpa-ncnn wheel -------------------------------------

# keys that let a blob-less probe layer load without weights (LayerNorm: 2=0 affine off, else it
# tries to read 0-sized gamma/beta: "layer load_model 6 probe_layer failed")
PROBE_PARAMS = {"LayerNorm": ("0=4", "2=0")}


@pytest.mark.parametrize("layer_type,missing", [
    ("Swish", True), ("Clip", True), ("ConvolutionDepthWise", True), ("Tile", True), ("CumulativeSum", True),
    ("LayerNorm", False), ("GELU", False), ("Gemm", False),
])
def test_runtime_layer_table_matches_wheel(models, meta_encoder, tmp_path, layer_type, missing):
    assert (runtime_problem(layer_type, encoder=False) is not None) == missing

    dec = load_param(models.conv[("decoder", False)].param).model
    line = format_layer_line(layer_type, "probe_layer", params=PROBE_PARAMS.get(layer_type, ()))
    probe = dec.with_line_inserted(len(dec.lines), line)
    probe = probe.with_header(dec.layer_count + 1, dec.blob_count)
    assert not probe.errors, probe.errors
    param = tmp_path / "decoder_probe.ncnn.param"
    param.write_bytes(probe.to_bytes())

    proc = _decode(models, meta_encoder, decoder_param=param)
    log = proc.stdout + proc.stderr
    if missing:
        # sherpa-ncnn logs this, then crashes (SIGSEGV) instead of raising
        assert f"layer {layer_type} {NOT_REGISTERED}" in log, (proc.returncode, log)
        assert proc.returncode != 0
    else:
        assert NOT_REGISTERED not in log, (proc.returncode, log)
        # the layer has no blobs, so it never runs: the decoder still loads and the child decodes
        assert proc.returncode == 0, (proc.returncode, log)
        assert "TEXT:" in proc.stdout
