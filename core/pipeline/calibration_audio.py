"""Calibration audio at 16 kHz: which files need resampling, and the step that does it (only when asked).

sherpa-ncnn's table tool rejects anything but 16 kHz, and so does the built-in
calibration: a file at another rate is a plan-time problem naming it, unless
``calibration.resample`` is on. Then the ``calibration-audio`` step writes
16 kHz float copies (first channel, soxr high quality) under
OUT/work/calibration-audio/ and both backends read those; the user's files
are only read, and every resampled file is named in the plan's warnings.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.common.atomic import atomic_write_bytes
from core.common.audio import SAMPLE_RATE, AudioError, read_wav
from core.pipeline.runner import Step, StepContext, StepError


@dataclass
class AudioPlan:
    """The wavs calibration will read (resampled copies in place of the originals), and what was decided."""

    wavs: list[Path] = field(default_factory=list)
    resample: list[tuple[Path, Path, int]] = field(default_factory=list)  # (original, 16 kHz copy, its rate)
    notes: list[str] = field(default_factory=list)


def audio_dir(layout) -> Path:
    return layout.work / "calibration-audio"


def plan_audio(layout, wavs: list[Path], resample: bool) -> AudioPlan:
    """Map each wav to what calibration reads; files at other rates get a copy when ``resample`` is on."""
    plan = AudioPlan()
    for i, wav in enumerate(wavs):
        try:
            rate = read_wav(wav).sample_rate
        except AudioError:
            rate = SAMPLE_RATE  # unreadable files are reported by the calibration check, by name
        if rate != SAMPLE_RATE and resample:
            copy = audio_dir(layout) / f"{i:04d}-{Path(wav).stem}.wav"
            plan.resample.append((Path(wav), copy, rate))
            plan.wavs.append(copy)
            plan.notes.append(f"{wav}: {rate} Hz, resampled to 16 kHz for calibration (calibration.resample)")
        else:
            plan.wavs.append(Path(wav))
    return plan


def float_wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """A mono 32-bit float WAV (format 3), which sherpa-ncnn's reader and ours accept."""
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    fmt = (b"fmt " + (16).to_bytes(4, "little") + (3).to_bytes(2, "little") + (1).to_bytes(2, "little")
           + rate.to_bytes(4, "little") + (rate * 4).to_bytes(4, "little") + (4).to_bytes(2, "little")
           + (32).to_bytes(2, "little"))
    body = b"WAVE" + fmt + b"data" + len(data).to_bytes(4, "little") + data
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def resample_to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    import soxr
    return soxr.resample(samples.astype(np.float32), rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def make_calibration_audio(plan: AudioPlan) -> Step:
    def run(ctx: StepContext) -> None:
        for n, (original, copy, rate) in enumerate(plan.resample, start=1):
            ctx.check_cancelled()
            try:
                wave = read_wav(original)
            except AudioError as exc:
                raise StepError(str(exc), hint="use 16-bit PCM or 32-bit float WAV files") from None
            atomic_write_bytes(copy, float_wav_bytes(resample_to_16k(wave.samples, rate), SAMPLE_RATE))
            ctx.log(f"{original}: {rate} Hz -> {copy} (16 kHz, first channel)")
            ctx.progress(n, len(plan.resample), Path(original).name)

    script = [f"sox {shlex.quote(str(o))} -r 16000 -c 1 -e floating-point {shlex.quote(str(c))}  "
              "# or any resampler" for o, c, _ in plan.resample]
    return Step("calibration-audio", "Resample calibration audio to 16 kHz", func=run,
                inputs=[o for o, _, _ in plan.resample], outputs=[c for _, c, _ in plan.resample],
                describe=f"resample {len(plan.resample)} calibration wav(s) to 16 kHz (soxr)", script=script)
