"""How close the int8 encoder and joiner stay to fp32 on real audio: cosine similarity per output.

Both nets get exactly the same inputs: the fp32 run decides the states, the
encoder frames and the decoder output, so each number compares one forward
pass, not two drifting streams.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import fbank, read_wav
from .calibration_run import BLANK_IDS, CONTEXT_SIZE, ModelFiles, _initial_states, Keeper, register_meta_layer, _run_decoder
from .architectures import BY_MODEL_TYPE
from .metadata import read_metadata
from .ncnn_param import load_param


@dataclass
class Similarity:
    net: str
    output: str
    min_cosine: float
    mean_cosine: float
    samples: int

    def line(self, target: float = 0.99) -> str:
        mark = "✓" if self.mean_cosine >= target else "✗"  # the target is on the mean; the worst frame is shown too
        return (f"-[{mark}] int8 {self.net} {self.output}: cosine mean {self.mean_cosine:.4f} (worst {self.min_cosine:.4f}) "
                f"over {self.samples} (target: mean ≥ {target})")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def compare_int8(fp32: ModelFiles, int8_encoder: tuple[Path, Path], int8_joiner: tuple[Path, Path],
                 wavs: list[Path]) -> list[Similarity]:
    import ncnn

    keeper = Keeper()
    meta = read_metadata(load_param(fp32.encoder_param).model)
    arch = BY_MODEL_TYPE[meta[0]]
    segment, offset = arch.segment_offset(arch.values_from_metadata(meta))

    def load(param, binary, encoder):
        net = keeper.keep(ncnn.Net())
        if encoder:
            register_meta_layer(net, keeper)
        if net.load_param(str(param)) != 0 or net.load_model(str(binary)) != 0:
            raise ValueError(f"python ncnn could not load {param}")
        return net

    enc32, enc8 = load(fp32.encoder_param, fp32.encoder_bin, True), load(*int8_encoder, True)
    join32, join8 = load(fp32.joiner_param, fp32.joiner_bin, False), load(*int8_joiner, False)
    dec = load(fp32.decoder_param, fp32.decoder_bin, False)
    n_states = len(_initial_states(arch, meta))
    state_map = [(2, 2), (3, 3)] if arch.name == "lstm" else [(k, k) for k in range(1, n_states + 1)]
    enc_cos, join_cos = [], []
    for wav in wavs:
        w = read_wav(wav)
        feats = fbank(w.samples, w.sample_rate)
        states = _initial_states(arch, meta)
        context = [0] * CONTEXT_SIZE
        decoder_out = _run_decoder(dec, context)
        processed = 0
        while processed + segment <= len(feats):
            chunk = np.ascontiguousarray(feats[processed: processed + segment])
            processed += offset
            outs = []
            for net in (enc32, enc8):
                ex = net.create_extractor()
                ex.set_light_mode(False)
                ex.input("in0", ncnn.Mat(chunk))
                for k, state in enumerate(states, start=1):
                    ex.input(f"in{k}", ncnn.Mat(state))
                outs.append((ex, np.array(ex.extract("out0")[1]).copy()))
            enc_cos.append(_cos(outs[0][1], outs[1][1]))
            ex32 = outs[0][0]
            new_states = list(states)
            for target, source in state_map:
                new_states[target - 1] = np.array(ex32.extract(f"out{source}")[1]).reshape(
                    states[target - 1].shape).astype(np.float32)
            states = new_states
            frames = outs[0][1].reshape(-1, outs[0][1].shape[-1])
            for frame in frames:
                frame = np.ascontiguousarray(frame, dtype=np.float32)
                logits = []
                for net in (join32, join8):
                    jex = net.create_extractor()
                    jex.input("in0", ncnn.Mat(frame))
                    jex.input("in1", ncnn.Mat(decoder_out))
                    logits.append(np.array(jex.extract("out0")[1]).copy())
                join_cos.append(_cos(*logits))
                token = int(np.argmax(logits[0]))
                if token not in BLANK_IDS:
                    context = context[1:] + [token]
                    decoder_out = _run_decoder(dec, context)
    return [Similarity("encoder", "out0", min(enc_cos), float(np.mean(enc_cos)), len(enc_cos)),
            Similarity("joiner", "out0", min(join_cos), float(np.mean(join_cos)), len(join_cos))]
