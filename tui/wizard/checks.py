"""File checks that can take time (reading a checkpoint, loading a bpe.model, a pnnx directory): the Files
screens run them in a thread worker and cache each result by the file's path, size and mtime, so typing stays
instant and a file fixed on disk (fix and resume) is checked again."""
from __future__ import annotations

import os
from pathlib import Path

from core.common.problems import Problem, ProblemKind, kind_of

from tui.wizard import logic
from tui.wizard.logic import FieldCheck


def signature(value: str) -> tuple:
    """What a check result depends on: the text, and the file's size and mtime when it exists."""
    try:
        st = os.stat(Path(value.strip()).expanduser()) if value.strip() else None
    except OSError:
        st = None
    return (value, st.st_size, st.st_mtime_ns) if st is not None else (value,)


def check_checkpoint(value: str) -> FieldCheck:
    """Exists, and reads as a torch checkpoint with the safe loader (no code runs); torch loads lazily here."""
    check = logic.check_file(value, "the checkpoint (pretrained.pt / epoch-N.pt)")
    if not check.ok:
        return check
    from core.model.checkpoint import (
        CheckpointError,
        UnsafeCheckpointError,
        load_checkpoint,
    )
    try:
        load_checkpoint(Path(value.strip()).expanduser())
    except UnsafeCheckpointError as exc:
        needs = ", ".join(exc.types) or "types outside the allowlist"
        return FieldCheck(True, f"{check.message}; it needs {needs} to load: Review asks whether you trust it")
    except CheckpointError as exc:
        return FieldCheck(False, f"{exc}; give icefall's exp/epoch-N.pt or exp/pretrained.pt")
    return FieldCheck(True, f"{check.message}, a torch checkpoint (read safely)")


def check_tokens(value: str) -> FieldCheck:
    """tokens.txt exists; a bpe.model also loads in sentencepiece (a junk file would only fail in the run)."""
    check = logic.check_tokens(value)
    if not check.ok or not value.strip().endswith(".model"):
        return check
    try:
        import sentencepiece
    except ImportError:
        return FieldCheck(True, f"{check.message} (sentencepiece is not installed: not opened)")
    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(Path(value.strip()).expanduser()))
        size = sp.get_piece_size()
    except Exception as exc:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError with its own text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return FieldCheck(False, f"{value.strip()} is not a sentencepiece model ({first}); give the recipe's "
                                 "data/lang_bpe_500/bpe.model or tokens.txt")
    return FieldCheck(True, f"{check.message} ({size} pieces)")


SLOW_CHECKS = {"checkpoint": check_checkpoint, "tokens": check_tokens}


def file_checks() -> tuple:
    """(key, label, check) of the Files screen: logic.FILE_FIELDS with the deeper checks above."""
    return tuple((key, label, SLOW_CHECKS.get(key, check)) for key, label, check in logic.FILE_FIELDS)


def _wizard_how(kind: ProblemKind) -> str | None:
    """The wizard's way out for a kind of plan problem (its buttons and fields, not the CLI's flags), or None."""
    if kind is ProblemKind.CHECKPOINT_MISMATCH:
        return " (fix it on Hyperparameters, or press \"Run anyway\" below)"
    if kind is ProblemKind.NEEDS_TRACED:
        from core.pipeline.layout import pt_name
        from core.pnnx.graph import CONVERT_HINT
        return (f"; give the traced modules (the \"traced modules\" field on Files, with {pt_name('encoder')}) and the "
                f"wizard converts it again, or {CONVERT_HINT}")
    if kind is ProblemKind.PYTHON_ENV:
        return ": give the Python of your icefall environment (and the icefall checkout) on Files"
    return None


def in_wizard_words(problem: str) -> str:
    """A plan problem with the CLI/TOML way out replaced by what the wizard offers (chosen by the problem's kind)."""
    how = _wizard_how(kind_of(problem)) if isinstance(problem, Problem) and problem.how else None
    return problem if how is None else problem.with_how(how)


def offers_run_anyway(problems: list[str]) -> bool:
    """Review's "Run anyway" button: some problem is a checkpoint mismatch the user may override."""
    return any(kind_of(p) is ProblemKind.CHECKPOINT_MISMATCH for p in problems)


def header_change(config, out_dir: Path) -> str:
    """Review's header line: the numbers of OUT's last pnnx output only when OUT's wizard.toml was this same
    model (checkpoint, architecture, hyperparameters); an earlier run of another model there says nothing."""
    if config.files.from_ncnn:
        return logic.header_change(out_dir, config.files.from_ncnn, config.arch)
    from core.pipeline.config import ConfigError, load_config
    saved = Path(out_dir) / "wizard.toml"
    try:
        earlier = load_config(str(saved)) if saved.is_file() else None
    except (ConfigError, OSError):
        earlier = None
    same = earlier is not None and not earlier.files.from_ncnn and earlier.arch == config.arch \
        and earlier.files.checkpoint == config.files.checkpoint \
        and earlier.hyperparameter_flags() == config.hyperparameter_flags()
    return logic.header_change(Path(out_dir) if same else Path(out_dir) / "(another model)")


def misconverted_without_trace(source: str, traced_dir: str = "") -> str:
    """Why the ncnn-files path cannot go on ("" when it can): pnnx mis-converted the encoder (its own graph
    shows the shape bug) and there is no traced encoder beside the files to convert it again."""
    from core.pipeline.from_ncnn import TRACED_SUBDIRS, locate_source
    from core.pipeline.layout import pt_name
    from core.pnnx.graph import shape_mismatches
    src = Path(source).expanduser().resolve()
    files = locate_source(src)
    bad = shape_mismatches(files.pnnx_graph) if files.pnnx_graph else []
    given = Path(traced_dir).expanduser() if traced_dir.strip() else None
    if not bad or files.traced_dir is not None or (given is not None and (given / pt_name("encoder")).is_file()):
        return ""
    where = ", ".join(str(src / d) if d else str(src) for d in TRACED_SUBDIRS)
    return (f"pnnx mis-converted this encoder ({bad[0]}); put the traced {pt_name('encoder')} (icefall's "
            f"export-for-ncnn.py output) in one of {where}, or give its folder under 'traced modules', and the "
            "wizard converts it again")
