"""torch's side of the fp16 checks computed early: used only by a validation of the model it was computed for."""
import json

from core.validation.early_torch import VERSION, load, metadata_from_line

LINE = "SherpaMetaData sherpa_meta_data1 0 0 0=3 1=3 2=96 3=160"


def _model(out, line=LINE):
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder_jit_trace-pnnx.ncnn.param").write_text(f"7767517\n2 1\nInput in0 0 1 in0\n{line}\n")


def _record(path, traced, wavs, line=LINE, npz=None):
    path.write_text(json.dumps({"version": VERSION, "metadata_line": line, "traced_dir": str(traced),
                                "wavs": [str(w) for w in wavs], "errors": {"joiner": "boom"}, "notes": [],
                                "timings": {"torch import + load": 1.0}, "npz": npz,
                                "torch_decodes": {"a.wav": {"tokens": [5], "frames": [3]}}}))


def test_the_metadata_line_reads_as_the_param_would(tmp_path):
    assert {k: str(v) for k, v in metadata_from_line(LINE).items()} == {0: "3", 1: "3", 2: "96", 3: "160"}


def test_the_record_is_used_only_for_the_same_metadata_traced_modules_and_wavs(tmp_path):
    out, traced, rec = tmp_path / "out", tmp_path / "exp", tmp_path / "validation-torch.json"
    _model(out)
    wavs = [tmp_path / "a.wav"]
    _record(rec, traced, wavs)
    early, why = load(rec, out, traced, wavs)
    assert early is not None and why == "" and early["errors"] == {"joiner": "boom"} and early["npz"] is None
    assert early["torch_decodes"] == {"a.wav": {"tokens": [5], "frames": [3]}}
    _model(out, LINE.replace("2=96", "2=128"))  # the metadata step wrote something else: torch must run again
    assert load(rec, out, traced, wavs) == (None, "the encoder's metadata is not the one torch ran with")
    _model(out)
    assert load(rec, out, traced, [tmp_path / "b.wav"])[0] is None
    _record(rec, traced, wavs, npz="validation-torch.npz")
    assert load(rec, out, traced, wavs)[1].endswith("validation-torch.npz: missing")
    rec.write_text("{ half a record")
    assert load(rec, out, traced, wavs)[0] is None
