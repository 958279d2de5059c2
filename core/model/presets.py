"""Presets: the exact export flags of published models, each with the file it was copied from.

Only models whose full ``export-for-ncnn.py`` command is written down in icefall's own docs or scripts are
here; flags a source leaves out take icefall's defaults (exactly what that command did). Selecting a
preset gives ``resolve(spec, preset.flags)``, which is checked by the tests to have no errors.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.model.architectures import ResolvedValues, get_arch, resolve


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    flags: dict[str, str]  # icefall flag -> value, as the source writes it
    source: str  # repository path (and commit) of the command the flags were copied from
    description: str
    url: str = ""  # where the checkpoint is published

    def resolve(self) -> ResolvedValues:
        return resolve(get_arch(self.arch), self.flags)

    def hyperparameters(self) -> dict[str, str]:
        """For wizard.toml's [hyperparameters] table (flag names without the dashes)."""
        return {flag.lstrip("-"): value for flag, value in self.flags.items()}

    def to_dict(self) -> dict:
        return {"name": self.name, "arch": self.arch, "flags": dict(self.flags), "source": self.source,
                "description": self.description, "url": self.url}


_ZIPFORMER_2022_12_29 = {
    "--decode-chunk-len": "32", "--num-left-chunks": "4", "--num-encoder-layers": "2,4,3,2,4",
    "--feedforward-dims": "1024,1024,2048,2048,1024", "--nhead": "8,8,8,8,8",
    "--encoder-dims": "384,384,384,384,384", "--attention-dims": "192,192,192,192,192",
    "--encoder-unmasked-dims": "256,256,256,256,256", "--zipformer-downsampling-factors": "1,2,4,8,2",
    "--cnn-module-kernels": "31,31,31,31,31", "--decoder-dim": "512", "--joiner-dim": "512",
}

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="icefall-asr-librispeech-pruned-transducer-stateless7-streaming-2022-12-29",
        arch="zipformer",
        flags=dict(_ZIPFORMER_2022_12_29),
        source="k2-fsa/icefall docs/source/model-export/export-ncnn-zipformer.rst (section 3, the export command; "
               "commit 47565959)",
        description="Streaming Zipformer v1, LibriSpeech English, ~70M parameters (the icefall ncnn docs' example)",
        url="https://huggingface.co/Zengwei/icefall-asr-librispeech-pruned-transducer-stateless7-streaming-2022-12-29",
    ),
    Preset(
        name="icefall-asr-librispeech-conv-emformer-transducer-stateless2-2022-07-05",
        arch="conv-emformer",
        flags={"--num-encoder-layers": "12", "--chunk-length": "32", "--cnn-module-kernel": "31",
               "--left-context-length": "32", "--right-context-length": "8", "--memory-size": "32",
               "--encoder-dim": "512"},
        source="k2-fsa/icefall docs/source/model-export/export-ncnn-conv-emformer.rst (section 3, the export "
               "command; commit 139b7ec4); --nhead and --dim-feedforward are not passed there (defaults 8, 2048)",
        description="ConvEmformer, LibriSpeech English, ~75M parameters (the icefall ncnn docs' example; "
                    "checkpoint pretrained-epoch-30-avg-10-averaged.pt)",
        url="https://huggingface.co/Zengwei/icefall-asr-librispeech-conv-emformer-transducer-stateless2-2022-07-05",
    ),
    Preset(
        name="icefall-asr-librispeech-lstm-transducer-stateless2-2022-09-03",
        arch="lstm",
        flags={"--num-encoder-layers": "12", "--encoder-dim": "512", "--rnn-hidden-size": "1024"},
        source="k2-fsa/icefall docs/source/model-export/export-ncnn-lstm.rst (section 3, the export command; "
               "commit 139b7ec4)",
        description="LSTM transducer, LibriSpeech English, ~84M parameters (the icefall ncnn docs' example; "
                    "checkpoint pretrained-iter-468000-avg-16.pt)",
        url="https://huggingface.co/csukuangfj/icefall-asr-librispeech-lstm-transducer-stateless2-2022-09-03",
    ),
    Preset(
        name="k2fsa-zipformer-chinese-english-mixed",
        arch="zipformer",
        flags={"--decode-chunk-len": "32", "--num-encoder-layers": "2,4,3,2,4",
               "--feedforward-dims": "1024,1024,1536,1536,1024", "--nhead": "8,8,8,8,8",
               "--encoder-dims": "384,384,384,384,384", "--attention-dims": "192,192,192,192,192",
               "--encoder-unmasked-dims": "256,256,256,256,256", "--zipformer-downsampling-factors": "1,2,4,8,2",
               "--cnn-module-kernels": "31,31,31,31,31", "--decoder-dim": "512", "--joiner-dim": "512"},
        source="k2-fsa/icefall egs/librispeech/ASR/pruned_transducer_stateless7_streaming/export-for-ncnn-zh.py "
               "(module docstring, step 2; commit 0fb01804)",
        description="Streaming Zipformer v1, bilingual Chinese+English (export with export-for-ncnn-zh.py; "
                    "converted: csukuangfj/sherpa-ncnn-streaming-zipformer-bilingual-zh-en-2023-02-13)",
        url="https://huggingface.co/pfluo/k2fsa-zipformer-chinese-english-mixed",
    ),
)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        import difflib
        close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(PRESETS)}"
        raise KeyError(f"unknown preset {name!r}{hint}") from None


def matching_presets(detection) -> list[Preset]:
    """Presets of the detected architecture whose flags agree with everything the checkpoint reveals."""
    from core.model.checkpoint import check_against
    return [p for p in PRESETS.values()
            if p.arch == detection.arch.name and not check_against(p.flags, detection)]
