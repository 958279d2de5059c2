"""Know the model before the user types: read an icefall checkpoint safely and detect its architecture and
hyperparameters from the state-dict keys and shapes.

Rules and sources: ../shared/reference/icefall-export.md §1.5 (Zipformer v1), §2.4 (ConvEmformer), §3.5
(LSTM), §5 (checkpoint formats) and §7 (which keys identify which recipe).

Loading is safe by default: ``torch.load(weights_only=True, mmap=True)`` with a small allowlist of plain
types icefall's epoch-N.pt files need (``pathlib`` paths). A file that needs anything else is refused with
the type named; ``trust=True`` loads it with the full unpickler (which can run code). torch is imported
inside the functions, so importing this module stays cheap.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from core.model.architectures import ARCHITECTURES, ArchSpec, Value, get_arch
from core.model.state_dict import CheckpointError, decoder_joiner_values, fixed_dim_notes

WEIGHTS = "weights"
TRAINING = "training params"
DEFAULT = "default"

# top-level keys of icefall's epoch-N.pt / checkpoint-N.pt that are not hyperparameters (checkpoint.py:79-93)
_NON_PARAM_KEYS = {"model", "model_avg", "optimizer", "scheduler", "grad_scaler", "sampler"}

ZIPFORMER2_HINT = ("this is a Zipformer2 checkpoint (icefall's egs/*/ASR/zipformer recipe): it has no ncnn export "
                   "in icefall and sherpa-ncnn cannot run it; export it with the recipe's export-onnx-streaming.py "
                   "and use sherpa-onnx (https://k2-fsa.github.io/sherpa/onnx/)")


class UnsafeCheckpointError(CheckpointError):
    """Loading needs types outside the allowlist (``types`` names them); pass trust=True to load anyway."""

    def __init__(self, message: str, types: list[str]):
        super().__init__(message)
        self.types = types


class UnsupportedArchitectureError(CheckpointError):
    """A known architecture without an ncnn path (Zipformer2), or no known architecture at all."""


def _safe_types() -> list:
    import pathlib
    return [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath,
            pathlib.Path]


@dataclass
class LoadedCheckpoint:
    path: Path
    state_dict: dict[str, Any]  # name -> tensor, ``module.`` stripped
    params: dict[str, Any]  # top-level training hyperparameters (epoch-N.pt / checkpoint-N.pt)
    kind: str  # "pretrained" (just {"model": ...}), "training" (with params), "state_dict" (bare)
    trusted: bool = False
    top_keys: tuple[str, ...] = ()  # the file's top-level keys (model, model_avg, optimizer, ...)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry their code and constants; torch.save checkpoints only data.pkl and tensors."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith(("/constants.pkl", "/code/")) or "/code/" in n for n in zf.namelist()[:2000])
    except (zipfile.BadZipFile, OSError):
        return False


def load_checkpoint(path: str | Path, *, trust: bool = False) -> LoadedCheckpoint:
    """Load a checkpoint without running code (unless ``trust``); raises CheckpointError with a sentence."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found" if not path.exists() else f"{path}: not a file")
    import pickle

    import torch

    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not is_zip:
        if head.startswith(b"PK\x03\x04"):
            raise CheckpointError(f"{path}: a zip-format torch file that is truncated or damaged (its end is missing); "
                                  "copy or download it again")
        if not head.startswith(b"\x80") or head[2:3] != b"\x8a":  # legacy torch.save: protocol-2 magic number
            what = "a plain pickle, not torch.save's format" if head.startswith(b"\x80") else \
                f"neither a zip-format nor a legacy torch.save file; it starts with {head!r}"
            raise CheckpointError(f"{path}: not a torch checkpoint ({what})")
    elif _is_torchscript(path):
        raise CheckpointError(f"{path}: a TorchScript archive (a traced or scripted module such as "
                              "encoder_jit_trace-pnnx.pt), not a checkpoint with weights; give the training "
                              "checkpoint (exp/epoch-N.pt) or icefall's exp/pretrained.pt")
    try:
        if trust:
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=is_zip)
        else:
            with torch.serialization.safe_globals(_safe_types()):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            types = _unsafe_types(path, text)
            names = ", ".join(types) or f"something outside the allowlist ({_reason(text)})"
            raise UnsafeCheckpointError(
                f"{path}: refused: loading it needs {names}, which is not a plain tensor, number, string or path; "
                "unpickling it could run arbitrary code. If you trust where the file comes from, load it with "
                "--trust (detect) / trust=True", types) from None
        raise CheckpointError(f"{path}: not a torch checkpoint ({_first_line(text)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a torch checkpoint ({_first_line(str(exc))})") from None
    return _unwrap(path, obj, trust)


