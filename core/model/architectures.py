"""One declarative spec per supported architecture: the single source of truth.

Each spec lists the hyperparameters of icefall's ``export-for-ncnn.py`` with
icefall's own flag names, types and defaults, and says which ``SherpaMetaData``
key each one feeds. The export command line, the ``meta`` command, the TUI
form and checkpoint detection are all generated from these specs.

Facts and their sources: ../shared/reference/icefall-export.md (flags and
defaults) and ../shared/reference/sherpa-ncnn.md (metadata keys, I/O contract).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

Value = int | tuple[int, ...]
Values = Mapping[str, Value]

ZIPFORMER_PAD_LENGTH = 7  # icefall's export traces T = decode_chunk_len + 7
ZIPFORMER_MODEL_VERSION = 1  # sherpa-ncnn >= 2.0 exits when key 15 < 1
SUBSAMPLING = 4


# Upper bounds by part of the flag name (the longest matching part decides): 10-100x what published models use,
# so a typo or a hostile value is refused at once instead of sizing arrays, states or graphs by it.
MAXIMUMS = {"layers": 256, "dim": 16384, "hidden": 16384, "feedforward": 65536, "kernel": 1023, "nhead": 256,
            "chunk": 4096, "context-length": 4096, "left-chunks": 256, "downsampling": 64, "memory-size": 4096,
            "context-size": 16, "period": 256}
DEFAULT_MAXIMUM = 65536
MAX_LIST_LENGTH = 16  # encoder stacks
_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")


@dataclass(frozen=True)
class HyperParam:
    """One icefall flag. ``default`` is written the way icefall writes it."""

    flag: str
    kind: str  # "int" or "int_list"
    default: str
    help: str
    meta_key: int | None = None  # SherpaMetaData key it feeds (None: baked into the graph)
    in_weights: bool = False  # can a checkpoint's weights reveal it?
    meta_scale: int = 1  # the metadata stores value // meta_scale
    minimum: int = 1  # smallest value allowed (0 for e.g. --memory-size)
    training_only: bool = False  # has no effect on the exported graph

    @property
    def maximum(self) -> int:
        """Largest sane value: far above every published model, low enough that nothing sized by it runs away."""
        matches = [k for k in MAXIMUMS if k in self.flag]
        return MAXIMUMS[max(matches, key=len)] if matches else DEFAULT_MAXIMUM

    @property
    def name(self) -> str:
        """icefall's attribute name (``--num-encoder-layers`` -> ``num_encoder_layers``)."""
        return self.flag.lstrip("-").replace("-", "_")

    def parse(self, text: str) -> Value:
        """Parse icefall's syntax; raises ValueError with a sentence naming the flag (bounds included)."""
        cleaned = str(text).strip().strip("\"'").strip()
        shown = cleaned if len(cleaned) <= 40 else cleaned[:40] + "…"
        if self.kind == "int":
            if len(cleaned) > 12 or not _INT_TEXT.match(cleaned):
                raise ValueError(f"{self.flag}: {shown!r} is not a whole number (at most {self.maximum:,})")
            return self._bounded(int(cleaned))
        parts = [p.strip() for p in cleaned.split(",")]
        if len(parts) > MAX_LIST_LENGTH:
            raise ValueError(f"{self.flag}: {len(parts)} values; at most {MAX_LIST_LENGTH} (one per encoder stack)")
        if not all(len(p) <= 12 and _INT_TEXT.match(p) for p in parts):
            raise ValueError(f"{self.flag}: {shown!r} is not a comma-separated list of whole numbers "
                             f"(like {self.default!r})")
        return tuple(self._bounded(int(p)) for p in parts)

    def _bounded(self, value: int) -> int:
        if value > self.maximum:
            raise ValueError(f"{self.flag}: {value:,} is too large (at most {self.maximum:,}; published models use "
                             f"{self.default})")
        return value

    def format(self, value: Value) -> str:
        return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class Problem:
    """A validation finding that names the flag (or flags) it is about."""

    severity: str  # "error" or "warning"
    flags: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class MetaEntry:
    """One SherpaMetaData key, its integer value(s) and where the value came from."""

    key: int
    value: Value
    source: str

    @property
    def text(self) -> str:
        if isinstance(self.value, tuple):
            return f"{-23300 - self.key}={len(self.value)}," + ",".join(str(v) for v in self.value)
        return f"{self.key}={self.value}"


