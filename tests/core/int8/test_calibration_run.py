"""Built-in calibration on a real (demo) model: streaming encoder, greedy joiner, tables, bad inputs."""
import shutil
import struct
import subprocess
import wave

import numpy as np
import pytest

from core.int8.calibrate import CalibrationError, read_table
from core.int8.calibration import ModelFiles, calibrate, check_wavs
from core.pipeline.demo import demo_recipe
from core.ncnn.param import load_param
from core.pnnx.tools import wheel_pnnx

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    """The LSTM demo exported by the pipeline, with encoder and joiner re-converted with fp16=0."""
    from tui.cli.main import main
    run = tmp_path_factory.mktemp("run") / "out"
    assert main(["run", "--demo", "lstm", "--out", str(run)]) == 0
    d = tmp_path_factory.mktemp("fp32")
    pnnx, _ = wheel_pnnx()
    for net in ("encoder", "joiner"):
        stem = d / net
        subprocess.run([str(pnnx), str(run / "work/exp" / f"{net}_jit_trace-pnnx.pt"),
                        f"pnnxparam={stem}.pnnx.param", f"pnnxbin={stem}.pnnx.bin", f"pnnxpy={stem}_pnnx.py",
                        f"pnnxonnx={stem}.pnnx.onnx", f"ncnnparam={stem}.raw.param",
                        f"ncnnbin={d}/{net}_jit_trace-pnnx.ncnn.bin", f"ncnnpy={stem}_ncnn.py", "fp16=0"],
                       check=True, capture_output=True)
        shutil.copy(run / f"{net}_jit_trace-pnnx.ncnn.param", d / f"{net}_jit_trace-pnnx.ncnn.param")
    for ext in ("param", "bin"):
        shutil.copy(run / f"decoder_jit_trace-pnnx.ncnn.{ext}", d / f"decoder_jit_trace-pnnx.ncnn.{ext}")
    shutil.copy(run / "tokens.txt", d / "tokens.txt")
    return ModelFiles(*(d / f"{n}_jit_trace-pnnx.ncnn.{e}" for n in ("encoder", "decoder", "joiner")
                        for e in ("param", "bin")))