def _reason(text: str) -> str:
    """The line of torch's weights_only error that says what was refused."""
    for line in text.splitlines():
        if "Unsupported" in line or "GLOBAL" in line:
            return line.strip()[:200]
    return _first_line(text)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["unreadable"])[0][:200]


def _unsafe_types(path: Path, message: str) -> list[str]:
    found: list[str] = []
    try:
        import torch
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        allowed = {f"{t.__module__}.{t.__qualname__}" for t in _safe_types()}
        found = [t for t in found if t not in allowed]
    except Exception:  # noqa: BLE001 - best effort: fall back to the message
        found = []
    if not found:
        found = re.findall(r"GLOBAL ([\w.]+)", message) or re.findall(r"global ([\w.]+)", message)
    return sorted(set(found))


def _is_tensor(v) -> bool:
    return type(v).__name__ in ("Tensor", "Parameter") or hasattr(v, "shape") and hasattr(v, "dtype")


def _unwrap(path: Path, obj, trusted: bool) -> LoadedCheckpoint:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not an icefall checkpoint (a {type(obj).__name__}, not a dict); a "
                              "torch.jit model (cpu_jit.pt) cannot be exported to ncnn, use pretrained.pt")
    params: dict[str, Any] = {}
    if isinstance(obj.get("model"), Mapping):
        sd = obj["model"]
        params = {k: v for k, v in obj.items() if k not in _NON_PARAM_KEYS and not _is_tensor(v)}
        kind = "training" if params else "pretrained"
    elif isinstance(obj.get("state_dict"), Mapping):
        sd, kind = obj["state_dict"], "pretrained"
    elif obj and all(_is_tensor(v) for v in obj.values()):
        sd, kind = obj, "state_dict"
    else:
        raise CheckpointError(f"{path}: no model weights found (top-level keys: "
                              f"{', '.join(map(str, list(obj)[:8]))}); expected {{'model': state_dict}}")
    state = {}
    for k, v in sd.items():
        if not _is_tensor(v):
            continue
        state[k[len("module."):] if k.startswith("module.") else k] = v
    return LoadedCheckpoint(path, state, params, kind, trusted, tuple(map(str, obj)))


# -- architecture ---------------------------------------------------------------------------------------

def detect_arch(state: Mapping[str, Any]) -> ArchSpec:
    keys = list(state)
    if any(".self_attn_weights." in k or ".nonlin_attention." in k for k in keys):
        raise UnsupportedArchitectureError(ZIPFORMER2_HINT)
    for spec in ARCHITECTURES.values():
        if spec.owns_weights(state):
            return spec
    sample = ", ".join(keys[:4]) or "none"
    raise UnsupportedArchitectureError(
        f"not a streaming Zipformer v1, ConvEmformer or LSTM transducer (no key matches; first keys: {sample}). "
        "sherpa-ncnn runs only icefall's pruned_transducer_stateless7_streaming, "
        "conv_emformer_transducer_stateless2 and lstm_transducer_stateless2/3 models")


# -- detection --------------------------------------------------------------------------------------------

@dataclass
class DetectedValue:
    name: str
    flag: str
    value: Value
    source: str  # WEIGHTS, TRAINING or DEFAULT
    in_weights: bool  # can the weights reveal it (architecture spec)
    weights_value: Value | None = None
    training_value: Value | None = None
    note: str = ""

    @property
    def text(self) -> str:
        return ",".join(map(str, self.value)) if isinstance(self.value, tuple) else str(self.value)

    @property
    def revealed(self) -> bool:
        """True when the checkpoint states this value (weights or training params), not a default."""
        return self.source != DEFAULT


