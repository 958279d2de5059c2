"""Known failure strings in tool output, and what to tell the user about each."""
from __future__ import annotations

import os
import re
from pathlib import Path

from core.common.problems import Problem, ProblemKind

HINTS: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), h) for p, h in (
    (r"No module named 'k2'|No module named 'lhotse'|No module named 'icefall'",
     Problem(ProblemKind.PYTHON_ENV, "the export needs icefall's Python environment",
             how=": set python = \"/path/to/icefall-venv/bin/python\" in [files] of wizard.toml (or --python), and "
             "icefall_root to your icefall checkout")),
    (r"No module named '(\w+)'",
     Problem(ProblemKind.PYTHON_ENV, "the export's Python lacks a module",
             how="; run the export with the interpreter of your icefall environment (files.python / --python)")),
    (r"size mismatch for|Missing key\(s\) in state_dict|Unexpected key\(s\) in state_dict",
     Problem(ProblemKind.HYPERPARAMETERS, "the hyperparameters don't match the checkpoint: compare your flags with "
             "the ones the model was trained with (sherpa-ncnn-wizard detect CHECKPOINT reads them from the weights)")),
    (r"layer SherpaMetaData not exists or registered",
     "ncnn2table cannot create SherpaMetaData: fed a param that carries it, it writes an empty table and still "
     "prints success. The wizard never feeds it one; if your table tool runs ncnn2table, give it the param "
     "without the SherpaMetaData line (or use the built-in calibration)"),
    (r"calibration table is required for static weight quantization",
     "this ncnn2int8 is from current ncnn (since 3724d10): LSTM/GRU/RNN/Embed/MultiHeadAttention need weight-scale "
     "lines (<layer>_param_0/1) in a table; pass the table the wizard completes, or use the built-in quantizer"),
    (r"layer (\S+) not exists or registered",
     "a layer type this ncnn build does not have: the pnnx output holds an operator sherpa-ncnn's runtime lacks "
     "(run sherpa-ncnn-wizard doctor on the model directory)"),
    (r"read_proto_from_binary failed|open failed",
     "pnnx could not read the TorchScript file: it is missing, truncated or not a torch.jit trace"),
    (r"unrecognized arguments:",
     "the export script's parser does not take the flag(s) named above (see `python export-for-ncnn.py --help` in "
     "the recipe): give what this recipe takes instead (files.tokens / files.bpe_model / files.lang), drop a flag "
     "you added in [export] extra_args (--export-arg), or pass the recipe's own flags there"),
    (r"No checkpoints found|Not enough checkpoints|epoch-\d+\.pt.*(No such file|not found)",
     "the checkpoint files the export looks for are not there: check epoch/iter/avg and the exp dir"),
    (r"Unable to create a model from specified model files",
     "sherpa-ncnn found no usable SherpaMetaData in the encoder param"),
    (r"too old version of Zipformer",
     "the Zipformer metadata lacks 15=1 (model version); add it"),
    (r"^Fatal Python error: (Segmentation fault|Aborted|Floating point exception|Bus error)",
     "native code (torch or ncnn) crashed this process on the model; the Python lines above the crash say where. "
     "A model whose files disagree (shapes, metadata) does this: run sherpa-ncnn-wizard doctor on the output "
     "directory, fix what it reports, then run again with --resume; if doctor finds nothing, report the crash with "
     "this step's log"),
))


def hint_for(lines: list[str]) -> str | None:
    """The hint of the first known failure string found, scanning from the end."""
    own = icefall_import_hint(lines) or vocab_mismatch_hint(lines) or ncnn2int8_crash_hint(lines)
    if own:
        return own
    for line in reversed(lines):
        for pattern, hint in HINTS:
            if pattern.search(line):
                return hint
    return None


_NCNN2INT8_PASS = re.compile(r"^(quantize_\w+|fuse_requantize) \S+")
NCNN2INT8_CRASH_HINT = (
    "ncnn2int8 died after its quantize passes, while writing the model. The ncnn2int8 of the ncnn sherpa-ncnn "
    "2.1.15 links (Tencent/ncnn c4193aad) does that on every icefall encoder: killed by SIGFPE, because its "
    "ModelWriter writes each int8 Convolution's empty top_blob_int8_scales (and an InnerProduct's missing bias), "
    "dividing by the empty matrix's element size. Fixed upstream by ncnn 430b3124a (top scales) and cc1673491 "
    "(InnerProduct without bias): use the built-in quantizer (calibration.backend = \"builtin\", or leave "
    "tools.ncnn2int8 unset), or an ncnn2int8 built from an ncnn with both commits")


