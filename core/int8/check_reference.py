"""The int8 check in two halves: fp32's side recorded once, then only the int8 nets fed the recorded inputs once the
int8 model exists.

The built-in calibration records the fp32 half while it streams its first file anyway (``Recorder``, the first
REFERENCE_SECONDS of it): no extra fp32 pass. With an external calibration tool, ``record_fp32`` streams the test
wavs through the fp32 model in the background instead. Each encoder chunk's input and states and each joiner
frame's inputs are recorded with fp32's outputs, so the int8 half compares one forward pass per chunk and per frame
with exactly the inputs core.int8.check would give it -- without running the fp32 encoder after quantization.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.common.audio import fbank, read_wav
from core.int8.calibration import ModelFiles
from core.int8.check import TEST_WAVS, Similarity, cosine
from core.int8.recorder import Recorder
from core.int8.streamer import Streamer
from core.model.architectures import BY_MODEL_TYPE
from core.model.metadata import read_metadata
from core.ncnn.net import Keeper, as_mat, register_meta_layer
from core.ncnn.param import load_param


def _load(keeper: Keeper, param: Path, binary: Path, encoder: bool):
    import ncnn
    net = keeper.keep(ncnn.Net())
    net.opt.num_threads = 1  # one core each: the other steps' children run beside
    if encoder:
        register_meta_layer(net, keeper)
    if net.load_param(str(param)) != 0 or net.load_model(str(binary)) != 0:
        raise ValueError(f"python ncnn could not load {param}")
    return net


def record_fp32(fp32: ModelFiles, wavs: list[Path], npz: Path) -> None:
    """Stream every wav through the fp32 model; write each chunk's and frame's inputs and fp32 outputs to ``npz``."""
    keeper = Keeper()
    meta = read_metadata(load_param(fp32.encoder_param).model)
    streamer = Streamer(_load(keeper, fp32.encoder_param, fp32.encoder_bin, True),
                        _load(keeper, fp32.decoder_param, fp32.decoder_bin, False),
                        _load(keeper, fp32.joiner_param, fp32.joiner_bin, False), BY_MODEL_TYPE[meta[0]], meta)
    recorder = Recorder()
    for wav in wavs:
        w = read_wav(wav)
        streamer.run(fbank(w.samples, w.sample_rate), recorder.on_chunk, recorder.on_frame, name=str(wav))
    recorder.save(npz, TEST_WAVS)


def compare_recorded(npz: Path, int8_encoder: tuple[Path, Path], int8_joiner: tuple[Path, Path]) -> list[Similarity]:
    """The int8 half: the int8 encoder and joiner fed the recorded inputs, their outputs' cosine with fp32's."""
    keeper = Keeper()
    enc8, join8 = _load(keeper, *int8_encoder, True), _load(keeper, *int8_joiner, False)
    with np.load(npz) as d:
        if "empty" in d.files:
            return []
        n_states = sum(1 for k in d.files if k.startswith("state"))
        chunk, encoder_out = d["chunk"], d["encoder_out"]
        chunk_states = [d[f"state{k}"] for k in range(1, n_states + 1)]
        frame, decoder_out, logits = d["frame"], d["decoder_out"], d["logits"]
        audio = str(d["audio"]) if "audio" in d.files else ""
    enc_cos, join_cos = [], []
    for i in range(len(chunk)):
        ex8 = enc8.create_extractor()
        ex8.input("in0", as_mat(np.ascontiguousarray(chunk[i])))
        for k, state in enumerate(chunk_states, start=1):
            ex8.input(f"in{k}", as_mat(np.ascontiguousarray(state[i])))
        enc_cos.append(cosine(encoder_out[i], np.array(ex8.extract("out0")[1])))
    for i in range(len(frame)):
        jex8 = join8.create_extractor()
        jex8.input("in0", as_mat(np.ascontiguousarray(frame[i])))
        jex8.input("in1", as_mat(np.ascontiguousarray(decoder_out[i])))
        join_cos.append(cosine(logits[i], np.array(jex8.extract("out0")[1])))
    return [Similarity("encoder", "out0", min(enc_cos), float(np.mean(enc_cos)), len(enc_cos), audio),
            Similarity("joiner", "out0", min(join_cos), float(np.mean(join_cos)), len(join_cos), audio)]


# -- in child processes (ncnn on the user's model never runs in the caller's process) -----------------------------

def record_fp32_in_child(fp32: ModelFiles, wavs: list[Path], npz: Path) -> None:
    nets = [(fp32.encoder_param, fp32.encoder_bin), (fp32.decoder_param, fp32.decoder_bin),
            (fp32.joiner_param, fp32.joiner_bin)]
    _in_child(["int8-reference", "--fp32", *map(str, vars(fp32).values()), "--out", str(npz)]
              + [a for w in wavs for a in ("--wav", str(w))], nets, "int8 check (fp32 half)")


def compare_recorded_in_child(npz: Path, int8_encoder: tuple[Path, Path],
                              int8_joiner: tuple[Path, Path]) -> list[Similarity]:
    import json
    lines = _in_child(["int8-check", "--reference", str(npz), "--int8-encoder", *map(str, int8_encoder),
                       "--int8-joiner", *map(str, int8_joiner)],
                      [tuple(map(Path, int8_encoder)), tuple(map(Path, int8_joiner))], "int8 check")
    results = [line[len("result: "):] for line in lines if line.startswith("result: ")]
    return [Similarity(**item) for item in json.loads(results[-1])]


def _in_child(args: list[str], nets: list, what: str) -> list[str]:
    from core.ncnn.child import EXIT_ERROR, NcnnCrash, run_child
    from core.validation.crash import crash_sentence
    rc, lines = run_child(args, module="core.int8.children")
    if rc == 0 and (args[0] != "int8-check" or any(line.startswith("result: ") for line in lines)):
        return lines
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if rc == EXIT_ERROR and errors:
        raise ValueError(errors[-1])
    raise NcnnCrash(crash_sentence(what, nets, rc))