@dataclass(frozen=True)
class IOContract:
    """Blob names sherpa-ncnn looks up in the encoder (all must exist)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class ArchSpec:
    name: str
    title: str
    model_type: int  # SherpaMetaData key 0
    recipe: str  # icefall recipe directory
    summary: str
    hyperparams: tuple[HyperParam, ...]
    metadata: Callable[[Values], list[MetaEntry]]
    rules: Callable[[Values], list[Problem]]
    io_contract: Callable[[Values], IOContract]
    segment_offset: Callable[[Values], tuple[int, int]]  # frames fed per chunk, frames advanced
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def export_script(self) -> str:
        return f"{self.recipe}/export-for-ncnn.py"

    def param(self, flag_or_name: str) -> HyperParam:
        for hp in self.hyperparams:
            if flag_or_name in (hp.flag, hp.name, hp.flag.lstrip("-")):
                return hp
        raise KeyError(f"{self.name} has no hyperparameter {flag_or_name!r}")

    def defaults(self) -> dict[str, Value]:
        return {hp.name: hp.parse(hp.default) for hp in self.hyperparams}

    def values_from_metadata(self, meta: Mapping[int, object]) -> dict[str, Value]:
        """The hyperparameters a metadata dict states (the inverse of ``metadata``)."""
        out: dict[str, Value] = {}
        for hp in self.hyperparams:
            if hp.meta_key is None or hp.meta_key not in meta:
                continue
            raw = meta[hp.meta_key]
            items = raw if isinstance(raw, tuple) else (raw,)
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
                continue  # a float or string value states nothing (doctor reports it as such)
            if hp.kind == "int_list":
                out[hp.name] = tuple(items)
            elif not isinstance(raw, tuple):
                out[hp.name] = raw * hp.meta_scale
        return out

    def out_of_bounds(self, values: Mapping[str, Value]) -> list[str]:
        """Values beyond a hyperparameter's sane maximum, as sentences (they would size states and graphs)."""
        problems = []
        for name, value in values.items():
            hp = self.param(name)
            items = value if isinstance(value, tuple) else (value,)
            if len(items) > MAX_LIST_LENGTH or any(v > hp.maximum for v in items):
                problems.append(f"{hp.flag} = {hp.format(value)[:40]} is beyond any real model (at most "
                                f"{hp.maximum:,}" + (f" and {MAX_LIST_LENGTH} stacks" if hp.kind == "int_list" else "")
                                + ")")
        return problems

    def flags_for(self, values: Values) -> list[str]:
        """The icefall command-line flags for these values (model flags only)."""
        out: list[str] = []
        for hp in self.hyperparams:
            if hp.name in values:
                out += [hp.flag, hp.format(values[hp.name])]
        return out


# -- shared helpers -----------------------------------------------------------

def _positive(spec_params: tuple[HyperParam, ...], values: Values) -> list[Problem]:
    problems = []
    for hp in spec_params:
        v = values.get(hp.name)
        if v is None:
            continue
        items = v if isinstance(v, tuple) else (v,)
        bad = [x for x in items if x < hp.minimum]
        if bad:
            what = "positive" if hp.minimum == 1 else f"at least {hp.minimum}"
            problems.append(Problem("error", (hp.flag,), f"{hp.flag} must be {what}; got {hp.format(v)}"))
    return problems