def ncnn2int8_crash_hint(lines: list[str]) -> str | None:
    """ncnn2int8's output ended on one of its pass lines: it died writing the model (nothing else prints then)."""
    said = [line.strip() for line in lines if line.strip()]
    if said and _NCNN2INT8_PASS.match(said[-1]):
        return NCNN2INT8_CRASH_HINT
    return None


_FRAME = re.compile(r'^\s*File "(.+?)", line (\d+)')
_CANNOT_IMPORT = re.compile(r"^ImportError: cannot import name '(\w+)' from '([\w.]+)'(?: \((.+)\))?")
_NO_MODULE = re.compile(r"^ModuleNotFoundError: No module named '([\w.]+)'")


def icefall_import_hint(lines: list[str]) -> str | None:
    """An ImportError raised by one icefall recipe file importing another (a bug in icefall, not in the user's files).

    Recognised when the innermost frame of the traceback is a file under an ``egs/`` recipe folder and the missing
    name lives in the recipe's own modules (``cannot import name X from M`` with M.py inside egs/, or ``No module
    named M`` where M.py is a dangling link or exists in a sibling recipe). The workaround named is the sibling
    recipe that has the same model code (the target of the failing file's link, or the recipe whose name this one
    extends), and the extra-arguments hatch.
    """
    frame = None
    for line in lines:
        m = _FRAME.match(line)
        if m:
            frame = (Path(m.group(1)), int(m.group(2)))
            continue
        cannot, missing = _CANNOT_IMPORT.match(line.strip()), _NO_MODULE.match(line.strip())
        if not (cannot or missing) or frame is None or "egs" not in frame[0].parts:
            continue
        where, lineno = frame
        recipe = where.parent
        if cannot:
            name, module, source = cannot.groups()
            if not source or "egs" not in Path(source).parts:
                continue
            what = f"{where.name} (line {lineno}) imports {name} from {module}, which this recipe's {Path(source).name} " \
                   f"does not define{_link_note(Path(source))}"
        else:
            module = missing.group(1).split(".")[0]
            if not _recipe_module(recipe, module):
                continue
            what = f"{where.name} (line {lineno}) imports {module}, which this recipe does not have{_link_note(recipe / (module + '.py'))}"
        sibling = _sibling_recipe(where)
        fix = (f"export with the sibling recipe that has the same model code, {sibling} (set files.recipe to it; its "
               "export-for-ncnn.py loads the same checkpoint)" if sibling else
               "export with the sibling recipe whose model code this one shares (set files.recipe to it)")
        return (f"this failure is icefall's own, not your files or flags: in {recipe.name}, {what}. Workaround: {fix}; "
                "or, when the recipe needs an argument the wizard does not pass, add it with [export] extra_args / "
                "--export-arg")
    return None


def _link_note(path: Path) -> str:
    try:
        if path.is_symlink():
            return f" (it is a link to {os.readlink(path)})"
    except OSError:
        pass
    return ""


def _recipe_module(recipe: Path, module: str) -> bool:
    """True when ``module`` is a recipe module: a dangling link here, or a file in a sibling recipe folder."""
    here = recipe / f"{module}.py"
    if here.is_symlink() and not here.exists():
        return True
    try:
        return any((d / f"{module}.py").is_file() for d in recipe.parent.iterdir() if d.is_dir() and d != recipe)
    except OSError:
        return False


def _sibling_recipe(failing: Path) -> str | None:
    """The recipe whose model code the failing recipe uses: the failing file's link target, else a name prefix."""
    recipe = failing.parent
    candidates = []
    try:
        if failing.is_symlink():
            candidates.append(failing.resolve().parent)
        candidates += sorted((d for d in recipe.parent.iterdir()
                              if d.is_dir() and d != recipe and recipe.name.startswith(d.name)),
                             key=lambda d: -len(d.name))
    except OSError:
        return None
    for d in candidates:
        if d != recipe.resolve() and (d / "export-for-ncnn.py").is_file():
            return str(d)
    return None


_SIZE_MISMATCH = re.compile(r"size mismatch for (decoder\.embedding\.weight|joiner\.output_linear\.weight|"
                            r"simple_(?:am|lm)_proj\.weight): copying a param with shape \D*(\d+)[^\n]*?"
                            r"current model is \D*(\d+)")


def vocab_mismatch_hint(lines: list[str]) -> str | None:
    """A size mismatch in the vocabulary rows is the tokens/bpe/lang file's fault, not the hyperparameters'."""
    for line in lines:
        m = _SIZE_MISMATCH.search(line)
        if m and m.group(2) != m.group(3):
            return (f"the vocabulary given to the export has {m.group(3)} tokens but the checkpoint was trained with "
                    f"{m.group(2)} ({m.group(1)}): give the tokens.txt / bpe.model / lang dir the model was trained "
                    "with (the model flags are not the cause)")
    return None
