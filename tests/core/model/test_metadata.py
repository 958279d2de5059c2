"""Planning and applying the SherpaMetaData edit: preview first, atomic, idempotent, with a backup."""
import os

import pytest

from core.model.architectures import get_arch, resolve
from core.model.metadata import ApplyError, apply_plan, build_metadata, plan_metadata, read_metadata
from core.ncnn.param import load_param, parse_param

from conftest import FIXTURES, fixture_flags


def resolved_for(arch, flags=None):
    flags = fixture_flags(arch) if flags is None else flags
    return resolve(get_arch(arch), dict(zip(flags[0::2], flags[1::2])))


def plan_for(path, arch, flags=None):
    r = resolved_for(arch, flags)
    model = load_param(path).model
    return plan_metadata(model, build_metadata(r), r.values), r


@pytest.fixture
def encoder(tmp_path):
    def make(arch="conv-emformer", transform=None):
        data = (FIXTURES / arch / "encoder_jit_trace-pnnx.ncnn.param").read_bytes()
        if transform:
            data = transform(data)
        p = tmp_path / "encoder_jit_trace-pnnx.ncnn.param"
        p.write_bytes(data)
        return p
    return make


def test_plan_shows_line_header_change_position_and_diff_without_writing(encoder):
    p = encoder()
    before = p.read_bytes()
    plan, _ = plan_for(p, "conv-emformer")
    assert plan.action == "insert" and plan.can_apply
    assert plan.header_before == "361 458" and plan.header_after == "362 458"
    assert plan.line_no == 3
    assert "-361 458" in plan.diff and "+362 458" in plan.diff
    assert "+" + plan.line in plan.diff
    assert p.read_bytes() == before  # planning writes nothing
    assert not p.with_name(p.name + ".orig").exists()


def test_apply_inserts_after_header_bumps_only_layer_count_and_keeps_the_rest(encoder):
    p = encoder()
    original = p.read_bytes()
    plan, _ = plan_for(p, "conv-emformer")
    result = apply_plan(plan, p)
    assert result.applied
    new = p.read_bytes().split(b"\n")
    old = original.split(b"\n")
    assert new[0] == old[0] and new[1] == b"362 458"
    assert new[2].decode() == plan.line
    assert new[3:] == old[2:]
    assert p.with_name(p.name + ".orig").read_bytes() == original
    assert read_metadata(load_param(p).model) == {0: 1, 1: 4, 2: 32, 3: 31, 4: 8, 5: 32, 6: 8, 7: 144}


def test_applying_the_same_metadata_twice_changes_nothing(encoder):
    p = encoder()
    apply_plan(plan_for(p, "conv-emformer")[0], p)
    once = p.read_bytes()
    stamp = p.stat().st_mtime_ns
    plan, _ = plan_for(p, "conv-emformer")
    assert plan.action == "unchanged"
    assert not apply_plan(plan, p).applied
    assert p.read_bytes() == once and p.stat().st_mtime_ns == stamp


def test_different_metadata_replaces_the_line_without_bumping_again(encoder):
    p = encoder()
    apply_plan(plan_for(p, "conv-emformer")[0], p)
    flags = fixture_flags("conv-emformer")
    flags[flags.index("--memory-size") + 1] = "16"
    plan, _ = plan_for(p, "conv-emformer", flags)
    assert plan.action == "replace" and plan.header_before == plan.header_after == "362 458"
    apply_plan(plan, p)
    model = load_param(p).model
    assert model.layer_count == 362 and len(model.layers) == 362
    assert read_metadata(model)[2] == 16


def test_backup_is_made_once_and_never_overwritten(encoder):
    p = encoder()
    original = p.read_bytes()
    apply_plan(plan_for(p, "conv-emformer")[0], p)
    flags = fixture_flags("conv-emformer")
    flags[flags.index("--memory-size") + 1] = "16"
    apply_plan(plan_for(p, "conv-emformer", flags)[0], p)
    assert p.with_name(p.name + ".orig").read_bytes() == original


def test_crlf_files_stay_crlf(encoder):
    p = encoder(transform=lambda b: b.replace(b"\n", b"\r\n"))
    apply_plan(plan_for(p, "conv-emformer")[0], p)
    data = p.read_bytes()
    assert b"\r\n" in data and data.count(b"\n") == data.count(b"\r\n")
    assert data.split(b"\r\n")[2].startswith(b"SherpaMetaData")


def test_a_wrong_header_count_is_refused_not_fixed(encoder):
    p = encoder(transform=lambda b: b.replace(b"361 458", b"360 458", 1))
    before = p.read_bytes()
    plan, _ = plan_for(p, "conv-emformer")
    assert plan.action == "refused" and not plan.can_apply
    assert any("header says 360 layers but the file has 361" in e for e in plan.errors)
    with pytest.raises(ApplyError):
        apply_plan(plan, p)
    assert p.read_bytes() == before


