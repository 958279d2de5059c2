"""Accuracy on real data: a dataset decoded by sherpa-ncnn with the fp16 and the int8 model, and their WER.

Three layouts are read: LibriSpeech (``*.trans.txt`` beside ``.flac``/``.wav`` files), Kaldi (``wav.scp`` +
``text``) and a list file (``AUDIO<TAB>TRANSCRIPT`` per line, relative paths from the list's folder). Audio is read
with soundfile (FLAC and WAV) and resampled to 16 kHz with soxr. Decoding runs in child processes (a bad model can
crash sherpa-ncnn); each result is appended to a cache as it arrives, so an interrupted or crashed run resumes
where it stopped. WER comes from jiwer (substitutions, deletions, insertions) after the same normalisation of
reference and hypothesis.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

AUDIO_SUFFIXES = (".flac", ".wav")
SAMPLE_RATE = 16000
CHILD_TIMEOUT_SECONDS = 3600
PUNCT_RE = re.compile(r"[^\w\s']", re.UNICODE)


class DatasetError(Exception):
    """The dataset cannot be used; the message names the file (and line)."""


@dataclass
class Item:
    id: str
    audio: Path
    text: str


@dataclass
class Dataset:
    root: Path
    layout: str  # librispeech | kaldi | list
    items: list[Item] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # lines that were skipped, by file and line


def _lines(path: Path):
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (offset {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror})") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield n, line.strip()


def _librispeech(root: Path) -> Dataset:
    ds = Dataset(root, "librispeech")
    for trans in sorted(root.rglob("*.trans.txt")):
        for n, line in _lines(trans):
            parts = line.split(maxsplit=1)
            utt = parts[0]
            audio = next((trans.parent / f"{utt}{s}" for s in AUDIO_SUFFIXES if (trans.parent / f"{utt}{s}").is_file()),
                         None)
            if audio is None:
                ds.problems.append(f"{trans}:{n}: no {utt}.flac or {utt}.wav beside it")
                continue
            ds.items.append(Item(utt, audio, parts[1] if len(parts) > 1 else ""))
    return ds


def _kaldi(root: Path) -> Dataset:
    ds = Dataset(root, "kaldi")
    texts = {}
    for n, line in _lines(root / "text"):
        parts = line.split(maxsplit=1)
        texts[parts[0]] = parts[1] if len(parts) > 1 else ""
    for n, line in _lines(root / "wav.scp"):
        parts = line.split(maxsplit=1)
        if len(parts) < 2:
            ds.problems.append(f"{root / 'wav.scp'}:{n}: an utterance id without a path")
            continue
        utt, where = parts
        if where.rstrip().endswith("|"):
            ds.problems.append(f"{root / 'wav.scp'}:{n}: {utt} is a command pipe ({where[:40]}...); give audio files "
                               "(run the command once and list its output)")
            continue
        audio = Path(where.strip())
        audio = audio if audio.is_absolute() else root / audio
        if not audio.is_file():
            ds.problems.append(f"{root / 'wav.scp'}:{n}: {audio} not found")
        elif utt not in texts:
            ds.problems.append(f"{root / 'wav.scp'}:{n}: {utt} has no line in {root / 'text'}")
        else:
            ds.items.append(Item(utt, audio, texts[utt]))
    return ds


def _list(path: Path) -> Dataset:
    ds = Dataset(path, "list")
    for n, line in _lines(path):
        audio_s, sep, text = line.partition("\t")
        if not sep:
            audio_s, _, text = line.partition(" ")
        audio = Path(audio_s.strip())
        audio = audio if audio.is_absolute() else path.parent / audio
        if not audio.is_file():
            ds.problems.append(f"{path}:{n}: {audio} not found")
            continue
        ds.items.append(Item(f"{n:06d}-{audio.stem}", audio, text.strip()))
    return ds


def read_dataset(path: str | Path) -> Dataset:
    """The dataset at ``path`` (a directory in LibriSpeech or Kaldi layout, or a list file); raises DatasetError."""
    root = Path(path).expanduser()
    if root.is_file():
        ds = _list(root)
    elif root.is_dir():
        if (root / "wav.scp").is_file() and (root / "text").is_file():
            ds = _kaldi(root)
        elif any(root.rglob("*.trans.txt")):
            ds = _librispeech(root)
        else:
            raise DatasetError(f"{root}: neither LibriSpeech (*.trans.txt beside .flac/.wav), Kaldi (wav.scp + text) "
                               "nor a list file (AUDIO<TAB>TRANSCRIPT per line)")
    else:
        raise DatasetError(f"{root}: not found")
    ids = [i.id for i in ds.items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"{root}: utterance id {dup!r} appears more than once")
    if not ds.items:
        raise DatasetError(f"{root}: no usable utterances" + (f" ({ds.problems[0]})" if ds.problems else ""))
    return ds


# -- decoding in sherpa-ncnn (child) ---------------------------------------------------------------------------------

_CHILD = r"""
import json, sys
import numpy as np
import sherpa_ncnn
import soundfile
cfg = json.loads(sys.stdin.read())
rec = sherpa_ncnn.Recognizer(num_threads=1, **cfg["files"])
print("LOADED", flush=True)
for item in cfg["items"]:
    print("FILE " + item["id"], flush=True)
    x, rate = soundfile.read(item["audio"], dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if rate != 16000:
        import soxr
        x = soxr.resample(x, rate, 16000).astype(np.float32)
    rec.stream = rec.recognizer.create_stream()
    rec.accept_waveform(16000, np.ascontiguousarray(x, dtype=np.float32))
    rec.accept_waveform(16000, np.zeros(int(16000 * cfg["tail"]), dtype=np.float32))
    rec.input_finished()
    print("RESULT " + json.dumps({"id": item["id"], "text": rec.text, "seconds": len(x) / 16000.0}), flush=True)
"""


def _files_key(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(files):
        p = Path(files[k])
        st = p.stat()
        h.update(f"{k} {p.resolve()} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _load_cache(cache: Path, key: str) -> dict[str, dict]:
    done = {}
    try:
        lines = cache.read_text(encoding="utf-8").splitlines()
    except OSError:
        return done
    if not lines or lines[0] != json.dumps({"model_key": key}):
        return done  # another model (or changed files): start over
    for line in lines[1:]:
        try:
            r = json.loads(line)
            done[r["id"]] = r
        except (ValueError, KeyError, TypeError):
            break  # a line cut by a crash: everything after it is redone
    return done


def decode_dataset(model_dir: Path, ds: Dataset, model: str, cache: Path, *,
                   on_progress: Callable[[int, int, str], None] | None = None,
                   cancelled: Callable[[], bool] | None = None) -> dict[str, dict]:
    """id -> {"id", "text", "seconds"} for every item; resumes from ``cache`` (one JSON line per decoded file).

    Raises DatasetError naming the file sherpa-ncnn crashed on."""
    from core.validation.decoding import TAIL_PADDING_SECONDS, explain_exit, model_files
    files = model_files(Path(model_dir), int8=(model == "int8"))
    missing = [p for p in files.values() if not Path(p).is_file()]
    if missing:
        raise DatasetError(f"{model_dir}: the {model} model is incomplete ({Path(missing[0]).name} missing)")
    key = _files_key(files)
    done = _load_cache(cache, key)
    if not done:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"model_key": key}) + "\n", encoding="utf-8")
    else:  # rewrite without a torn last line
        cache.write_text("".join(json.dumps(x) + "\n" for x in [{"model_key": key}, *done.values()]),
                         encoding="utf-8")
    todo = [i for i in ds.items if i.id not in done]
    total = len(ds.items)
    if on_progress:
        on_progress(len(done), total, f"{model}: {len(done)} cached")
    if not todo:
        return done
    cfg = {"files": files, "tail": TAIL_PADDING_SECONDS,
           "items": [{"id": i.id, "audio": str(i.audio.resolve())} for i in todo]}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    proc.stdin.write(json.dumps(cfg))
    proc.stdin.close()
    current, loaded = None, False
    with open(cache, "a", encoding="utf-8") as log:
        for line in proc.stdout:
            if cancelled is not None and cancelled():
                proc.kill()
                break
            if line.startswith("LOADED"):
                loaded = True
            elif line.startswith("FILE "):
                current = line[5:].strip()
            elif line.startswith("RESULT "):
                r = json.loads(line[7:])
                done[r["id"]] = r
                log.write(json.dumps(r) + "\n")
                log.flush()
                current = None
                if on_progress:
                    on_progress(len(done), total, f"{model}: {r['id']}")
    err = proc.stderr.read()
    rc = proc.wait()
    if cancelled is not None and cancelled():
        return done
    if rc != 0:
        where = next((i.audio for i in ds.items if i.id == current), None)
        what = explain_exit(rc, err.splitlines(), loaded)
        raise DatasetError(f"{what}" + (f" on {where}" if where else "") + f" ({len(done)}/{total} files decoded "
                           "and kept; run again to continue)")
    return done


# -- WER -------------------------------------------------------------------------------------------------------------

def normalize(text: str) -> str:
    return " ".join(PUNCT_RE.sub(" ", text.upper()).split())


def wer(ds: Dataset, results: dict[str, dict], model: str) -> dict:
    """jiwer's word-level measures over the whole dataset (empty references count their insertions)."""
    import jiwer
    refs = [normalize(i.text) for i in ds.items]
    hyps = [normalize(results[i.id]["text"]) for i in ds.items]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    extra = sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs]) if pairs else None
    s = out.substitutions if out else 0
    d = out.deletions if out else 0
    i = (out.insertions if out else 0) + extra
    words = sum(len(r.split()) for r, _ in pairs)
    return {"model": model, "wer": (s + d + i) / words if words else 0.0, "substitutions": s, "deletions": d,
            "insertions": i, "words": words, "utterances": len(ds.items),
            "audio_seconds": round(sum(results[x.id].get("seconds", 0.0) for x in ds.items), 2)}


