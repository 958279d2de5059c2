"""core.model.traced: traced modules called the way icefall traced them, numbered the way pnnx numbers them.

The slow tests use every configuration of the real icefall kit (../shared/fixtures/icefall-kit): the
traced .pt files icefall's own export-for-ncnn.py wrote (List[Tensor] states for Zipformer and
ConvEmformer, (x, x_lens, Tuple) for LSTM) against the reference outputs stored beside them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core.model.traced import InputSpec, TracedError, _specs_from_file, load, shape_files_near, specs_from_metadata
from tests.paths import KIT

KIT_CONFIGS = sorted(p.name for p in KIT.iterdir() if (p / "traced").is_dir()) if KIT.is_dir() else []
ARCH_OF = {"zipformer": "zipformer", "conv": "conv-emformer", "lstm": "lstm"}

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")]
needs_kit = pytest.mark.skipif(len(KIT_CONFIGS) != 6, reason="the icefall kit (../shared/fixtures/icefall-kit) is absent")


def _arrays(ref, prefix: str) -> list:
    n = len([k for k in ref.files if k.startswith(prefix)])
    return [ref[f"{prefix}{k}"] for k in range(n)]


def test_pnnx_input_lines_give_shapes_and_dtypes(tmp_path):
    param = tmp_path / "encoder.pnnx.param"
    param.write_text("7767517\n4 4\n"
                     "pnnx.Input               pnnx_input_0             0 1 0 #0=(1,100,80)f32\n"
                     "pnnx.Input               pnnx_input_1             0 1 1 #1=(1)i64\n"
                     "pnnx.Input               pnnx_input_2             0 1 2 #2=(2,1,128)f32\n"
                     "pnnx.Output              pnnx_output_0            1 0 60\n")
    assert _specs_from_file(param) == [InputSpec((1, 100, 80), "float32"), InputSpec((1,), "int64"),
                                       InputSpec((2, 1, 128), "float32")]
    # the fallback pnnx run (no traced input shapes) writes Input lines without shapes: not a shape source
    param.write_text("pnnx.Input               pnnx_input_0             0 1 0\n")
    assert _specs_from_file(param) == []


def test_missing_trace_names_the_file_and_the_flag(tmp_path):
    with pytest.raises(TracedError) as err:
        load(tmp_path / "encoder_jit_trace-pnnx.pt")
    assert str(tmp_path / "encoder_jit_trace-pnnx.pt") in str(err.value) and "--traced-dir" in str(err.value)


def test_shape_files_are_looked_for_beside_the_trace_and_in_pnnx_dir(tmp_path):
    pt = tmp_path / "work" / "exp" / "encoder_jit_trace-pnnx.pt"
    found = shape_files_near(pt)
    assert tmp_path / "work" / "pnnx" / "encoder.pnnx.param" in found
    assert tmp_path / "work" / "exp" / "encoder_jit_trace_pnnx.pnnx.param" in found  # pnnx's default name
    assert tmp_path / "work" / "encoder-reference.npz" in found


@pytest.mark.slow
@needs_kit
@pytest.mark.parametrize("config", KIT_CONFIGS)
def test_kit_encoder_called_as_traced_gives_the_reference(config):
    """Both chunks of encoder-reference.npz, from pnnx-numbered inputs, give the stored outputs."""
    import torch
    folder = KIT / config
    pt = folder / "traced" / "encoder_jit_trace-pnnx.pt"
    traced = load(pt, [folder / "encoder.pnnx.param"])
    ref = np.load(folder / "encoder-reference.npz")
    assert traced.shape_source.endswith("encoder.pnnx.param")
    assert [tuple(s.shape) for s in traced.specs] == [a.shape for a in _arrays(ref, "chunk0_in")]
    kinds = [s.kind for s in traced.slots]
    assert kinds == (["tensor", "tensor", "tuple"] if config.startswith("lstm") else ["tensor", "list"])
    assert traced.lengths_index() == (1 if config.startswith("lstm") else None)
    for chunk in (0, 1):
        outs = traced([torch.from_numpy(a) for a in _arrays(ref, f"chunk{chunk}_in")])
        want = _arrays(ref, f"chunk{chunk}_out")
        assert len(outs) == len(want)
        for k, (got, exp) in enumerate(zip(outs, want)):
            assert got.shape == exp.shape, (chunk, k)
            np.testing.assert_allclose(got.numpy(), exp, atol=1e-5, err_msg=f"{config} chunk {chunk} out{k}")
    # the carried states: out k feeds in k for every state input
    for k in traced.state_indices():
        np.testing.assert_array_equal(ref[f"chunk1_in{k}"], ref[f"chunk0_out{k}"])


@pytest.mark.slow
@needs_kit
@pytest.mark.parametrize("config", KIT_CONFIGS)
def test_kit_decoder_and_joiner_called_as_traced(config):
    import torch
    folder = KIT / config
    ref = np.load(folder / "decoder-joiner-reference.npz")
    dec = load(folder / "traced" / "decoder_jit_trace-pnnx.pt")
    assert [s.kind for s in dec.slots] == ["tensor", "const"] and dec.n_inputs == 1  # need_pad is folded
    np.testing.assert_allclose(dec([torch.from_numpy(ref["decoder_in0"])])[0].numpy(), ref["decoder_out0"], atol=1e-6)
    join = load(folder / "traced" / "joiner_jit_trace-pnnx.pt")
    got = join([torch.from_numpy(ref["joiner_in0"]), torch.from_numpy(ref["joiner_in1"])])[0]
    np.testing.assert_allclose(got.numpy(), ref["joiner_out0"], atol=1e-6)


@pytest.mark.slow
@needs_kit
@pytest.mark.parametrize("config", KIT_CONFIGS)
def test_shapes_from_metadata_equal_pnnx_graph(config):
    """The zero states sherpa-ncnn builds from the metadata have the shapes icefall traced (LSTM: 9 frames)."""
    from core.model.architectures import get_arch, resolve
    from core.model.metadata import build_metadata
    folder = KIT / config
    flags = (folder / "export-flags.txt").read_text().split()
    arch = ARCH_OF[config.split("-")[0]]
    meta = build_metadata(resolve(get_arch(arch), dict(zip(flags[::2], flags[1::2])))).as_dict()
    from_meta = specs_from_metadata(arch, meta)
    from_graph = _specs_from_file(folder / "encoder.pnnx.param")
    if arch == "lstm":  # icefall traces 100 frames; sherpa-ncnn feeds 9
        from_graph[0] = InputSpec((1, 9, 80), "float32")
    assert from_meta == from_graph


@pytest.mark.slow
@needs_kit
def test_list_trace_without_shapes_says_what_to_put_beside_it(tmp_path):
    import torch
    pt = tmp_path / "encoder_jit_trace-pnnx.pt"
    shutil.copy(KIT / "conv-emformer-3layer" / "traced" / "encoder_jit_trace-pnnx.pt", pt)
    traced = load(pt, shape_files_near(pt))
    assert traced.specs == []
    with pytest.raises(TracedError) as err:
        traced.zeros()
    msg = str(err.value)
    assert str(pt) in msg and "encoder.pnnx.param" in msg and "GenericList" not in msg
    # a wrong number of inputs names the signature and the numbering, not a TorchScript type error
    traced = load(pt, [KIT / "conv-emformer-3layer" / "encoder.pnnx.param"])
    with pytest.raises(TracedError) as err:
        traced([torch.zeros(1, 31, 80)])
    assert "forward(x, states: List[Tensor] (12))" in str(err.value) and "in0..in12" in str(err.value)
    # wrong shapes: torch's complaint, the file and where the shapes came from
    bad = [torch.zeros(1, 31, 80)] + [torch.zeros(3, 3) for _ in range(12)]
    with pytest.raises(TracedError) as err:
        traced(bad)
    assert str(pt) in str(err.value) and "encoder.pnnx.param" in str(err.value)
