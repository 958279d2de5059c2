"""Stand-ins for sherpa-ncnn's generate-int8-scale-table and ncnn2int8, for tests only.

No package index ships the real tools and they cannot be built here (see
shared/reference/toolchain.md §3), so, like the demo recipes stand in for
icefall, these behave like the real binaries where the wizard can see it (read
from sherpa-ncnn 2.1.15 ``generate-int8-scale-table.cc``/``wave-reader.cc`` and
ncnn ``tools/quantize/ncnn2int8.cpp`` at c4193aad and HEAD):

* the table tool: the argument check and usage text, ``num encoder/joiner conv
  layers: N``, ``num files: N`` (a list's blank line is a file named ""), two
  passes over the list in order, each file read each time: the wave reader's own
  message (with the blank line its ``NCNN_LOGE`` adds after a ``\\n``-ended
  format), then ``Failed to read X`` or ``Processing X``; a stereo file's
  warning; with no audio it could use, tables of ``inf`` scales, ``scale = inf``
  lines and the success line; exit code 0 whatever happened;
* ncnn2int8: the usage (exit 255), ``Open X failed.`` / ``read_int8scale_table
  failed`` (255), the table read the way it reads it (a blank line ends it), its
  passes in order (``quantize_convolution``, ``quantize_innerproduct``,
  ``quantize_lstm``, ``quantize_gemm``, ``fuse_requantize a b``), ``this layer
  need to be quantized, but no scale param!`` with no layer name ending that pass,
  ``create_custom_layer SherpaMetaData``, and the Gemm B scale taken from row 0
  only (every version does that).

The numbers come from the built-in calibrator and quantizer. By default
ncnn2int8 is c4193aad with 430b3124a and cc1673491 (the ncnn sherpa-ncnn links,
fixed). ``STANDIN_BREAK`` makes them misbehave the way real ones do:

* ``no-success``: the table tool exits 0 with no tables and no success line;
* ``no-scale``: ncnn2int8 reads a table whose first ``_param_0`` line is lost;
* ``sigfpe``: ncnn2int8 as built from c4193aad itself: its passes run, then it
  dies with SIGFPE writing an int8 Convolution's empty top_blob_int8_scales (or
  an InnerProduct/Convolution without bias);
* ``needs-weight-lines``: ncnn2int8 of current ncnn (since 3724d10): LSTM, GRU,
  RNN, Embed and MultiHeadAttention need ``<layer>_param_0``/``_param_1`` lines,
  else "no scale param!" and they stay float (exit 0); no table at all: exit 255;
* ``ncnn2table-meta``: the "table tool" is ncnn2table fed a param with
  SherpaMetaData: empty tables, yet the success line.
"""
from __future__ import annotations

import os
import signal
import stat
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUCCESS = ("ncnn int8 calibration table create success, best wish for your int8 inference has a low accuracy "
           "loss...\\(^0^)/...233...")
CONV_TYPES = ("Convolution", "ConvolutionDepthWise", "InnerProduct")


def install(directory: Path) -> Path:
    """Write both stand-ins as executables into ``directory`` (to put on PATH); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, entry in (("generate-int8-scale-table", "table_main"), ("ncnn2int8", "quantize_main")):
        exe = directory / name
        exe.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                       f"from tests.int8_tool_standins import {entry}\nsys.exit({entry}())\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _loge(text: str) -> None:
    """ncnn's NCNN_LOGE: the text, then a newline of its own (so a format ending in \\n leaves a blank line)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _break() -> str:
    return os.environ.get("STANDIN_BREAK", "")


# -- generate-int8-scale-table ----------------------------------------------------------------------------

