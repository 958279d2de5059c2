"""Checks made at plan time for what would otherwise fail late: in icefall's export, in sherpa-ncnn, or in validation.

Each check returns ``(problems, warnings)`` whose sentences start with the config key they are about, so the CLI
and the wizard can show them as they are; a problem another module acts on is a core.common.problems.Problem
(its kind, not its words, drives what happens). Nothing here runs icefall, and no checkpoint is unpickled unsafely.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from core.common.problems import Problem, ProblemKind

TRUST_HOW = ("if you trust where the file comes from: --trust-checkpoint (run), files.trust_checkpoint = true "
             "(wizard.toml), or tick 'trust this checkpoint' in the wizard's review")


@dataclass
class CheckpointFiles:
    """The checkpoint files icefall's export will load for the config's epoch/iter/avg selection."""

    loaded: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    needs_model_avg: bool = False


def export_checkpoint_files(exp: Path, epoch: int, iteration: int, avg: int, averaged: bool) -> CheckpointFiles:
    """Mirror of the selection in icefall's export scripts (epoch-N.pt / checkpoint-N.pt, --avg, averaged model)."""
    out = CheckpointFiles(needs_model_avg=averaged)
    what = f"--epoch {epoch} --avg {avg} --use-averaged-model {int(averaged)}" if iteration <= 0 else \
        f"--iter {iteration} --avg {avg} --use-averaged-model {int(averaged)}"
    if avg < 1:
        out.problems.append(f"files.avg: {avg}; it must be at least 1")
        return out
    if iteration > 0:
        found = []
        for p in exp.glob("checkpoint-*.pt"):
            m = re.fullmatch(r"checkpoint-(\d+)\.pt", p.name)
            if m and int(m.group(1)) <= iteration:
                found.append((int(m.group(1)), p))
        found.sort(reverse=True)
        need = avg + 1 if averaged else avg
        files = [p for _, p in found[:need]]
        if len(files) < need:
            have = ", ".join(p.name for p in files) or "none"
            out.problems.append(f"files.exp_dir: {what} needs {need} checkpoint-N.pt files with N <= {iteration} in "
                                f"{exp}; found {len(files)} ({have}); lower files.avg or choose another files.iter")
            return out
        out.loaded = [files[-1], files[0]] if averaged else files
    elif averaged:
        start = epoch - avg
        if start < 1:
            out.problems.append(f"files.avg: {what} averages from epoch-{start}.pt, which cannot exist (epoch - avg "
                                "must be at least 1); lower files.avg or set files.use_averaged_model = false")
            return out
        out.loaded = [exp / f"epoch-{start}.pt", exp / f"epoch-{epoch}.pt"]
    else:
        out.loaded = [exp / f"epoch-{i}.pt" for i in range(epoch - avg + 1, epoch + 1) if i >= 1]
    missing = [p.name for p in out.loaded if not p.is_file()]
    if missing:
        out.problems.append(f"files.exp_dir: {what} loads {', '.join(p.name for p in out.loaded)}, but "
                            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in {exp}; choose "
                            "files.epoch/files.avg so that every file exists (or use_averaged_model = false)")
        out.loaded = [p for p in out.loaded if p.is_file()]
    return out


@dataclass
class SafetyResult:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loaded: dict[Path, object] = field(default_factory=dict)  # path -> LoadedCheckpoint (read safely)
    untrusted: list[tuple[str, list[str]]] = field(default_factory=list)  # (file, globals it needs)


def checkpoint_safety(paths: list[Path], trust: bool, *, needs_model_avg: bool = False) -> SafetyResult:
    """Read every checkpoint the export will unpickle with the safe loader; refuse what it refuses unless trusted.

    icefall's export calls ``torch.load`` with the full unpickler, which runs whatever code a pickle names
    (``__reduce__`` -> os.system). A file the allowlist loader refuses, or cannot read at all, may only reach the
    export when the user says they trust it.
    """
    from core.model.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint
    out = SafetyResult()
    for path in paths:
        try:
            out.loaded[path] = ckpt = load_checkpoint(path)
        except UnsafeCheckpointError as exc:
            names = ", ".join(exc.types) or "code outside the allowlist"
            out.untrusted.append((str(path), list(exc.types)))
            if trust:
                out.warnings.append(f"files.checkpoint: {path} needs {names} to be unpickled; trusted "
                                    "(files.trust_checkpoint): icefall's export will unpickle it, which runs that code; "
                                    "it was not checked against the hyperparameters")
            else:
                out.problems.append(f"files.checkpoint: {path}: refused: unpickling it needs {names}, which can run "
                                    "arbitrary code, and icefall's export would unpickle it (torch.load); nothing "
                                    f"was run. {TRUST_HOW[0].upper()}{TRUST_HOW[1:]}")
            continue
        except CheckpointError as exc:
            out.untrusted.append((str(path), []))
            if trust:
                out.warnings.append(f"files.checkpoint: not checked against the hyperparameters: {exc} (trusted: "
                                    "icefall's export will load it)")
            else:
                out.problems.append(f"files.checkpoint: {exc}. It cannot be read safely, so icefall's export is not "
                                    f"allowed to unpickle it either; give a pretrained.pt / epoch-N.pt, or {TRUST_HOW}")
            continue
        if needs_model_avg and "model_avg" not in ckpt.top_keys:
            out.problems.append(f"files.use_averaged_model: {path} has no model_avg (icefall's averaged-model export "
                                "reads it); set files.use_averaged_model = false")
    return out


