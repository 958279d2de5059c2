"""The run configuration: one dataclass tree, saved and loaded as TOML (wizard.toml).

Shared by the TUI and the CLI. Unknown keys and wrong types are errors that
name the key (``files.epoch must be a whole number``); relative paths in a
TOML file are relative to that file.
"""
from __future__ import annotations

import difflib
import sys
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from core.model.architectures import ARCHITECTURES, get_arch


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and key."""


@dataclass
class FilesConfig:
    recipe: str = ""  # icefall recipe directory or its export-for-ncnn.py
    icefall_root: str = ""  # default: the directory above egs/
    checkpoint: str = ""  # a pretrained.pt / epoch-N.pt file (linked as epoch-99.pt)
    exp_dir: str = ""  # or: an exp dir with epoch-N.pt / checkpoint-N.pt files ...
    epoch: int = 99  # ... and icefall's selection flags
    iter: int = 0
    avg: int = 1
    use_averaged_model: bool = False
    tokens: str = ""  # tokens.txt, or:
    bpe_model: str = ""  # bpe.model (tokens.txt is made from it)
    python: str = ""  # the interpreter that runs the export (default: this one)
    ignore_checkpoint_mismatch: bool = False  # run even if the hyperparameters differ from the checkpoint's
    # let icefall's export unpickle a checkpoint the safe loader refused (it can run code): only for trusted files
    trust_checkpoint: bool = False
    lang: str = ""  # for recipes whose export takes --lang DIR (icefall's CSJ): the lang directory ...
    lang_type: str = ""  # ... and its --lang-type ("char" or "bpe"; default: DIR/lang_type)
    from_ncnn: str = ""  # instead of all the above: a directory of existing pnnx output (only read)
    traced_dir: str = ""  # with from_ncnn: where icefall's traced *_jit_trace-pnnx.pt are, when not beside the files


@dataclass
class ExportConfig:
    extra_args: list[str] = field(default_factory=list)  # appended to icefall's export command as they are


LANG_TYPES = ("", "char", "bpe")


@dataclass
class ToolsConfig:
    pnnx: str = ""  # default: the pnnx wheel's binary
    generate_int8_scale_table: str = ""  # sherpa-ncnn's table tool (default: looked up on PATH)
    ncnn2int8: str = ""  # ncnn's quantizer (default: looked up on PATH)


@dataclass
class OutputConfig:
    dir: str = "sherpa-ncnn-model"
    int8: bool = False


@dataclass
class CalibrationConfig:
    wavs: list[str] = field(default_factory=list)
    # who makes the scale tables and the int8 files: "builtin" (always there), "external" (sherpa-ncnn's
    # generate-int8-scale-table and/or ncnn2int8, each where found; the built-in one for the other) or "auto"
    # (external where found, otherwise built in)
    backend: str = "builtin"
    resample: bool = False  # resample wavs that are not 16 kHz (soxr) instead of refusing them
    # activation histograms: "one-pass" (one run, a range that doubles, re-binned to [0, absmax]) or "two-pass"
    # (ncnn's and sherpa-ncnn's: absmax first, then exactly 2048 bins over [0, absmax]; twice the forward passes)
    histogram: str = "one-pass"
    # mixed precision: keep the most int8-sensitive layers float until the encoder's and the joiner's output cosine
    # (int8 vs fp32 on the calibration audio) reaches this; None: everything that can be int8 is
    min_cosine: float | None = None
    # per-layer int8 sensitivity (the built-in quantizer): "on", "off" or "auto" (measured when min_cosine is set or
    # the float encoder + joiner weights are small enough to take seconds, SENSITIVITY_AUTO_BYTES; a published-size
    # model would take a minute or more and GBs)
    sensitivity: str = "auto"


INT8_BACKENDS = ("builtin", "external", "auto")
SENSITIVITY_MODES = ("auto", "on", "off")
HISTOGRAM_MODES = ("one-pass", "two-pass")  # core.int8.calibrate.HISTOGRAM_MODES (config stays free of numpy)


@dataclass
class ValidationConfig:
    wavs: list[str] = field(default_factory=list)
    transcripts: dict[str, str] = field(default_factory=dict)  # wav path -> reference text
    numeric: bool = True
    decode: bool = True
    dataset: str = ""  # LibriSpeech dir, Kaldi dir (wav.scp + text) or a list file: WER of fp16 and int8
    max_wer_increase: float | None = None  # fail the run when int8's WER is more than this many points above fp16's


@dataclass
class WizardConfig:
    arch: str = "zipformer"
    hyperparameters: dict[str, str] = field(default_factory=dict)  # icefall flag (no dashes) -> value
    files: FilesConfig = field(default_factory=FilesConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    demo: str = ""  # set when the config describes a bundled demo

    @property
    def python(self) -> str:
        return self.files.python or sys.executable

    def hyperparameter_flags(self) -> dict[str, str]:
        """The hyperparameters keyed by icefall flag (``--num-encoder-layers``)."""
        return {("--" + k.replace("_", "-")).replace("---", "--"): str(v) for k, v in self.hyperparameters.items()}

    def to_dict(self) -> dict:
        return _drop_empty(asdict(self))

    def to_toml(self) -> str:
        import tomli_w
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        from core.common.atomic import atomic_write_bytes
        atomic_write_bytes(Path(path), self.to_toml().encode())


def load_config(path: str | Path) -> WizardConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = config_from_dict(data, source=str(path))
    _resolve_paths(config, path.parent)
    return config


def config_from_dict(data: dict, source: str = "config") -> WizardConfig:
    config = _build(WizardConfig, data, source, "")
    try:
        spec = get_arch(config.arch)
    except KeyError:
        raise ConfigError(f"{source}: arch = {config.arch!r} is not one of {', '.join(ARCHITECTURES)}") from None
    config.arch = spec.name
    if config.calibration.backend not in INT8_BACKENDS:
        raise ConfigError(f"{source}: calibration.backend = {config.calibration.backend!r} is not one of "
                          f"{', '.join(INT8_BACKENDS)}")
    if config.calibration.histogram not in HISTOGRAM_MODES:
        raise ConfigError(f"{source}: calibration.histogram = {config.calibration.histogram!r} is not one of "
                          f"{', '.join(HISTOGRAM_MODES)}")
    if config.calibration.sensitivity not in SENSITIVITY_MODES:
        raise ConfigError(f"{source}: calibration.sensitivity = {config.calibration.sensitivity!r} is not one of "
                          f"{', '.join(SENSITIVITY_MODES)}")
    problem = min_cosine_problem(config.calibration.min_cosine, "calibration.min_cosine")
    if problem:
        raise ConfigError(f"{source}: {problem}")
    if config.files.lang_type not in LANG_TYPES:
        raise ConfigError(f"{source}: files.lang_type = {config.files.lang_type!r} is not one of 'char', 'bpe' "
                          "(or leave it out to read DIR/lang_type)")
    known = {hp.name for hp in spec.hyperparams} | {hp.flag.lstrip("-") for hp in spec.hyperparams}
    for key, value in config.hyperparameters.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: hyperparameters.{key} is not a {spec.title} hyperparameter{hint}")
        if not isinstance(value, (str, int)) and not (isinstance(value, list) and all(isinstance(v, int) for v in value)):
            raise ConfigError(f"{source}: hyperparameters.{key} must be a number, a list of numbers or a string "
                              f"like \"2,4,3,2,4\"")
        if isinstance(value, list):
            config.hyperparameters[key] = ",".join(map(str, value))
        else:
            config.hyperparameters[key] = str(value)
    return config


def min_cosine_problem(value: float | None, key: str) -> str | None:
    """A sentence naming ``key`` when ``value`` cannot be a cosine target (None: no target, always fine)."""
    if value is None or 0.0 < value <= 1.0:
        return None
    return f"{key} = {value!r} must be a cosine above 0 and at most 1 (e.g. 0.99), or left out"


def _build(cls, data, source: str, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(sorted(names))}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
        kwargs[key] = _convert(hints[key], value, source, prefix + key)
    return cls(**kwargs)


def _convert(tp, value, source: str, key: str):
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return _build(tp, value, source, key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be a whole number, got {value!r}")
        return value
    if tp == (float | None) or tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {key} must be a list of strings")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a table")
        return dict(value)
    return value  # pragma: no cover - every field type is handled above


def _resolve_paths(config: WizardConfig, base: Path) -> None:
    f = config.files
    for name in ("recipe", "icefall_root", "checkpoint", "exp_dir", "tokens", "bpe_model", "from_ncnn", "lang",
                 "traced_dir"):
        value = getattr(f, name)
        if value and not Path(value).is_absolute():
            setattr(f, name, str((base / value).resolve()))
    if f.python and ("/" in f.python) and not Path(f.python).is_absolute():
        f.python = str((base / f.python).resolve())
    for tool in ("pnnx", "generate_int8_scale_table", "ncnn2int8"):
        value = getattr(config.tools, tool)
        if value and "/" in value and not Path(value).is_absolute():
            setattr(config.tools, tool, str((base / value).resolve()))
    if config.output.dir and not Path(config.output.dir).is_absolute():
        config.output.dir = str((base / config.output.dir).resolve())
    config.calibration.wavs = [str((base / w).resolve()) if not Path(w).is_absolute() else w
                               for w in config.calibration.wavs]
    config.validation.wavs = [str((base / w).resolve()) if not Path(w).is_absolute() else w
                              for w in config.validation.wavs]
    if config.validation.dataset and not Path(config.validation.dataset).is_absolute():
        config.validation.dataset = str((base / config.validation.dataset).resolve())


def _drop_empty(d):
    if isinstance(d, dict):
        return {k: _drop_empty(v) for k, v in d.items() if v not in ("", [], {}, None)}
    return d