@dataclass
class Detection:
    path: str
    arch: ArchSpec
    kind: str
    values: dict[str, DetectedValue]  # hyperparameter name -> value, in the spec's order
    extras: dict[str, Value]  # vocab size, decoder/joiner dims of recipes without such flags, ...
    disagreements: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # recipe_dim_notes included (shown with the others)
    trusted: bool = False
    recipe_dim_notes: list[str] = field(default_factory=list)  # dims the recipe's get_params fixes differ

    @property
    def vocab_size(self) -> int | None:
        v = self.extras.get("vocab_size")
        return int(v) if v is not None else None


    def flags(self, *, include_training_only: bool = False) -> list[str]:
        vals = {n: d.value for n, d in self.values.items()
                if include_training_only or not self.arch.param(n).training_only or n == "encoder_unmasked_dims"}
        return self.arch.flags_for(vals)

    def flags_text(self) -> str:
        out = []
        flags = self.flags()
        for flag, value in zip(flags[::2], flags[1::2]):
            out.append(f'{flag} "{value}"' if "," in value else f"{flag} {value}")
        return " ".join(out)

    def to_dict(self) -> dict:
        return {
            "path": self.path, "arch": self.arch.name, "title": self.arch.title, "kind": self.kind,
            "values": {d.flag: {"value": d.text, "source": d.source, "in_weights": d.in_weights,
                                **({"note": d.note} if d.note else {})} for d in self.values.values()},
            "extras": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.extras.items()},
            "flags": self.flags(), "disagreements": self.disagreements, "warnings": self.warnings,
            "trusted": self.trusted,
        }

    def to_toml(self) -> str:
        lines = [f"# detected from {self.path}", f'arch = "{self.arch.name}"', "", "[hyperparameters]"]
        for d in self.values.values():
            if self.arch.param(d.name).training_only and d.name != "encoder_unmasked_dims":
                continue
            value = f'"{d.text}"' if isinstance(d.value, tuple) else d.text
            lines.append(f"{d.flag.lstrip('-')} = {value}  # {d.source}" + (f"; {d.note}" if d.note else ""))
        return "\n".join(lines) + "\n"


def _parse_param(hp, raw) -> Value | None:
    try:
        if isinstance(raw, (list, tuple)):
            return hp.parse(",".join(map(str, raw)))
        if isinstance(raw, bool):
            return None
        value = hp.parse(str(raw))
    except ValueError:
        return None
    if hp.kind == "int" and isinstance(value, tuple):
        return None
    return value


