"""How close the int8 encoder and joiner stay to fp32 on real audio: cosine similarity per output.

Both nets get exactly the same inputs: the fp32 run decides the states, the
encoder frames and the decoder output, so each number compares one forward
pass, not two drifting streams.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.common.audio import fbank, read_wav
from core.int8.calibration import ModelFiles
from core.int8.streamer import Streamer
from core.model.architectures import BY_MODEL_TYPE
from core.model.metadata import read_metadata
from core.ncnn.net import Keeper, as_mat, register_meta_layer
from core.ncnn.param import load_param


TEST_WAVS = "the test wavs"  # Similarity.audio when the test wavs were streamed


@dataclass
class Similarity:
    net: str
    output: str
    min_cosine: float
    mean_cosine: float
    samples: int
    audio: str = ""  # what was streamed (the test wavs, or the calibration audio the fp32 half was recorded on)

    def line(self, target: float = 0.99) -> str:
        mark = "✓" if self.mean_cosine >= target else "✗"  # the target is on the mean; the worst frame is shown too
        on = f" on {self.audio}" if self.audio else ""
        return (f"-[{mark}] int8 {self.net} {self.output}: cosine mean {self.mean_cosine:.4f} (worst {self.min_cosine:.4f}) "
                f"over {self.samples}{on} (target: mean ≥ {target})")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def compare_int8(fp32: ModelFiles, int8_encoder: tuple[Path, Path], int8_joiner: tuple[Path, Path],
                 wavs: list[Path]) -> list[Similarity]:
    """The comparison, run in a child process (core.ncnn.child int8-check): ncnn on the user's int8 model never
    runs in the caller's process. A crash raises core.ncnn.child.NcnnCrash naming the file and the first layer
    that crashes; a model python ncnn cannot load raises ValueError, as before."""
    import json

    from core.ncnn.child import EXIT_ERROR, NcnnCrash, run_child
    from core.validation.crash import crash_sentence
    args = ["int8-check", "--fp32", *map(str, vars(fp32).values()), "--int8-encoder", *map(str, int8_encoder),
            "--int8-joiner", *map(str, int8_joiner)] + [a for w in wavs for a in ("--wav", str(w))]
    rc, lines = run_child(args, module="core.int8.children")
    results = [line[len("result: "):] for line in lines if line.startswith("result: ")]
    if rc == 0 and results:
        return [Similarity(**item) for item in json.loads(results[-1])]
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if rc == EXIT_ERROR and errors:
        raise ValueError(errors[-1])
    nets = [tuple(map(Path, int8_encoder)), tuple(map(Path, int8_joiner)), (fp32.encoder_param, fp32.encoder_bin),
            (fp32.decoder_param, fp32.decoder_bin), (fp32.joiner_param, fp32.joiner_bin)]
    raise NcnnCrash(crash_sentence("int8 check", nets, rc))


def compare_int8_here(fp32: ModelFiles, int8_encoder: tuple[Path, Path], int8_joiner: tuple[Path, Path],
                      wavs: list[Path]) -> list[Similarity]:
    """The comparison in this process (the child's side of compare_int8)."""
    import ncnn

    keeper = Keeper()
    meta = read_metadata(load_param(fp32.encoder_param).model)
    arch = BY_MODEL_TYPE[meta[0]]

    def load(param, binary, encoder):
        net = keeper.keep(ncnn.Net())
        net.opt.num_threads = 1  # ncnn's default (every core) spins against the other children on a busy machine
        if encoder:
            register_meta_layer(net, keeper)
        if net.load_param(str(param)) != 0 or net.load_model(str(binary)) != 0:
            raise ValueError(f"python ncnn could not load {param}")
        return net

    enc32, enc8 = load(fp32.encoder_param, fp32.encoder_bin, True), load(*int8_encoder, True)
    join32, join8 = load(fp32.joiner_param, fp32.joiner_bin, False), load(*int8_joiner, False)
    dec = load(fp32.decoder_param, fp32.decoder_bin, False)
    streamer = Streamer(enc32, dec, join32, arch, meta)  # the fp32 model drives states and greedy search
    enc_cos, join_cos = [], []

    def on_chunk(chunk, states, encoder_out, mats):
        ex8 = enc8.create_extractor()
        ex8.input("in0", as_mat(chunk))
        for k, state in enumerate(states, start=1):
            ex8.input(f"in{k}", as_mat(state))
        enc_cos.append(cosine(encoder_out, np.array(ex8.extract("out0")[1])))

    def on_frame(frame, decoder_out, token, logits, mats):
        jex8 = join8.create_extractor()
        jex8.input("in0", as_mat(frame))
        jex8.input("in1", as_mat(decoder_out))
        join_cos.append(cosine(logits, np.array(jex8.extract("out0")[1])))

    for wav in wavs:
        w = read_wav(wav)
        streamer.run(fbank(w.samples, w.sample_rate), on_chunk, on_frame, name=str(wav))
    if not enc_cos or not join_cos:  # wavs too short for one encoder chunk
        return []
    return [Similarity("encoder", "out0", min(enc_cos), float(np.mean(enc_cos)), len(enc_cos), TEST_WAVS),
            Similarity("joiner", "out0", min(join_cos), float(np.mean(join_cos)), len(join_cos), TEST_WAVS)]