def _context_size_warning(values: Values) -> list[Problem]:
    cs = values.get("context_size")
    if cs is not None and cs != 2:
        return [Problem("warning", ("--context-size",),
                        f"--context-size is {cs}, but sherpa-ncnn hard-codes a decoder context of 2 "
                        "(model.h: ContextSize() = 2); the model will not decode correctly")]
    return []


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _blob_names(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(n))


_CONTEXT_SIZE = HyperParam("--context-size", "int", "2", "Decoder context size: 1 means bigram, 2 trigram. "
                           "sherpa-ncnn supports only 2.", in_weights=True)

# -- streaming Zipformer v1 ------------------------------------------------------

_ZIPFORMER_STACK_FLAGS = (
    "num_encoder_layers", "feedforward_dims", "nhead", "encoder_dims", "attention_dims",
    "encoder_unmasked_dims", "zipformer_downsampling_factors", "cnn_module_kernels",
)

_ZIPFORMER_PARAMS = (
    HyperParam("--num-encoder-layers", "int_list", "2,4,3,2,4", "Layers per encoder stack, comma separated.",
               meta_key=16, in_weights=True),
    HyperParam("--feedforward-dims", "int_list", "1024,1024,2048,2048,1024", "Feed-forward width of each stack's "
               "layers, comma separated.", in_weights=True),
    HyperParam("--nhead", "int_list", "8,8,8,8,8", "Attention heads per stack, comma separated.", in_weights=True),
    HyperParam("--encoder-dims", "int_list", "384,384,384,384,384", "Model (embedding) width of each stack, "
               "comma separated.", meta_key=17, in_weights=True),
    HyperParam("--attention-dims", "int_list", "192,192,192,192,192", "Width of each stack's attention "
               "projections (separate from the model width), comma separated.", meta_key=18,
               in_weights=True),
    HyperParam("--encoder-unmasked-dims", "int_list", "256,256,256,256,256", "Dims kept by training-time "
               "feature masking; at most each stack's width. Not used by the exported graph.",
               training_only=True),
    HyperParam("--zipformer-downsampling-factors", "int_list", "1,2,4,8,2", "Frame-rate reduction of each stack, "
               "comma separated.", meta_key=19, in_weights=True),
    HyperParam("--cnn-module-kernels", "int_list", "31,31,31,31,31", "Kernel of each stack's convolution module.",
               meta_key=20, in_weights=True),
    HyperParam("--decoder-dim", "int", "512", "Width of the decoder's embedding.", in_weights=True),
    HyperParam("--joiner-dim", "int", "512", "Encoder and decoder outputs are "
               "projected to this width and added in the joiner.", in_weights=True),
    HyperParam("--short-chunk-size", "int", "50", "Upper bound of the random chunk "
               "size in dynamic-chunk training. Not used by the exported graph.",
               training_only=True),
    HyperParam("--num-left-chunks", "int", "4", "How many earlier chunks the attention "
               "may look at when streaming.", meta_key=2),
    HyperParam("--decode-chunk-len", "int", "32", "Frames (before subsampling) decoded per "
               "streaming chunk.",
               meta_key=1),
    _CONTEXT_SIZE,
)


def _zipformer_metadata(v: Values) -> list[MetaEntry]:
    return [
        MetaEntry(0, 2, "model type 2 = Zipformer (fixed)"),
        MetaEntry(1, v["decode_chunk_len"], "--decode-chunk-len"),
        MetaEntry(2, v["num_left_chunks"], "--num-left-chunks"),
        MetaEntry(3, ZIPFORMER_PAD_LENGTH, "pad length (fixed: the export traces T = decode-chunk-len + 7)"),
        MetaEntry(15, ZIPFORMER_MODEL_VERSION, "model version (fixed: sherpa-ncnn >= 2.0 exits without 15=1)"),
        MetaEntry(16, v["num_encoder_layers"], "--num-encoder-layers"),
        MetaEntry(17, v["encoder_dims"], "--encoder-dims"),
        MetaEntry(18, v["attention_dims"], "--attention-dims"),
        MetaEntry(19, v["zipformer_downsampling_factors"], "--zipformer-downsampling-factors"),
        MetaEntry(20, v["cnn_module_kernels"], "--cnn-module-kernels"),
    ]