def vocab_problems(detection, *, tokens: Path | None, bpe: Path | None, from_lang: str = "") -> list[str]:
    """The vocabulary file's size against the checkpoint's (decoder embedding rows, joiner outputs)."""
    vocab = detection.vocab_size
    if vocab is None:
        return []
    joiner = detection.extras.get("joiner_out")
    weights = f"decoder.embedding.weight has {vocab} rows" + (f", joiner.output_linear {joiner} outputs"
                                                               if joiner is not None else "")
    if joiner is not None and joiner != vocab:
        return [f"files.checkpoint: the decoder embedding has {vocab} rows but the joiner {joiner} outputs; "
                "the checkpoint is inconsistent"]
    key = from_lang or ("files.bpe_model" if tokens is None else "files.tokens")
    if tokens is None and bpe is not None and bpe.is_file():
        pieces = bpe_piece_count(bpe)
        if pieces is None:
            return [f"{key}: {bpe} is not a sentencepiece model"]
        if pieces != vocab:
            return [f"{key}: {bpe} has {pieces} pieces, but the checkpoint's vocab size is {vocab} ({weights}); "
                    "this bpe.model belongs to another model (the export would stop with a size mismatch)"]
    return []


def bpe_piece_count(bpe: Path) -> int | None:
    try:
        import sentencepiece as spm
    except ImportError:  # pragma: no cover - sentencepiece is a dependency
        return None
    try:
        return spm.SentencePieceProcessor(model_file=str(bpe)).get_piece_size()
    except (OSError, RuntimeError):
        return None


def context_size_problems(resolved, detection) -> list[str]:
    """sherpa-ncnn hard-codes a decoder context of 2: a model with another one crashes it (refused, not warned)."""
    out = []
    given = resolved.values.get("context_size")
    trained = detection.values["context_size"].value if detection and "context_size" in detection.values else None
    why = ("sherpa-ncnn hard-codes a decoder context of 2 (model.h: ContextSize() = 2) and crashes or decodes "
           "garbage with another one; use a model trained with --context-size 2")
    if given is not None and given != 2:
        out.append(f"hyperparameters: --context-size {given}: {why}")
    elif trained is not None and trained != 2 and detection.values["context_size"].revealed:
        out.append(f"files.checkpoint: the checkpoint has decoder context size {trained} (decoder.conv in the "
                   f"weights); {why}")
    return out


def fixed_dim_messages(folder: Path, detection) -> list[Problem]:
    """ConvEmformer/LSTM recipes fix decoder_dim/joiner_dim (and LSTM dim_feedforward) in get_params.

    ``folder`` is where the export's code runs from: the folder of the export script's real file (e.g.
    lstm_transducer_stateless3's export-for-ncnn.py is a link into lstm_transducer_stateless2, whose train.py fixes
    what stateless3 made flags).
    """
    texts = []
    for name in ("do_not_use_it_directly.py", "train.py"):
        try:
            texts.append((name, (folder / name).read_text(encoding="utf-8", errors="replace")))
        except OSError:
            pass
    out = []
    for key in detection.arch.recipe_fixed_dims:
        have = detection.extras.get(key)
        for name, text in texts:
            m = re.search(rf"[\"']{key}[\"']\s*:\s*(\d+)", text)
            if m:
                if have is not None and int(m.group(1)) != have:
                    out.append(Problem(ProblemKind.CHECKPOINT_MISMATCH,
                                       f"the checkpoint's {key} is {have}, but the recipe's get_params fixes "
                                       f"it at {m.group(1)} ({folder / name}, the code icefall's export runs); the "
                                       f"export will fail with a size mismatch: edit it to {have} there",
                                       key="files.checkpoint"))
                break
    return out


def validation_wav_problems(wavs: list[str], key: str = "validation.wavs") -> list[Problem]:
    """Validation decodes every wav in sherpa-ncnn at 16 kHz: name each file that cannot be used before anything runs.
    ``key``: what the sentences are about (the config key, or the flag that gave the wavs)."""
    from core.common.audio import wav_problem
    out = []
    for wav in wavs:
        problem = wav_problem(Path(wav), "validation")
        if problem:
            out.append(Problem(ProblemKind.BAD_INPUT, problem, key=key))
    return out