def evaluate(model_dir: Path, ds: Dataset, models: list[str], cache_dir: Path, *,
             max_wer_increase: float | None = None, on_progress=None, cancelled=None) -> dict:
    """WER of each model and, with fp16 and int8, their difference in points and whether the gate holds."""
    report = {"dataset": str(ds.root), "layout": ds.layout, "skipped": ds.problems, "models": []}
    per_model = {}
    for m in models:
        results = decode_dataset(model_dir, ds, m, cache_dir / f"{m}.jsonl", on_progress=on_progress,
                                 cancelled=cancelled)
        if cancelled is not None and cancelled():
            return report
        per_model[m] = results
        report["models"].append(wer(ds, results, m))
    if {"fp16", "int8"} <= set(per_model):
        w = {x["model"]: x["wer"] for x in report["models"]}
        increase = round((w["int8"] - w["fp16"]) * 100, 3)
        report["int8_increase_points"] = increase
        if max_wer_increase is not None:
            report["max_wer_increase"] = max_wer_increase
            report["gate_ok"] = increase <= max_wer_increase
        report["changed"] = [{"id": i.id, "reference": i.text, "fp16": per_model["fp16"][i.id]["text"],
                              "int8": per_model["int8"][i.id]["text"]} for i in ds.items
                             if normalize(per_model["fp16"][i.id]["text"]) != normalize(per_model["int8"][i.id]["text"])
                             ][:50]
    return report
