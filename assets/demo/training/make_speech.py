#!/usr/bin/env python3
"""Synthesise the demo's English speech with espeak-ng: a small vocabulary, many voices, seeded.

    python assets/demo/training/make_speech.py --out /tmp/speech      # training set (outside the repo)
    python assets/demo/training/make_speech.py --commit               # the held-out wavs the repo ships

Why synthetic: the demo models must recognise real words without shipping or
downloading a corpus. espeak-ng (a Debian package; sox resamples its 22.05 kHz
output to 16 kHz) speaks sentences of 2-5 words drawn from 40 words (digits and
a few dozen command words) in 8 accents x 17 variants, at random speed, pitch,
gain and light noise. Sentences and voices are split once, by seed, into train
and held-out: no held-out sentence and no held-out voice (accent+variant pair,
including every pair of two whole variants) is ever used in training; the split
lists are written to ``split.json`` so tests can check it.

Outputs (all 16 kHz mono 16-bit):
* ``--out DIR``: ``DIR/wav/*.wav`` and ``DIR/train.tsv`` (path, voice, text), the training set;
* ``--commit``: ``test_wavs/`` (5 short held-out wavs + ``transcripts.txt``), ``heldout/`` (20
  held-out utterances in LibriSpeech layout), ``calibration_wavs/`` (4 training-distribution wavs,
  not used in training, for int8 calibration), ``training/split.json`` and ``training/committed.json``
  (the text and voice of every committed wav).
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

DEMO = Path(__file__).resolve().parents[1]
SEED = 20261129
SAMPLE_RATE = 16000

DIGITS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
WORDS = DIGITS + """YES NO UP DOWN LEFT RIGHT ON OFF STOP GO OPEN CLOSE CALL PLAY TURN THE RED GREEN BLUE
LIGHT DOOR MUSIC VOLUME TIME PLEASE NOW NEXT BACK HOME PHONE""".split()
ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "adam"]
HELDOUT_VARIANTS = ("m5", "f3")  # every accent with these two variants is held out
HELDOUT_PAIRS = 8  # and this many more accent+variant pairs
N_SENTENCES = 3000
HELDOUT_SENTENCES = 300


def voice_name(accent: str, variant: str) -> str:
    return f"{accent}+{variant}" if variant else accent


def split(seed: int = SEED) -> dict:
    """The fixed train / held-out split of sentences and voices (no overlap by construction)."""
    rng = random.Random(seed)
    sentences: list[str] = []
    seen = set()
    while len(sentences) < N_SENTENCES:
        n = rng.choice((2, 3, 3, 4, 4, 5))
        if rng.random() < 0.3:  # digit strings, like a phone number or a code
            s = " ".join(rng.choice(DIGITS) for _ in range(n))
        else:
            s = " ".join(rng.choice(WORDS) for _ in range(n))
        if s not in seen:
            seen.add(s)
            sentences.append(s)
    rng.shuffle(sentences)
    voices = [voice_name(a, v) for a in ACCENTS for v in VARIANTS]
    held = [v for v in voices if v.split("+")[-1] in HELDOUT_VARIANTS]
    rest = [v for v in voices if v not in held]
    held += rng.sample(rest, HELDOUT_PAIRS)
    return {"seed": seed, "words": WORDS,
            "train_sentences": sentences[HELDOUT_SENTENCES:], "heldout_sentences": sentences[:HELDOUT_SENTENCES],
            "train_voices": [v for v in voices if v not in held], "heldout_voices": sorted(held)}


def synthesise(text: str, voice: str, rng: random.Random, noise: bool = True) -> np.ndarray:
    """One utterance as float32 16 kHz samples: espeak-ng (random speed/pitch) -> sox -> gain and noise."""
    speed, pitch = rng.randint(130, 210), rng.randint(25, 75)
    tts = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text.lower()],
                         capture_output=True, check=True).stdout
    raw = subprocess.run(["sox", "-D", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                          "-e", "signed-integer", "-"], input=tts, capture_output=True, check=True).stdout
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    x = x / max(1e-4, float(np.abs(x).max())) * rng.uniform(0.3, 0.9)
    lead, tail = int(rng.uniform(0.0, 0.25) * SAMPLE_RATE), int(rng.uniform(0.05, 0.3) * SAMPLE_RATE)
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(tail, np.float32)])
    if noise:
        nrng = np.random.default_rng(rng.randrange(2 ** 32))
        snr = rng.uniform(15, 40)
        power = float(np.mean(x ** 2)) + 1e-12
        n = nrng.standard_normal(len(x)).astype(np.float32)
        if rng.random() < 0.5:  # pinkish: smoothed
            n = np.convolve(n, np.ones(4, np.float32) / 2.0, mode="same")
        x = x + n * np.sqrt(power / 10 ** (snr / 10) / (float(np.mean(n ** 2)) + 1e-12))
    return np.clip(x, -1.0, 1.0)


def write_wav(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def train_rows(count: int, seed: int = SEED) -> list[tuple[str, str, str]]:
    """(wav name, voice, text) of the ``count`` training utterances: train sentences x train voices at random."""
    sp = split(seed)
    rng = random.Random(seed + 1)
    rows = []
    for i in range(count):
        text, voice = rng.choice(sp["train_sentences"]), rng.choice(sp["train_voices"])
        rows.append((f"{i:06d}.wav", voice, text))
    return rows


def make_train(out: Path, count: int, seed: int = SEED) -> None:
    """Write the training wavs (1 in 5 without noise) and ``train.tsv`` (path, voice, text)."""
    rows = train_rows(count, seed)
    for i, (name, voice, text) in enumerate(rows):
        path = out / "wav" / name
        if not path.is_file():
            write_wav(path, synthesise(text, voice, random.Random(f"{seed}-{i}"), noise=i % 5 != 0))
        if i % 500 == 0:
            print(f"{i}/{count}", flush=True)
    (out / "train.tsv").write_text("".join(f"wav/{name}\t{voice}\t{text}\n" for name, voice, text in rows))


def _short(sentences: list[str], rng: random.Random, k: int, max_words: int) -> list[str]:
    return rng.sample([s for s in sentences if len(s.split()) <= max_words], k)


def make_committed(seed: int = SEED) -> None:
    """The held-out test wavs, the LibriSpeech-layout held-out set, the calibration wavs and split.json."""
    sp = split(seed)
    rng = random.Random(seed + 2)
    (DEMO / "training" / "split.json").write_text(json.dumps(sp, indent=1) + "\n")

    test_dir = DEMO / "test_wavs"
    for old in test_dir.glob("*.wav"):
        old.unlink()
    lines, record = [], {}
    texts = _short(sp["heldout_sentences"], rng, 5, 4)
    voices = rng.sample(sp["heldout_voices"], 5)
    for i, (text, voice) in enumerate(zip(texts, voices)):
        name = f"{i}-{'-'.join(text.lower().split()[:2])}.wav"
        x = synthesise(text, voice, random.Random(f"test-{seed}-{i}"), noise=i % 2 == 1)
        write_wav(test_dir / name, x)
        lines.append(f"{name} {text}\n")
        record[f"test_wavs/{name}"] = {"text": text, "voice": voice}
    (test_dir / "transcripts.txt").write_text("".join(lines))

    ho = DEMO / "heldout" / "1089" / "134686"
    for old in ho.glob("*"):
        old.unlink()
    trans = []
    used = set(texts)
    pool = [s for s in sp["heldout_sentences"] if s not in used]
    for i, text in enumerate(rng.sample(pool, 20)):
        utt = f"1089-134686-{i:04d}"
        voice = rng.choice(sp["heldout_voices"])
        write_wav(ho / f"{utt}.wav", synthesise(text, voice, random.Random(f"ho-{seed}-{i}")))
        record[f"heldout/1089/134686/{utt}.wav"] = {"text": text, "voice": voice}
        trans.append(f"{utt} {text}\n")
    (ho / "1089-134686.trans.txt").write_text("".join(trans))

    cal = DEMO / "calibration_wavs"
    for old in cal.glob("*.wav"):
        old.unlink()
    crng = random.Random(seed + 3)  # training voices, sentences outside both lists (never trained on)
    for i in range(4):
        text, voice = " ".join(crng.choice(WORDS) for _ in range(6)), crng.choice(sp["train_voices"])
        write_wav(cal / f"cal-{i}.wav", synthesise(text, voice, random.Random(f"cal-{i}")))
        record[f"calibration_wavs/cal-{i}.wav"] = {"text": text, "voice": voice}
    (DEMO / "training" / "committed.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the training set here (outside the repository)")
    p.add_argument("--count", type=int, default=8000, help="training utterances (default 8000)")
    p.add_argument("--commit", action="store_true", help="(re)write the held-out wavs the repository ships")
    args = p.parse_args(argv)
    if not args.out and not args.commit:
        p.error("give --out DIR and/or --commit")
    if args.commit:
        make_committed()
    if args.out:
        make_train(args.out, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