def read_wave_like_sherpa(path: str) -> tuple[bool, int]:
    """sherpa-ncnn's ReadWave(filename, 16000): prints what it prints; (ok, channels)."""
    try:
        data = Path(path).read_bytes() if path else b""
    except OSError:
        data = b""  # ifstream fails: every read leaves the zero-initialised header field as it is
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        size = struct.calcsize(fmt)
        chunk = data[pos:pos + size]
        pos += size
        return struct.unpack(fmt, chunk)[0] if len(chunk) == size else 0

    chunk_id = take("<I")
    if chunk_id != 0x46464952:
        _loge(f"Expected chunk_id RIFF. Given: 0x{chunk_id:08x}\n")
        return False, 0
    take("<I")
    fmt = take("<I")
    if fmt != 0x45564157:
        _loge(f"Expected format WAVE. Given: 0x{fmt:08x}\n")
        return False, 0
    sub1_id, sub1_size = take("<I"), take("<i")
    if sub1_id == 0x4B4E554A:  # JUNK
        pos += sub1_size
        sub1_id, sub1_size = take("<I"), take("<i")
    if sub1_id != 0x20746D66:
        _loge(f"Expected subchunk1_id 0x20746d66. Given: 0x{sub1_id:08x}\n")
        return False, 0
    if sub1_size not in (16, 18):
        _loge(f"Expected subchunk1_size 16. Given: {sub1_size}\n")
        return False, 0
    audio_format = take("<h")
    if audio_format not in (1, 3):
        _loge(f"Expected audio_format 1. Given: {audio_format}\n")
        if audio_format == -2:
            _loge("We don't support WAVE_FORMAT_EXTENSIBLE files.")
        return False, 0
    channels = take("<h")
    if channels != 1:
        _loge(f"Warning: {channels} channels are found. We only use the first channel.\n")
    rate, byte_rate, block_align, bits = take("<i"), take("<i"), take("<h"), take("<h")
    if byte_rate != rate * channels * bits // 8:
        _loge(f"Incorrect byte rate: {byte_rate}. Expected: {rate * channels * bits // 8}")
        return False, channels
    if block_align != channels * bits // 8:
        _loge(f"Incorrect block align: {block_align}. Expected: {channels * bits // 8}\n")
        return False, channels
    if bits not in (8, 16, 32):
        _loge(f"Expected bits_per_sample 8, 16 or 32. Given: {bits}\n")
        return False, channels
    if sub1_size == 18:
        extra = take("<h")
        if extra != 0:
            _loge(f"Extra size should be 0 for wave from NAudio. Current extra size {extra}\n")
            return False, channels
    sub2_id, sub2_size = take("<I"), take("<i")
    while sub2_id != 0x61746164:  # SeekToDataChunk; a failed stream ends it without a word
        if pos >= len(data):
            return False, channels
        pos += sub2_size
        sub2_id, sub2_size = take("<I"), take("<i")
    if (bits, audio_format) not in ((16, 1), (8, 1), (32, 1), (32, 3)):
        _loge(f"Unsupported {bits} bits per sample and audio format: {audio_format}. Supported values are: 8, "
              "16, 32.")
        return False, channels
    if len(data) - pos < sub2_size:
        _loge(f"Failed to read {sub2_size} bytes")
        return False, channels
    if rate != 16000:
        _loge(f"Expected sample rate: 16000, actual sample rate: {rate}")
        return False, channels
    return True, channels


def read_list_like_getline(listing: Path) -> list[str]:
    """std::getline over the list: every line, blank ones too; a final newline ends the last line."""
    try:
        text = listing.read_bytes().decode("utf-8", "surrogateescape")
    except OSError:
        return []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _conv_layers(param: Path) -> list[str]:
    from core.ncnn.param import load_param
    model = load_param(param).model
    return [layer.name for layer in model.layers if layer.type in CONV_TYPES] if model else []


