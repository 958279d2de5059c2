"""Compare an ncnn model with reference outputs saved from the traced torch modules (an ``.npz``).

The npz layout is the one of the icefall-real fixtures: ``chunk{0,1}_in{K}`` /
``chunk{0,1}_out{K}`` for the encoder (torch shapes, batch axis included) and
``decoder_in0``/``decoder_out0``/``joiner_in{0,1}``/``joiner_out0``. The encoder
runs chunk 0 from the stored inputs, then chunk 1 from chunk 0's *ncnn* state
outputs (which output feeds which input is read off the npz: chunk 1's state
inputs equal chunk 0's state outputs), so errors that accumulate through the
states are seen. Imports ncnn and numpy lazily; no torch needed.
"""
from __future__ import annotations

from pathlib import Path

from core.model.architectures import get_arch
from core.ncnn.net import Keeper, as_mat, register_meta_layer
from core.validation.numeric import TOLERANCE, NumericResult, _precision, drop_batch_axis


def _state_map(ref, chunk_out: str, chunk_in: str) -> dict[int, int]:
    """input index k (k >= 1) -> output index j with chunk1_in{k} == chunk0_out{j}."""
    import numpy as np
    outs = sorted(int(k[len(chunk_out):]) for k in ref.files if k.startswith(chunk_out))
    ins = sorted(int(k[len(chunk_in):]) for k in ref.files if k.startswith(chunk_in))
    mapping = {}
    for k in ins:
        if k == 0:
            continue
        for j in outs:
            a, b = ref[f"{chunk_in}{k}"], ref[f"{chunk_out}{j}"]
            if a.shape == b.shape and j not in mapping.values() and np.array_equal(a, b):
                mapping[k] = j
                break
    return mapping


def _net(param: Path, binary: Path, keep: Keeper, register=None):
    import ncnn
    net = ncnn.Net()
    net.opt.num_threads = 1
    register_meta_layer(net, keep)
    if register is not None:
        register(net, keep)
    if net.load_param(str(param)) != 0:
        raise RuntimeError(f"ncnn could not load {param}")
    if net.load_model(str(binary)) != 0:
        raise RuntimeError(f"ncnn could not load {binary}")
    return net


def _run(net, feeds: dict, outs: list[str]):
    import numpy as np
    ex = net.create_extractor()
    mats = []  # kept alive until the extractor is done
    for name, arr in feeds.items():
        mats.append(as_mat(arr))
        ex.input(name, mats[-1])
    result = {}
    for name in outs:
        rc, mat = ex.extract(name)
        if rc != 0:
            raise RuntimeError(f"ncnn could not compute {name} (extract returned {rc})")
        result[name] = np.array(mat)
    return result


def _feed(arr, net: str):
    import numpy as np
    a = np.asarray(arr)
    if net == "decoder":  # token ids: sherpa-ncnn feeds int32
        return a.reshape(-1).astype(np.int32)
    a = drop_batch_axis(a) if net == "encoder" else a.reshape(a.shape[1:]) if a.shape[:1] == (1,) else a
    return a.astype(np.float32)


def _compare(net: str, name: str, got, want, tol_rel: float, note: str) -> NumericResult:
    import numpy as np
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    tol = tol_rel * max(1.0, float(np.abs(want).max()) if want.size else 1.0)
    if got.size != want.size:
        return NumericResult(net, name, list(want.shape), float("inf"), float("inf"), tol, False,
                             f"{note} ncnn gave shape {tuple(got.shape)}".strip())
    diff = np.abs(got.reshape(-1) - want.reshape(-1))
    return NumericResult(net, name, list(want.shape), float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0,
                         tol, bool(diff.max(initial=0.0) <= tol), note)


def compare_encoder(param: Path, binary: Path, npz: Path, register=None) -> list[NumericResult]:
    import numpy as np
    ref = np.load(npz)
    tol_rel = TOLERANCE[_precision(binary, param)]
    keep = Keeper()
    net = _net(param, binary, keep, register)
    n_in = len([k for k in ref.files if k.startswith("chunk0_in")])
    n_out = len([k for k in ref.files if k.startswith("chunk0_out")])
    outs = [f"out{j}" for j in range(n_out)]
    mapping = _state_map(ref, "chunk0_out", "chunk1_in")
    results: list[NumericResult] = []
    prev = None
    for chunk in (0, 1):
        feeds = {}
        for k in range(n_in):
            arr = _feed(ref[f"chunk{chunk}_in{k}"], "encoder")
            carried = prev[f"out{mapping[k]}"] if chunk == 1 and k in mapping and prev is not None else None
            if carried is not None and carried.size == arr.size:  # carry ncnn's own states over
                arr = carried.reshape(arr.shape)
            # (a state of the wrong size already failed in chunk 0; chunk 1 then gets the reference state)
            feeds[f"in{k}"] = arr
        got = _run(net, feeds, outs)
        for j in range(n_out):
            results.append(_compare("encoder", f"out{j}", got[f"out{j}"], ref[f"chunk{chunk}_out{j}"], tol_rel,
                                    f"chunk {chunk}"))
        prev = got
    return results