def _zipformer_rules(v: Values) -> list[Problem]:
    problems = _positive(_ZIPFORMER_PARAMS, v)
    lengths = {name: len(v[name]) for name in _ZIPFORMER_STACK_FLAGS if name in v}
    n = len(v.get("num_encoder_layers", ()))
    differing = [name for name, ln in lengths.items() if ln != n]
    if differing:
        flags = tuple("--" + name.replace("_", "-") for name in differing)
        detail = ", ".join(f"{f} has {lengths[name]}" for f, name in zip(flags, differing))
        problems.append(Problem("error", ("--num-encoder-layers",) + flags,
                                f"every per-stack flag needs one value per stack: --num-encoder-layers has {n} "
                                f"stacks but {detail}"))
        return problems  # the per-stack rules below would index out of range
    if any(p.severity == "error" for p in problems):
        return problems
    dcl = v["decode_chunk_len"]
    ds = v["zipformer_downsampling_factors"]
    if dcl % 2:
        problems.append(Problem("error", ("--decode-chunk-len",), f"--decode-chunk-len must be even; got {dcl}"))
    elif (dcl // 2) % max(ds):
        problems.append(Problem("error", ("--decode-chunk-len", "--zipformer-downsampling-factors"),
                                f"--decode-chunk-len / 2 = {dcl // 2} must be divisible by the largest "
                                f"--zipformer-downsampling-factors value {max(ds)} (sherpa-ncnn divides the left "
                                "context by each factor)"))
    enc, unmasked, att, heads, kernels = (v["encoder_dims"], v["encoder_unmasked_dims"], v["attention_dims"],
                                          v["nhead"], v["cnn_module_kernels"])
    for i in range(n):
        s = f"stack {i}"
        if unmasked[i] > enc[i]:
            problems.append(Problem("error", ("--encoder-unmasked-dims", "--encoder-dims"),
                                    f"--encoder-unmasked-dims {unmasked[i]} is larger than --encoder-dims {enc[i]} "
                                    f"for {s}; it must be <= the encoder dim"))
        if att[i] % heads[i] or (att[i] // heads[i]) % 2:
            problems.append(Problem("error", ("--attention-dims", "--nhead"),
                                    f"--attention-dims {att[i]} must be divisible by --nhead {heads[i]} into an even "
                                    f"head dim for {s}"))
        if kernels[i] % 2 == 0:
            problems.append(Problem("error", ("--cnn-module-kernels",),
                                    f"--cnn-module-kernels must be odd; got {kernels[i]} for {s}"))
        if i > 0 and ds[i] != 1 and enc[i] != enc[i - 1]:
            problems.append(Problem("error", ("--encoder-dims",),
                                    f"--encoder-dims {enc[i]} for {s} differs from {enc[i - 1]} for stack {i - 1}; "
                                    "icefall's ncnn export supports only equal dims across downsampled stacks "
                                    "(AttentionDownsample asserts extra_proj is None)"))
    return problems + _context_size_warning(v)


def _zipformer_io(v: Values) -> IOContract:
    n = 1 + 7 * len(v["num_encoder_layers"])
    return IOContract(_blob_names("in", n), _blob_names("out", n),
                      f"1 + 7 x {len(v['num_encoder_layers'])} stacks = {n} inputs and outputs, grouped by state kind")


def _zipformer_segment(v: Values) -> tuple[int, int]:
    return v["decode_chunk_len"] + ZIPFORMER_PAD_LENGTH, v["decode_chunk_len"]


ZIPFORMER = ArchSpec(
    name="zipformer",
    title="Streaming Zipformer (v1)",
    model_type=2,
    recipe="egs/librispeech/ASR/pruned_transducer_stateless7_streaming",
    summary="The streaming Zipformer of icefall's pruned_transducer_stateless7_streaming recipe (and its aishell, "
            "commonvoice and csj copies): stacks of zipformer layers at different frame rates, decoded in chunks "
            "of --decode-chunk-len frames with --num-left-chunks of left context. The newer Zipformer2 "
            "(egs/*/ASR/zipformer) has no ncnn path in sherpa-ncnn; use sherpa-onnx for it.",
    hyperparams=_ZIPFORMER_PARAMS,
    metadata=_zipformer_metadata,
    rules=_zipformer_rules,
    io_contract=_zipformer_io,
    segment_offset=_zipformer_segment,
    aliases=("zipformer-v1", "pruned_transducer_stateless7_streaming"),
)

# -- ConvEmformer -----------------------------------------------------------------

_CONV_EMFORMER_PARAMS = (
    HyperParam("--num-encoder-layers", "int", "12", "Number of conv-emformer encoder layers.", meta_key=1,
               in_weights=True),
    HyperParam("--encoder-dim", "int", "512", "Attention dim for the Emformer.", meta_key=7, in_weights=True),
    HyperParam("--nhead", "int", "8", "Number of attention heads for the Emformer."),
    HyperParam("--dim-feedforward", "int", "2048", "Feed-forward dimension for the Emformer.", in_weights=True),
    HyperParam("--cnn-module-kernel", "int", "31", "Kernel size for the convolution module.", meta_key=3,
               in_weights=True),
    HyperParam("--left-context-length", "int", "32", "Number of frames before subsampling for left context in "
               "the Emformer.", meta_key=4, meta_scale=SUBSAMPLING,
               minimum=0),
    HyperParam("--chunk-length", "int", "32", "Number of frames before subsampling for each chunk in the "
               "Emformer.", meta_key=5),
    HyperParam("--right-context-length", "int", "8", "Number of frames before subsampling for right context in "
               "the Emformer.", meta_key=6, minimum=0),
    HyperParam("--memory-size", "int", "0", "Number of entries in the memory for the Emformer.", meta_key=2,
               minimum=0),
    _CONTEXT_SIZE,
)


def _conv_emformer_metadata(v: Values) -> list[MetaEntry]:
    return [
        MetaEntry(0, 1, "model type 1 = ConvEmformer (fixed)"),
        MetaEntry(1, v["num_encoder_layers"], "--num-encoder-layers"),
        MetaEntry(2, v["memory_size"], "--memory-size"),
        MetaEntry(3, v["cnn_module_kernel"], "--cnn-module-kernel"),
        MetaEntry(4, v["left_context_length"] // SUBSAMPLING,  # not the flag itself: see reference §1.4.1
                  "--left-context-length / 4 (the cache length after subsampling)"),
        MetaEntry(5, v["chunk_length"], "--chunk-length"),
        MetaEntry(6, v["right_context_length"], "--right-context-length"),
        MetaEntry(7, v["encoder_dim"], "--encoder-dim"),
    ]


def _conv_emformer_rules(v: Values) -> list[Problem]:
    problems = _positive(_CONV_EMFORMER_PARAMS, v)
    if any(p.severity == "error" for p in problems):
        return problems
    for name, flag in (("left_context_length", "--left-context-length"),
                       ("right_context_length", "--right-context-length")):
        if v[name] % SUBSAMPLING:
            problems.append(Problem("error", (flag,), f"{flag} must be a multiple of 4; got {v[name]}"))
    chunk = v["chunk_length"]
    if chunk % SUBSAMPLING or not _is_power_of_two(chunk // SUBSAMPLING):
        problems.append(Problem("error", ("--chunk-length",),
                                f"--chunk-length / 4 must be a power of two (icefall's emformer2.py asserts it); "
                                f"got {chunk}"))
    if v["encoder_dim"] % v["nhead"]:
        problems.append(Problem("error", ("--encoder-dim", "--nhead"),
                                f"--encoder-dim {v['encoder_dim']} must be divisible by --nhead {v['nhead']}"))
    if v["cnn_module_kernel"] % 2 == 0:
        problems.append(Problem("error", ("--cnn-module-kernel",),
                                f"--cnn-module-kernel must be odd; got {v['cnn_module_kernel']}"))
    if v["memory_size"] == 0:  # seen with icefall's real code: emformer2.py's memory-less path
        problems.append(Problem("error", ("--memory-size",),
                                "--memory-size is 0 (icefall's training default): without a memory bank icefall's "
                                "Emformer builds torch.empty(0), which pnnx cannot convert and sherpa-ncnn cannot "
                                "feed (a memory state of 0 rows). Give the value the model was trained with (the "
                                "published ConvEmformer models use 32); a model trained with 0 cannot run in "
                                "sherpa-ncnn"))
    return problems + _context_size_warning(v)


def _conv_emformer_io(v: Values) -> IOContract:
    n = 1 + 4 * v["num_encoder_layers"]
    return IOContract(_blob_names("in", n), _blob_names("out", n),
                      f"1 + 4 x {v['num_encoder_layers']} layers = {n} inputs and outputs, interleaved per layer")


def _conv_emformer_segment(v: Values) -> tuple[int, int]:
    return v["chunk_length"] + v["right_context_length"] + 11, v["chunk_length"]


CONV_EMFORMER = ArchSpec(
    name="conv-emformer",
    title="ConvEmformer",
    model_type=1,
    recipe="egs/librispeech/ASR/conv_emformer_transducer_stateless2",
    summary="The ConvEmformer of icefall's conv_emformer_transducer_stateless2 recipe: an Emformer with a "
            "convolution module and a memory bank, decoded in chunks of --chunk-length frames plus "
            "--right-context-length look-ahead, with --left-context-length frames of cached keys and values.",
    hyperparams=_CONV_EMFORMER_PARAMS,
    metadata=_conv_emformer_metadata,
    rules=_conv_emformer_rules,
    io_contract=_conv_emformer_io,
    segment_offset=_conv_emformer_segment,
    aliases=("emformer", "conv_emformer", "conv_emformer_transducer_stateless2"),
)

# -- LSTM ------------------------------------------------------------------------

_LSTM_PARAMS = (
    HyperParam("--num-encoder-layers", "int", "12", "Number of RNN encoder layers.", meta_key=1, in_weights=True),
    HyperParam("--encoder-dim", "int", "512", "Encoder output dimension.", meta_key=2, in_weights=True),
    HyperParam("--rnn-hidden-size", "int", "1024", "Hidden dim for LSTM layers.", meta_key=3, in_weights=True),
    HyperParam("--aux-layer-period", "int", "0", "Training only: combine every N-th "
               "layer's output at random (0 = off).", minimum=0,
               training_only=True),
    _CONTEXT_SIZE,
)


def _lstm_metadata(v: Values) -> list[MetaEntry]:
    return [
        MetaEntry(0, 3, "model type 3 = LSTM (fixed)"),
        MetaEntry(1, v["num_encoder_layers"], "--num-encoder-layers"),
        MetaEntry(2, v["encoder_dim"], "--encoder-dim"),
        MetaEntry(3, v["rnn_hidden_size"], "--rnn-hidden-size"),
    ]


def _lstm_rules(v: Values) -> list[Problem]:
    problems = _positive(_LSTM_PARAMS, v)
    if any(p.severity == "error" for p in problems):
        return problems
    if v["rnn_hidden_size"] < v["encoder_dim"]:
        problems.append(Problem("error", ("--rnn-hidden-size", "--encoder-dim"),
                                f"--rnn-hidden-size {v['rnn_hidden_size']} must be >= --encoder-dim "
                                f"{v['encoder_dim']} (the LSTM projects its hidden state down to the encoder dim)"))
    return problems + _context_size_warning(v)


def _lstm_io(v: Values) -> IOContract:
    return IOContract(("in0", "in1", "in2", "in3"), ("out0", "out2", "out3"),
                      "in0 features, in1 length, in2 hx, in3 cx; out0 encoder_out, out2 hx, out3 cx")


LSTM = ArchSpec(
    name="lstm",
    title="LSTM",
    model_type=3,
    recipe="egs/librispeech/ASR/lstm_transducer_stateless2",
    summary="The LSTM transducer of icefall's lstm_transducer_stateless2 recipe (lstm_transducer_stateless3 "
            "links to the same export script): stacked LSTMs with projection, fed 9 frames and advanced by 4.",
    hyperparams=_LSTM_PARAMS,
    metadata=_lstm_metadata,
    rules=_lstm_rules,
    io_contract=_lstm_io,
    segment_offset=lambda v: (9, 4),
    aliases=("lstm_transducer_stateless2", "lstm_transducer_stateless3"),
)

ARCHITECTURES: dict[str, ArchSpec] = {spec.name: spec for spec in (ZIPFORMER, CONV_EMFORMER, LSTM)}
BY_MODEL_TYPE: dict[int, ArchSpec] = {spec.model_type: spec for spec in ARCHITECTURES.values()}

# icefall export flags that are not model hyperparameters: accepted when pasted, ignored here.
EXPORT_ONLY_FLAGS = ("--epoch", "--iter", "--avg", "--exp-dir", "--tokens", "--bpe-model", "--lang-dir",
                     "--use-averaged-model", "--lang", "--lang-type")


def get_arch(name: str) -> ArchSpec:
    key = name.strip().lower()
    for spec in ARCHITECTURES.values():
        if key == spec.name or key in spec.aliases:
            return spec
    raise KeyError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}")


@dataclass
class ResolvedValues:
    """Hyperparameters after parsing: the values, where each came from, and what is wrong."""

    arch: ArchSpec
    values: dict[str, Value]
    sources: dict[str, str]  # name -> "given" | "default" | "graph" (read from the encoder graph: core.model.graph_hparams)
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def defaulted_flags(self) -> list[str]:
        return [self.arch.param(n).flag for n, s in self.sources.items() if s == "default"]


def resolve(arch: ArchSpec, given: Mapping[str, object]) -> ResolvedValues:
    """Parse given flag values (by flag or name, as text or parsed), fill icefall's defaults, validate."""
    values: dict[str, Value] = {}
    sources: dict[str, str] = {}
    problems: list[Problem] = []
    by_name = {}
    for key, raw in given.items():
        try:
            hp = arch.param(key)
        except KeyError:
            problems.append(Problem("error", (key,), f"{key} is not a {arch.title} hyperparameter"))
            continue
        by_name[hp.name] = raw
    for hp in arch.hyperparams:
        if hp.name in by_name and by_name[hp.name] is not None:
            raw = by_name[hp.name]
            try:
                if isinstance(raw, (list, tuple)):
                    values[hp.name] = hp.parse(",".join(map(str, raw)))
                else:
                    values[hp.name] = hp.parse(str(raw))
            except ValueError as exc:
                problems.append(Problem("error", (hp.flag,), str(exc)))
                continue
            if hp.kind == "int" and isinstance(values[hp.name], tuple):
                problems.append(Problem("error", (hp.flag,), f"{hp.flag} takes one whole number"))
            sources[hp.name] = "given"
        else:
            values[hp.name] = hp.parse(hp.default)
            sources[hp.name] = "default"
    if not problems:
        problems = arch.rules(values)
    return ResolvedValues(arch, values, sources, problems)