def _segment(param: Path) -> int | None:
    """Model::Create: the encoder's SherpaMetaData decides the model; its Segment (frames per chunk), or None."""
    from core.model.architectures import BY_MODEL_TYPE
    from core.model.metadata import read_metadata
    from core.ncnn.param import load_param
    model = load_param(param).model
    meta = read_metadata(model) if model else None
    if not meta or meta.get(0) not in BY_MODEL_TYPE:
        return None
    arch = BY_MODEL_TYPE[meta[0]]
    return arch.segment_offset(arch.values_from_metadata(meta))[0]


def _frames(wav: str) -> int:
    from core.common.audio import read_wav
    w = read_wav(wav)
    return int(w.seconds * 100)


def _inf_table(param: Path, binary: Path):
    """What the tool computes from no audio: the weight scales as usual (inf for an all-zero row), every
    activation's absmax and threshold 0, so its scale 127/0 = inf."""
    import numpy as np

    from core.int8.calibrate import ActivationScale, ScaleTable
    from core.int8.calibration import read_quantizable_weights
    table = ScaleTable()
    for name, (_kind, w, rows, six_bit) in read_quantizable_weights(param, binary).items():
        absmax = np.abs(np.asarray(w, np.float32).reshape(rows, -1)).max(axis=1)
        with np.errstate(divide="ignore"):
            table.weights[name] = (31.0 if six_bit else 127.0) / absmax
    for name in _conv_layers(param):
        table.activations[name] = ActivationScale(name, 0.0, 0.0, float("inf"))
    return table


def _table_text(table) -> str:
    lines = [f"{name}_param_0 " + "".join(f"{s:f} " for s in scales) for name, scales in table.weights.items()]
    lines += [f"{name} {a.scale:f} " for name, a in table.activations.items()]
    return "".join(line + "\n" for line in lines)


def table_main(argv: list[str] | None = None) -> int:
    from core.int8.calibration import ModelFiles, calibrate

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 9:
        _err(f"Please provide 10 arg. Currently given: {len(args) + 1}")
        _err("Usage:\ngenerate-int8-scale-table encoder.param encoder.bin decoder.param decoder.bin joiner.param "
             "joiner.bin encoder-scale-table.txt joiner-scale-table.txt wave_filenames.txt\n\n"
             "Each line in wave_filenames.txt is a path to some 16k Hz mono wave file.")
        return 1
    files = ModelFiles(*map(Path, args[:6]))
    enc_table, join_table, listing = map(Path, args[6:])
    if _break() == "ncnn2table-meta":
        _err("layer SherpaMetaData not exists or registered")
        _err("network graph not ready")
        _err("warning: calibration dataset not provided, skip activation calibration and generate weight-only table")
        for _ in range(6):
            print("param:0", flush=True)
        enc_table.write_bytes(b"")
        join_table.write_bytes(b"")
        _err(SUCCESS)
        return 0
    wavs = read_list_like_getline(listing)
    segment = _segment(files.encoder_param)
    if segment is None:  # Model::Create gives nullptr, which QuantNet dereferences
        _loge("Unable to create a model from specified model files.\nPlease check: \n  1. If you are using a "
              "ConvEmformer/Zipformer/LSTM model, please make sure you have added SherapMetaData to "
              "encoder_xxx.ncnn.param (or encoder_xxx.ncnn.int8.param if you are using an int8 model). You need to "
              "add it manually after converting the model with pnnx.\n  2. (Android) Whether the app requires an "
              "int8 model or not\n")
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGSEGV)
    _err(f"num encoder conv layers: {len(_conv_layers(files.encoder_param))}")
    _err(f"num joiner conv layers: {len(_conv_layers(files.joiner_param))}")
    _err(f"num files: {len(wavs)}")
    readable: list[str] = []
    for first_pass in (True, False):  # count the absmax, then build the histograms
        for wav in wavs:
            ok, _channels = read_wave_like_sherpa(wav)
            if not ok:
                _err(f"Failed to read {wav}")
                continue
            _err(f"Processing {wav}")
            if first_pass:
                readable.append(wav)
    if _break() == "no-success":
        return 0
    from core.ncnn.bin_layout import _quiet_stderr
    result = None
    counted = [Path(w) for w in readable if _frames(w) > segment]  # the last partial chunk is dropped
    with _quiet_stderr():  # python ncnn's "overwrite built-in layer type" lines are not the tool's
        if counted:
            result = calibrate(files, counted, workers=1)
        tables = ((result.encoder, result.joiner) if result else
                  (_inf_table(files.encoder_param, files.encoder_bin),
                   _inf_table(files.joiner_param, files.joiner_bin)))
    for part, table in zip(("encoder", "joiner"), tables):
        _err(f"----------{part}----------")
        for a in table.activations.values():
            _err(f"{a.layer:<40} : max = {a.absmax:<15f}  threshold = {a.threshold:<15f}  scale = {a.scale:<15f}")
    for path, table in zip((enc_table, join_table), tables):
        try:
            path.write_text(_table_text(table))
        except OSError:
            _err(f"fopen {path} failed")  # and the exit code stays 0
    _err(SUCCESS)
    return 0