def test_graph_mismatch_is_reported_before_writing(encoder):
    p = encoder("zipformer")
    flags = fixture_flags("zipformer")
    for name in ("--num-encoder-layers", "--feedforward-dims", "--nhead", "--encoder-dims", "--attention-dims",
                 "--encoder-unmasked-dims", "--zipformer-downsampling-factors", "--cnn-module-kernels"):
        i = flags.index(name) + 1
        flags[i] = ",".join(flags[i].split(",")[:2])
    plan, _ = plan_for(p, "zipformer", flags)
    assert not plan.can_apply
    assert any("36 Input blobs" in e and "15 inputs" in e for e in plan.errors)
    inputs = next(c for c in plan.checks if c.name == "inputs")
    assert not inputs.ok


def test_runtime_missing_layers_are_listed_in_the_plan(encoder):
    plan, _ = plan_for(encoder("zipformer"), "zipformer")
    assert plan.can_apply  # metadata itself is right; the layers are a separate problem
    msg = next(c for c in plan.checks if c.name == "runtime-layers")
    assert not msg.ok and "CumulativeSum x10" in msg.message and "torch.as_strided x10" in msg.message
    assert "Tile x4" in msg.message


def test_file_changed_after_preview_is_refused(encoder):
    p = encoder()
    plan, _ = plan_for(p, "conv-emformer")
    p.write_bytes(p.read_bytes() + b"\n")
    with pytest.raises(ApplyError, match="changed since the preview"):
        apply_plan(plan, p)


def test_read_only_directory_leaves_the_original_intact(encoder, read_only_dir):
    p = encoder()
    before = p.read_bytes()
    plan, _ = plan_for(p, "conv-emformer")
    with read_only_dir(p.parent):
        with pytest.raises(ApplyError, match="writable|cannot write"):
            apply_plan(plan, p)
    assert p.read_bytes() == before


def test_failed_write_leaves_the_original_intact_even_as_root(encoder, monkeypatch):
    p = encoder()
    before = p.read_bytes()
    plan, _ = plan_for(p, "conv-emformer")

    def boom(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ApplyError, match="No space left"):
        apply_plan(plan, p)
    assert p.read_bytes() == before
    assert [f.name for f in p.parent.iterdir() if f.name.endswith(".tmp")] == []


def test_two_metadata_layers_are_refused(encoder):
    p = encoder()
    apply_plan(plan_for(p, "conv-emformer")[0], p)
    model = load_param(p).model
    doubled = model.with_line_inserted(3, model.lines[2].rstrip("\n").replace("sherpa_meta_data1", "sherpa_meta_data2"))
    doubled = doubled.with_header(model.layer_count + 1, model.blob_count)
    r = resolved_for("conv-emformer")
    plan = plan_metadata(doubled, build_metadata(r), r.values)
    assert not plan.can_apply and any("2 SherpaMetaData layers" in e for e in plan.errors)


def test_a_misnamed_metadata_layer_is_replaced_with_a_warning():
    text = ("7767517\n3 3\nSherpaMetaData meta 0 0 0=3 1=3 2=192 3=384\nInput in0 0 1 in0\n"
            "ReLU r 1 1 in0 out0\n")
    model = parse_param(text).model
    r = resolve(get_arch("lstm"), {"--num-encoder-layers": "3", "--encoder-dim": "192", "--rnn-hidden-size": "384"})
    plan = plan_metadata(model, build_metadata(r))
    assert plan.action == "replace" and any("named 'meta'" in w for w in plan.warnings)


def test_int8_style_metadata_with_shape_hint_counts_as_the_same():
    text = ("7767517\n3 3\nSherpaMetaData sherpa_meta_data1 0 0 -23330=0 0=3 1=3 2=192 3=384\nInput in0 0 1 in0\n"
            "ReLU r 1 1 in0 out0\n")
    model = parse_param(text).model
    r = resolve(get_arch("lstm"), {"--num-encoder-layers": "3", "--encoder-dim": "192", "--rnn-hidden-size": "384"})
    assert plan_metadata(model, build_metadata(r)).action == "unchanged"


def test_no_final_newline_is_kept(tmp_path):
    p = tmp_path / "e.param"
    p.write_bytes(b"7767517\n2 2\nInput in0 0 1 in0\nReLU r 1 1 in0 out0")
    r = resolve(get_arch("lstm"), {})
    plan = plan_metadata(load_param(p).model, build_metadata(r))
    apply_plan(plan, p)
    data = p.read_bytes()
    assert not data.endswith(b"\n") and data.split(b"\n")[1] == b"3 2"