def compare_decoder_joiner(directory: Path, npz: Path) -> list[NumericResult]:
    import numpy as np
    ref = np.load(npz)
    results = []
    for net_name in ("decoder", "joiner"):
        param = directory / f"{net_name}_jit_trace-pnnx.ncnn.param"
        binary = directory / f"{net_name}_jit_trace-pnnx.ncnn.bin"
        keep = Keeper()
        net = _net(param, binary, keep)
        ins = sorted(k for k in ref.files if k.startswith(f"{net_name}_in"))
        feeds = {k[len(net_name) + 1:]: _feed(ref[k], net_name) for k in ins}
        got = _run(net, feeds, ["out0"])
        results.append(_compare(net_name, "out0", got["out0"], ref[f"{net_name}_out0"],
                                TOLERANCE[_precision(binary, param)], ""))
    return results


def compare_streaming(param: Path, binary: Path, npz: Path, arch: str, register=None) -> list[NumericResult]:
    """Feed chunk 0's features the way sherpa-ncnn does (``segment`` frames, advancing by ``offset``, states
    carried) and compare each output frame with the reference (traced on the whole chunk at once).

    Only for causal encoders whose runtime chunk is fixed (LSTM): output frame t depends on input
    frames [offset*t, offset*t + segment), so the streamed frames must equal the whole-chunk ones.
    """
    import numpy as np
    segment, offset = get_arch(arch).runtime_fixed_geometry
    ref = np.load(npz)
    tol_rel = TOLERANCE[_precision(binary, param)]
    keep = Keeper()
    net = _net(param, binary, keep, register)
    x = drop_batch_axis(ref["chunk0_in0"])
    want = drop_batch_axis(ref["chunk0_out0"])
    mapping = _state_map(ref, "chunk0_out", "chunk1_in")
    states = {k: _feed(ref[f"chunk0_in{k}"], "encoder") for k in mapping}
    frames, rows = 0, []
    while offset * frames + segment <= x.shape[0] and frames < want.shape[0]:
        feeds = {"in0": x[offset * frames: offset * frames + segment]}
        if "chunk0_in1" in ref.files and 1 not in mapping:  # the lengths input: sherpa-ncnn feeds the segment
            feeds["in1"] = np.array([float(segment)], dtype=np.float32)
        feeds.update({f"in{k}": v for k, v in states.items()})
        got = _run(net, feeds, ["out0"] + [f"out{j}" for j in mapping.values()])
        rows.append(got["out0"].reshape(-1))
        states = {k: got[f"out{j}"].reshape(states[k].shape) for k, j in mapping.items()}
        frames += 1
    got_all = np.stack(rows) if rows else np.zeros((0,))
    note = f"streamed {segment}/{offset} frames x{frames}"
    if got_all.shape != want[:frames].shape:
        return [NumericResult("encoder", "out0", list(want.shape), float("inf"), float("inf"), tol_rel, False,
                              f"{note}: ncnn gave {got_all.shape[1:] if got_all.ndim == 2 else got_all.shape} "
                              f"per chunk instead of one frame")]
    return [_compare("encoder", "out0", got_all, want[:frames], tol_rel, note)]


def compare_directory(directory: Path, reference_dir: Path, register=None, arch: str | None = None) -> list[NumericResult]:
    """Every output of encoder, decoder and joiner in ``directory`` against the npz files in ``reference_dir``."""
    results = []
    enc = reference_dir / "encoder-reference.npz"
    if enc.is_file():
        results += compare_encoder(directory / "encoder_jit_trace-pnnx.ncnn.param",
                                   directory / "encoder_jit_trace-pnnx.ncnn.bin", enc, register)
        if get_arch(arch).runtime_fixed_geometry:
            results += compare_streaming(directory / "encoder_jit_trace-pnnx.ncnn.param",
                                         directory / "encoder_jit_trace-pnnx.ncnn.bin", enc, arch, register)
    dj = reference_dir / "decoder-joiner-reference.npz"
    if dj.is_file():
        results += compare_decoder_joiner(directory, dj)
    return results