# -- ncnn2int8 --------------------------------------------------------------------------------------------

def read_table_like_ncnn2int8(path: str) -> tuple[dict, dict] | None:
    """read_int8scale_table: (blob scales, weight scales) by key; a blank line ends the table."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    blobs: dict[str, list[float]] = {}
    weights: dict[str, list[float]] = {}
    for line in raw.decode("utf-8", "replace").split("\n"):
        tokens = [t for t in line.rstrip("\r").split(" ") if t]
        if not tokens:
            break
        values, last = [], 1.0
        for t in tokens[1:]:
            try:
                last = float(t)
            except ValueError:
                pass  # sscanf fails: the previous value is pushed again
            values.append(last)
        (weights if "_param_" in tokens[0] else blobs)[tokens[0]] = values
    return blobs, weights


_WEIGHT_KEYS = {"RNN": 2, "LSTM": 2, "GRU": 2, "Embed": 1, "MultiHeadAttention": 4}


def _passes(model, blobs: dict, weights: dict, current: bool) -> tuple[list, list[str], bool]:
    """ncnn2int8's passes in its order: (static layers, dynamic types done, whether a pass complained)."""
    static, dynamic, complained = [], [], False
    for kind in CONV_TYPES:
        for layer in model.layers_of_type(kind):
            if layer.name not in blobs:
                continue
            if f"{layer.name}_param_0" not in weights:
                _err("this layer need to be quantized, but no scale param!")
                complained = True
                break
            _err(f"quantize_{kind.lower()} {layer.name}")
            static.append(layer)
    for kind in ("RNN", "LSTM", "GRU", "Embed", "Gemm", "MultiHeadAttention"):
        layers = model.layers_of_type(kind)
        done = bool(layers)
        for layer in layers:
            need = _WEIGHT_KEYS.get(kind, 0) if current else 0
            if any(f"{layer.name}_param_{i}" not in weights for i in range(need)):
                _err("this layer need to be quantized, but no scale param!")
                complained, done = True, False
                break
            _err(f"quantize_{kind.lower()} {layer.name}")
        if done:
            dynamic.append(kind)
    return static, dynamic, complained


def _fuse_lines(model, static) -> None:
    """fuse_requantize: a Convolution whose output feeds the next Convolution (directly or through a Split)."""
    convs = [l for l in model.layers if l.type in ("Convolution", "ConvolutionDepthWise")]
    for i, layer in enumerate(convs):
        top = layer.tops[0]
        nxt = next((l for l in convs[i + 1:] if len(l.bottoms) == 1 and l.bottoms[0] == top), None)
        if nxt is not None:
            _err(f"fuse_requantize {layer.name} {nxt.name}")
            continue
        split = next((l for l in model.layers if l.type == "Split" and l.bottoms == (top,)), None)
        if split is not None and all(any(c.bottoms == (t,) for c in convs) for t in split.tops):
            _err(f"fuse_requantize {layer.name} {split.name}")