def write_wav(path, seconds, rate=16000):
    n = int(seconds * rate)
    samples = (np.sin(np.arange(n) * 0.05) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def test_tables_cover_every_quantizable_layer(fp32_model):
    progress = []
    result = calibrate(fp32_model, demo_recipe("lstm").test_wavs, on_progress=lambda i, n, s: progress.append((i, n, s)))
    enc_layers = {l.name for l in load_param(fp32_model.encoder_param).model.layers
                  if l.type in ("Convolution", "ConvolutionDepthWise", "InnerProduct")}
    join_layers = {l.name for l in load_param(fp32_model.joiner_param).model.layers if l.type == "InnerProduct"}
    assert set(result.encoder.weights) == set(result.encoder.activations) == enc_layers
    assert set(result.joiner.weights) == set(result.joiner.activations) == join_layers
    n = len(demo_recipe("lstm").test_wavs)
    assert result.files == n and result.chunks > 0 and result.frames >= result.chunks
    from core.int8.calibrate import JOINER_KEEPS_RANGE
    assert JOINER_KEEPS_RANGE and all(a.threshold == a.absmax for a in result.joiner.activations.values())
    for table in (result.encoder, result.joiner):
        back = read_table(table.text())  # refuses inf/nan/zero
        assert set(back.activations) == set(table.activations)
    assert [p[0] for p in progress] == [*range(n + 1), n]
    assert progress[1][2].startswith("Processing ") and "ETA" in progress[1][2]
    assert progress[-1][2].startswith("statistics collected")


def test_parallel_and_cached_runs_give_the_same_tables(fp32_model, tmp_path):
    wavs = demo_recipe("lstm").test_wavs
    serial = calibrate(fp32_model, wavs, workers=1)
    cache = tmp_path / "cache"
    parallel = calibrate(fp32_model, wavs, workers=2, cache_dir=cache)
    assert parallel.encoder.text() == serial.encoder.text() and parallel.joiner.text() == serial.joiner.text()
    assert len(list(cache.glob("*.npz"))) == len(wavs)
    notes = []
    again = calibrate(fp32_model, wavs, workers=2, cache_dir=cache, on_progress=lambda i, n, s: notes.append(s))
    assert notes[0] == f"{len(wavs)} file(s) from the cache" and not any(n.startswith("Processing") for n in notes)
    assert again.encoder.text() == serial.encoder.text()


def test_bad_audio_is_reported_by_name_before_the_run(tmp_path, fp32_model):
    short = write_wav(tmp_path / "short.wav", 0.05)
    slow = write_wav(tmp_path / "eight-k.wav", 1.0, rate=8000)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEjunk")
    good = write_wav(tmp_path / "good.wav", 1.0)
    check = check_wavs([short, slow, broken, good], segment_frames=9)
    assert check.usable == [good]
    text = " ".join(check.problems)
    assert "short.wav: 0.05 s is shorter than one chunk" in text
    assert "eight-k.wav: 8000 Hz" in text and "broken.wav" in text
    result = calibrate(fp32_model, [short, good])
    assert result.files == 1 and any("short.wav" in s for s in result.skipped)


def test_no_usable_audio_is_an_error(fp32_model, tmp_path):
    with pytest.raises(CalibrationError, match="no usable calibration audio: the list is empty"):
        calibrate(fp32_model, [])
    with pytest.raises(CalibrationError, match="unreadable.wav"):
        calibrate(fp32_model, [tmp_path / "unreadable.wav"])


def test_a_param_without_metadata_is_refused(fp32_model, tmp_path):
    param = tmp_path / "encoder.param"
    model = load_param(fp32_model.encoder_param).model
    param.write_bytes(model.with_line_removed(3).with_header(model.layer_count - 1, model.blob_count).to_bytes())
    files = ModelFiles(param, *list(vars(fp32_model).values())[1:])
    with pytest.raises(CalibrationError, match="no SherpaMetaData"):
        calibrate(files, demo_recipe("lstm").test_wavs)


@pytest.fixture(scope="module")
def int8_model(fp32_model, tmp_path_factory):
    from core.int8.quantize import quantize
    result = calibrate(fp32_model, demo_recipe("lstm").test_wavs)
    d = fp32_model.encoder_param.parent
    reports = {}
    for net, table in (("encoder", result.encoder), ("joiner", result.joiner)):
        reports[net] = quantize(d / f"{net}_jit_trace-pnnx.ncnn.param", d / f"{net}_jit_trace-pnnx.ncnn.bin", table,
                                d / f"{net}_jit_trace-pnnx.ncnn.int8.param", d / f"{net}_jit_trace-pnnx.ncnn.int8.bin")
    return d, result, reports


def test_quantized_weights_shrink_about_four_times(int8_model):
    d, result, reports = int8_model
    for net, rep in reports.items():
        assert rep.quantized and set(rep.quantized) == set(getattr(result, net).activations)
        assert rep.weight_bytes_after < rep.weight_bytes_before / 3.5
        param = (d / f"{net}_jit_trace-pnnx.ncnn.int8.param").read_text()
        assert all(f" 8=2" in line for line in param.splitlines() if line.split()[1:2] and line.split()[1] in rep.quantized)


def test_every_other_layers_bytes_are_unchanged(int8_model):
    """Table-driven int8 only (no weight-only Gemm/LSTM, no fp16): every other byte stays verbatim.
    The default mode is checked load by load in tests/core/int8/test_quantize_layers.py."""
    from core.int8.quantize import quantize
    from core.ncnn.bin_layout import read_layout
    d, result, reports = int8_model
    for net in ("encoder", "joiner"):
        old = (d / f"{net}_jit_trace-pnnx.ncnn.bin").read_bytes()
        static = quantize(d / f"{net}_jit_trace-pnnx.ncnn.param", d / f"{net}_jit_trace-pnnx.ncnn.bin",
                          getattr(result, net), d / f"{net}.static.int8.param", d / f"{net}.static.int8.bin",
                          dynamic=(), fp16=False)
        assert static.quantized == reports[net].quantized and not static.dynamic and not static.fp16
        new = (d / f"{net}.static.int8.bin").read_bytes()
        old_regions, old_total = read_layout(d / f"{net}_jit_trace-pnnx.ncnn.param", old)
        assert old_total == len(old)
        # cut both files at the quantized layers' regions: what lies between must be byte-identical
        chosen = sorted((r for r in old_regions.values() if r.name in static.quantized), key=lambda r: r.weight[0])
        old_rest, pos = [], 0
        for r in chosen:
            old_rest.append(old[pos:r.weight[0]])
            pos = (r.bias or r.weight)[1]
        old_rest.append(old[pos:])
        new_pos = 0
        for i, piece in enumerate(old_rest):
            assert new[new_pos:new_pos + len(piece)] == piece, f"{net}: bytes before quantized layer {i} moved"
            new_pos += len(piece)
            if i < len(chosen):
                r = chosen[i]
                n_in = r.weights.size
                bias = 0 if r.bias is None else r.bias[1] - r.bias[0]
                new_pos += 4 + n_in + (-n_in % 4) + bias + 4 * r.num_output + 4
        assert new_pos == len(new)


def test_sherpa_ncnn_decodes_the_int8_model(int8_model, tmp_path):
    from core.validation.decoding import decode
    d, _, _ = int8_model
    result = decode(d, demo_recipe("lstm").test_wavs, {}, int8=True)
    assert result.ok, result.error
    assert result.model == "int8" and len(result.results) == len(demo_recipe("lstm").test_wavs)


def test_a_table_without_weight_scales_is_refused(fp32_model, tmp_path):
    from core.int8.calibrate import ScaleTable
    from core.int8.quantize import QuantizeError, quantize
    result = calibrate(fp32_model, demo_recipe("lstm").test_wavs)
    table = ScaleTable(dict(result.joiner.weights), dict(result.joiner.activations))
    del table.weights["linear_2"]
    out = tmp_path / "j.int8.param"
    with pytest.raises(QuantizeError, match="'linear_2'.*no 'linear_2_param_0'"):
        quantize(fp32_model.joiner_param, fp32_model.joiner_bin, table, out, tmp_path / "j.int8.bin")
    assert not out.exists()


def test_int8_outputs_stay_close_to_fp32_on_the_calibration_audio(int8_model, fp32_model):
    from core.int8.check import compare_int8
    d, _, _ = int8_model
    sims = compare_int8(fp32_model, (d / "encoder_jit_trace-pnnx.ncnn.int8.param", d / "encoder_jit_trace-pnnx.ncnn.int8.bin"),
                        (d / "joiner_jit_trace-pnnx.ncnn.int8.param", d / "joiner_jit_trace-pnnx.ncnn.int8.bin"),
                        demo_recipe("lstm").test_wavs)
    assert {s.net for s in sims} == {"encoder", "joiner"}
    for s in sims:
        assert s.samples > 0 and s.mean_cosine >= 0.99, s.line()
        assert s.min_cosine >= 0.95, s.line()


def test_the_int8_check_in_two_halves_gives_the_same_numbers(int8_model, fp32_model, tmp_path):
    """fp32's side recorded first (the background step beside calibration), the int8 nets fed the recording
    later: exactly compare_int8's figures, each half in a child process."""
    from core.int8.check import compare_int8
    from core.int8.check_reference import compare_recorded_in_child, record_fp32_in_child
    d, _, _ = int8_model
    enc8 = (d / "encoder_jit_trace-pnnx.ncnn.int8.param", d / "encoder_jit_trace-pnnx.ncnn.int8.bin")
    join8 = (d / "joiner_jit_trace-pnnx.ncnn.int8.param", d / "joiner_jit_trace-pnnx.ncnn.int8.bin")
    wavs = demo_recipe("lstm").test_wavs
    npz = tmp_path / "int8-reference.npz"
    record_fp32_in_child(fp32_model, wavs, npz)
    assert npz.is_file() and [p.name for p in tmp_path.iterdir()] == [npz.name]  # written whole, by rename
    assert compare_recorded_in_child(npz, enc8, join8) == compare_int8(fp32_model, enc8, join8, wavs)
    npz.write_bytes(b"truncated")
    with pytest.raises(ValueError):
        compare_recorded_in_child(npz, enc8, join8)
    short = write_wav(tmp_path / "short.wav", 0.05)  # shorter than one encoder chunk: nothing to compare, no error
    record_fp32_in_child(fp32_model, [short], npz)
    assert compare_recorded_in_child(npz, enc8, join8) == [] == compare_int8(fp32_model, enc8, join8, [short])


def test_calibration_records_the_int8_checks_fp32_half_on_its_first_file(int8_model, fp32_model, tmp_path,
                                                                           monkeypatch):
    """The built-in calibration records the fp32 half while it streams its first file (no fp32 pass of its own):
    the int8 half on that record gives compare_int8's figures on that file, whether the file's statistics come
    from the cache or the other files go to worker processes; REFERENCE_SECONDS bounds what is recorded."""
    from core.int8 import recorder
    from core.int8.check import compare_int8
    from core.int8.check_reference import compare_recorded
    d, _, _ = int8_model
    enc8 = (d / "encoder_jit_trace-pnnx.ncnn.int8.param", d / "encoder_jit_trace-pnnx.ncnn.int8.bin")
    join8 = (d / "joiner_jit_trace-pnnx.ncnn.int8.param", d / "joiner_jit_trace-pnnx.ncnn.int8.bin")
    wavs = demo_recipe("lstm").test_wavs
    expected = compare_int8(fp32_model, enc8, join8, wavs[:1])
    npz, cache = tmp_path / "ref.npz", tmp_path / "cache"
    plain = calibrate(fp32_model, wavs, workers=1)
    for workers in (2, 2):  # the second run finds every file in the cache: the first one runs again, to record
        npz.unlink(missing_ok=True)
        result = calibrate(fp32_model, wavs, workers=workers, cache_dir=cache, reference=npz)
        assert result.encoder.text() == plain.encoder.text()  # recording changes nothing in the tables
        sims = compare_recorded(npz, enc8, join8)
        assert [(s.net, s.min_cosine, s.mean_cosine, s.samples) for s in sims] == \
            [(s.net, s.min_cosine, s.mean_cosine, s.samples) for s in expected]
        assert all(s.audio.endswith(f"of {wavs[0].name} (calibration audio)") for s in sims)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ref.npz"]  # written whole, by rename
    monkeypatch.setattr(recorder, "REFERENCE_SECONDS", 0.2)
    calibrate(fp32_model, wavs, workers=1, reference=npz)
    with np.load(npz) as rec:
        assert len(rec["chunk"]) == recorder.Recorder.for_seconds(0.2, 4).max_chunks == 5 < expected[0].samples
        assert "0.2 s of" in str(rec["audio"])


def test_calibrate_and_quantize_commands(fp32_model, cli_json, tmp_path):
    d = fp32_model.encoder_param.parent
    wavs = [str(w) for w in demo_recipe("lstm").test_wavs]
    wav_list = tmp_path / "wavs.txt"
    wav_list.write_text("\n".join(wavs[1:]) + "\n")
    code, r = cli_json("calibrate", d, "--wav", wavs[0], "--wav-list", wav_list, "--out", tmp_path / "tables")
    assert code == 0 and r["ok"] and r["files"] == len(wavs)
    table = tmp_path / "tables" / "joiner-scale-table.txt"
    assert table.read_text().startswith("linear_1_param_0 ")
    code, q = cli_json("quantize", fp32_model.joiner_param, fp32_model.joiner_bin, tmp_path / "j.int8.param",
                       tmp_path / "j.int8.bin", table)
    assert code == 0 and q["quantized"] == ["linear_1", "linear_2", "linear_3"]
    assert (tmp_path / "j.int8.bin").stat().st_size < fp32_model.joiner_bin.stat().st_size / 3
    code, r = cli_json("calibrate", d)
    assert code == 2 and "list is empty" in r["error"]


def _naive_stats(files, wav):
    """The straightforward way: every quantizable layer's input extracted from ncnn on every chunk and frame."""
    import ncnn

    from core.common.audio import fbank, read_wav
    from core.int8.calibrate import BlobStats
    from core.int8.calibration import _ModelRunner
    from core.int8.streamer import BLANK_IDS, CONTEXT_SIZE, _run_decoder
    r = _ModelRunner(files)
    enc = {b: BlobStats() for b in set(r.enc_bottoms.values())}
    join = {b: BlobStats() for b in set(r.join_bottoms.values())}
    w = read_wav(wav)
    feats = fbank(w.samples, w.sample_rate)
    states, context = r.arch.initial_states(r.meta), [0] * CONTEXT_SIZE
    dec = _run_decoder(r.nets["decoder"], context)
    pos = 0
    while pos + r.segment <= len(feats):
        ex = r.nets["encoder"].create_extractor()
        ex.set_light_mode(False)
        ex.input("in0", ncnn.Mat(np.ascontiguousarray(feats[pos:pos + r.segment])))
        pos += r.offset
        for k, s in enumerate(states, start=1):
            ex.input(f"in{k}", ncnn.Mat(s))
        out0 = np.array(ex.extract("out0")[1])
        new = list(states)
        for target, source in r.state_map:
            new[target - 1] = np.array(ex.extract(f"out{source}")[1]).reshape(states[target - 1].shape)
        for blob, st in enc.items():
            st.add(np.array(ex.extract(blob)[1]))
        states = new
        for frame in out0.reshape(-1, out0.shape[-1]):
            jex = r.nets["joiner"].create_extractor()
            jex.set_light_mode(False)
            jex.input("in0", ncnn.Mat(np.ascontiguousarray(frame)))
            jex.input("in1", ncnn.Mat(dec))
            token = int(np.argmax(np.array(jex.extract("out0")[1])))
            for blob, st in join.items():
                st.add(np.array(jex.extract(blob)[1]))
            if token not in BLANK_IDS:
                context = context[1:] + [token]
                dec = _run_decoder(r.nets["decoder"], context)
    return enc, join


def test_the_shortcuts_give_the_statistics_of_extracting_everything(fp32_model):
    """Inputs taken from the arrays we fed, and the decoder output counted once per token: same numbers."""
    from core.int8.calibrate import kl_threshold_bin
    from core.int8.calibration import _ModelRunner
    wav = demo_recipe("lstm").test_wavs[2]
    fast = _ModelRunner(fp32_model).run_file(wav)
    enc, join = _naive_stats(fp32_model, wav)
    assert "in1" in join  # the joiner's decoder projection reads the decoder output directly
    for naive, quick in ((enc, fast.encoder), (join, fast.joiner)):
        assert set(naive) == set(quick)
        for blob in naive:
            assert quick[blob].count == naive[blob].count and quick[blob].absmax == naive[blob].absmax
            # bit for bit: same starting range (the first flush sees the same values), same fine counts
            assert quick[blob].range == naive[blob].range, blob
            assert np.array_equal(quick[blob].hist, naive[blob].hist), blob
            h_naive, h_quick = naive[blob].histogram(), quick[blob].histogram()
            assert np.array_equal(h_quick, h_naive), blob
            assert kl_threshold_bin(h_quick) == kl_threshold_bin(h_naive)


def test_counting_values_several_times_at_once_is_the_same_as_adding_them_again():
    from core.int8.calibrate import BlobStats
    rng = np.random.default_rng(0)
    v, w = rng.normal(size=300).astype(np.float32), rng.normal(size=200).astype(np.float32) * 3
    one, many = BlobStats(), BlobStats()
    for _ in range(5):
        one.add(v)
    one.add(w)
    many.add(v, times=5)
    many.add(w)
    assert one.count == many.count == 5 * np.count_nonzero(v) + np.count_nonzero(w)
    assert one.absmax == many.absmax
    assert np.array_equal(one.hist, many.hist)


def test_repeated_values_flush_where_one_by_one_adding_would(monkeypatch):
    """Flushes fix the histogram's starting range: batching repeats must not move them (bit-identical result)."""
    from core.int8.calibrate import BlobStats
    monkeypatch.setattr(BlobStats, "_FLUSH_AT", 1000)
    rng = np.random.default_rng(3)
    runs = [(rng.normal(size=64).astype(np.float32) * rng.uniform(0.1, 10), int(rng.integers(1, 40)))
            for _ in range(60)]
    one, many = BlobStats(), BlobStats()
    for v, times in runs:
        for _ in range(times):
            one.add(v)
        many.add(v, times=times)
    assert one.count == many.count and one.absmax == many.absmax and one.range == many.range
    assert np.array_equal(one.hist, many.hist)


def test_calibrate_onto_a_full_disk_says_so_and_leaves_no_partial_table(fp32_model, cli_json, tmp_path):
    """The tables are written last; a full disk there is a sentence naming the file, not a traceback, and no
    half-written table is left to be taken for a good one (needs root for the small tmpfs; skipped elsewhere)."""
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with open(full / "filler", "wb") as fh:  # fill it up
            try:
                fh.write(b"x" * (1 << 20))
            except OSError:
                pass
        wav = str(demo_recipe("lstm").test_wavs[0])
        code, r = cli_json("calibrate", fp32_model.encoder_param.parent, "--wav", wav, "--out", full / "tables")
        assert code in (1, 2) and not r["ok"]
        assert "Traceback" not in r["error"] and ("space" in r["error"] or "full" in r["error"]), r["error"]
        left = sorted(p.name for p in (full / "tables").glob("*")) if (full / "tables").is_dir() else []
        assert not [n for n in left if n.endswith("scale-table.txt")], left
    finally:
        subprocess.run(["umount", str(full)])