def _fmt(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def detect(source: str | Path | LoadedCheckpoint, *, trust: bool = False) -> Detection:
    """Detect the architecture and hyperparameters of a checkpoint file (or an already loaded one)."""
    ckpt = source if isinstance(source, LoadedCheckpoint) else load_checkpoint(source, trust=trust)
    return detect_from_state(ckpt.state_dict, ckpt.params, path=str(ckpt.path), kind=ckpt.kind,
                             trusted=ckpt.trusted)


def detect_from_state(state: Mapping[str, Any], params: Mapping[str, Any] | None = None, *, path: str = "",
                      kind: str = "pretrained", trusted: bool = False) -> Detection:
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    params = dict(params or {})
    spec = detect_arch(state)
    from_weights = spec.values_from_weights(state)
    common = decoder_joiner_values(state)
    values: dict[str, DetectedValue] = {}
    disagreements: list[str] = []
    warnings: list[str] = []
    n_stacks = len(v) if isinstance(v := from_weights.get("num_encoder_layers"), tuple) else 0
    for hp in spec.hyperparams:
        w = from_weights.get(hp.name)
        t = _parse_param(hp, params[hp.name]) if hp.name in params else None
        note = ""
        if t is not None:
            value, src = t, TRAINING
            if w is not None and w != t:
                disagreements.append(f"{hp.flag}: the training params say {_fmt(t)}, the weights have {_fmt(w)} "
                                     "(the export loads the weights, so it will fail or be wrong with the training "
                                     "value)")
        elif w is not None:
            value, src = w, WEIGHTS
        else:
            value, src = hp.parse(hp.default), DEFAULT
            if hp.name == "encoder_unmasked_dims" and n_stacks:
                dims = from_weights["encoder_dims"]
                value = tuple(min(256, d) for d in dims)
                note = "not in the weights; icefall's 256 capped at each encoder dim"
            elif isinstance(value, tuple) and n_stacks and len(value) != n_stacks:
                value = tuple([value[0]] * n_stacks)
                note = f"not in the weights; icefall's default {value[0]} for each of {n_stacks} stacks"
            else:
                note = "not in the weights; icefall's default"
        values[hp.name] = DetectedValue(hp.name, hp.flag, value, src, hp.in_weights, w, t, note)
    extras: dict[str, Value] = {}
    for key in ("vocab_size", "decoder_dim", "joiner_dim", "encoder_out_dim", "joiner_out"):
        if key in common and key not in values:
            extras[key] = common[key]
    if "vocab_size" in common:
        extras["vocab_size"] = common["vocab_size"]
    warnings += spec.detection_notes(state, params, extras)
    recipe_dims = fixed_dim_notes(spec.recipe, extras) if spec.recipe_fixed_dims else []
    warnings += recipe_dims
    if "blank_id" in params and params["blank_id"] not in (0, "0"):
        warnings.append(f"the training params say blank_id {params['blank_id']}; sherpa-ncnn hard-codes blank = 0")
    if "vocab_size" in params and "vocab_size" in common:
        try:
            if int(params["vocab_size"]) != common["vocab_size"]:
                disagreements.append(f"vocab size: the training params say {params['vocab_size']}, the weights "
                                     f"have {common['vocab_size']}")
        except (TypeError, ValueError):
            pass
    return Detection(path, spec, kind, values, {k: v for k, v in extras.items() if v is not None},
                     disagreements, warnings, trusted, recipe_dims)


# -- comparing against a configuration ----------------------------------------------------------------------

@dataclass(frozen=True)
class Mismatch:
    flag: str
    given: Value | None
    checkpoint: Value
    message: str
    severity: str = "error"  # "error" for weight-revealed values; "warning" for training-param-only ones

    def __str__(self) -> str:
        return self.message


def check_against(config_or_values, detection: Detection) -> list[Mismatch]:
    """Every difference between a configuration and the checkpoint, named by flag with the checkpoint's value.

    ``config_or_values`` is a WizardConfig, a ResolvedValues, or a mapping of flag/name -> value (text or
    parsed). Values the checkpoint does not reveal (defaults) are never mismatches; values only the training
    params state (e.g. --decode-chunk-len, --memory-size) give warnings.
    """
    from core.model.architectures import ResolvedValues, resolve
    arch_name = None
    if isinstance(config_or_values, ResolvedValues):
        arch_name, values, sources = config_or_values.arch.name, config_or_values.values, config_or_values.sources
    elif hasattr(config_or_values, "hyperparameter_flags"):
        arch_name = get_arch(config_or_values.arch).name
        if arch_name != detection.arch.name:
            values, sources = {}, {}
        else:
            r = resolve(detection.arch, config_or_values.hyperparameter_flags())
            values, sources = r.values, r.sources
    else:
        values, sources = {}, {}
        for key, raw in dict(config_or_values).items():
            try:
                hp = detection.arch.param(str(key))
            except KeyError:
                continue
            parsed = _parse_param(hp, raw)
            if parsed is not None:
                values[hp.name], sources[hp.name] = parsed, "given"
    if arch_name is not None and arch_name != detection.arch.name:
        return [Mismatch("arch", None, detection.arch.name,
                         f"arch says {arch_name}, the checkpoint is a {detection.arch.title} ({detection.arch.name})")]
    out: list[Mismatch] = []
    for name, d in detection.values.items():
        if not d.revealed or name not in values:
            continue
        hp = detection.arch.param(name)
        if hp.training_only:
            continue
        given, have = values[name], d.value
        if given == have:
            continue
        severity = "error" if d.in_weights else "warning"
        how = " (icefall's default; not set)" if sources.get(name) == "default" else ""
        if isinstance(given, tuple) and isinstance(have, tuple) and len(given) == len(have):
            for i, (g, h) in enumerate(zip(given, have)):
                if g != h:
                    out.append(Mismatch(hp.flag, g, h, f"{hp.flag} says {g} for stack {i}{how}, the checkpoint has "
                                                       f"{h}", severity))
        elif isinstance(given, tuple) and isinstance(have, tuple):
            out.append(Mismatch(hp.flag, given, have, f"{hp.flag} says {_fmt(given)} ({len(given)} stacks){how}, "
                                                      f"the checkpoint has {_fmt(have)} ({len(have)} stacks)",
                                severity))
        else:
            src = "" if d.in_weights else f" (from its {d.source})"
            out.append(Mismatch(hp.flag, given, have, f"{hp.flag} says {_fmt(given)}{how}, the checkpoint has "
                                                      f"{_fmt(have)}{src}", severity))
    return out


# -- tokens.txt ---------------------------------------------------------------------------------------------

def check_tokens(tokens_path: str | Path, detection: Detection) -> list[str]:
    """tokens.txt against the checkpoint: the number of tokens must equal the vocab size, blank must be id 0."""
    from core.model.tokens import read_tokens
    table = read_tokens(tokens_path)
    problems = [str(p) for p in table.problems if p.severity == "error"]
    if not table.symbols:
        return problems or [f"{tokens_path}: no tokens"]
    vocab = detection.vocab_size
    # icefall's num_tokens ignores disambiguation symbols (#0, #1, ...)
    n = sum(1 for s in table.symbols.values() if not re.fullmatch(r"#\d+", s))
    if vocab is not None and n != vocab:
        problems.append(f"{tokens_path} has {n} tokens, but the checkpoint's vocab size is {vocab} "
                        "(decoder.embedding.weight); this tokens.txt belongs to another model")
    if 0 in table.symbols and table.symbols[0] != "<blk>" and not any("id 0" in p for p in problems):
        problems.append(f"{tokens_path}: id 0 is {table.symbols[0]!r}, not <blk>; sherpa-ncnn uses id 0 as blank")
    return problems