def _dies_writing(model, static) -> bool:
    """c4193aad's ModelWriter divides by an empty Mat's elemsize: an int8 Convolution's top scales, a bias-less
    Convolution/InnerProduct's bias (fixed by 430b3124a and cc1673491)."""
    if any(l.type == "Convolution" for l in static):
        return True
    return any(l.type == "InnerProduct" and not l.get(1, 0) or l.type == "Convolution" and not l.get(5, 0)
               for l in model.layers)


def _upstream_gemm(original):
    """quantize_gemm's B scale: 127 / absmax of B_data's first row (its loop stops at B_data.w = K, transB=1)."""
    import numpy as np

    import core.int8.quantize as q

    def plan(data, layer, plan_):
        result = original(data, layer, plan_)
        p = layer.params
        if isinstance(result, str) or not p[5] or p[3] != 1:
            return result
        ld = layer.loads[0]
        values = q._floats(data, ld)
        n, k = p[8], p[9]
        top = float(np.abs(values[:k]).max()) if values is not None and values.size == n * k else 0.0
        scale = np.array([127.0 / top if top else 1.0], np.float32)
        plan_.replace[id(ld)] = q._int8_blob(q._int8(values, scale, 1))
        plan_.after[id(layer)] = q._raw(scale)
        return result
    return plan


def quantize_main(argv: list[str] | None = None) -> int:
    import numpy as np

    import core.int8.quantize as q
    from core.int8.calibrate import ActivationScale, CalibrationError, ScaleTable
    from core.ncnn.param import load_param

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (4, 5):
        _err(f"usage: {sys.argv[0]} [inparam] [inbin] [outparam] [outbin] [calibration table]")
        return 255
    param, binary, out_param, out_bin = map(Path, args[:4])
    mode = _break()
    blobs: dict = {}
    weights: dict = {}
    if len(args) == 5:
        read = read_table_like_ncnn2int8(args[4])
        if read is None:
            _err(f"Open {args[4]} failed.")
            _err("read_int8scale_table failed")
            return 255
        blobs, weights = read
    model = load_param(param).model
    if model is None:
        return 0  # ncnn's loader complains on its own; ncnn2int8 carries on and writes nothing usable
    for kind in sorted({l.type for l in model.layers if l.type == "SherpaMetaData"}):
        _err(f"create_custom_layer {kind}")
    current = mode == "needs-weight-lines"
    if current and len(args) == 4:
        needy = next((l for l in model.layers if l.type in _WEIGHT_KEYS), None)
        if needy is not None:
            _err(f"{needy.name} ({needy.type}): calibration table is required for static weight quantization")
            _err("run ncnn2table to generate weight scales and pass the table to ncnn2int8")
            return 255
    if mode == "no-scale":
        lost = next((k for k in weights if k.endswith("_param_0")), None)
        weights.pop(lost, None)
    static, dynamic, _complained = _passes(model, blobs, weights, current)
    _fuse_lines(model, static)
    if mode == "sigfpe" and _dies_writing(model, static):
        out_param.write_bytes(b"")
        out_bin.write_bytes(b"")
        sys.stderr.flush()
        signal.signal(signal.SIGFPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGFPE)
    table = ScaleTable()
    for layer in static:
        table.weights[layer.name] = np.array(weights[f"{layer.name}_param_0"])
        scale = blobs[layer.name][0]
        table.activations[layer.name] = ActivationScale(layer.name, float("nan"), 127.0 / scale, scale)
    q._plan_gemm = _upstream_gemm(q._plan_gemm)
    try:
        q.quantize(param, binary, table, out_param, out_bin,
                   dynamic=tuple(k for k in dynamic if k in q.DYNAMIC))
    except CalibrationError as exc:
        _err(str(exc))
    return 0
