"""The metadata values an exported encoder's own graph reveals, and refusing flags that contradict them.

sherpa-ncnn trusts the SherpaMetaData line blindly: icefall's defaults written into a model whose
graph has other sizes load fine and decode garbage. The graph knows better: pnnx's own graph and the
traced ``.pt`` (core.model.graph_readers) and the ncnn files themselves (core.model.ncnn_hparams) each show some or
all of the metadata values.

``read_graph`` collects what each file shows (``GraphReading``; files that disagree are a problem);
``reconcile`` merges it with the given flags: graph values win and are marked ``graph``, a given flag
that differs is refused, a metadata value nobody can confirm is refused with how to supply it;
``graph_mismatches`` is the metadata step's last check on any path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from core.model.architectures import ArchSpec, Problem, ResolvedValues, Value, get_arch
from core.model.graph_readers import read_pnnx_graph, read_traced_graph

GRAPH = "graph"
SUPPLY_HINT = ("put pnnx's own graph (*.pnnx.param) or the traced encoder_jit_trace-pnnx.pt beside the ncnn "
               "files (or in exp/ or traced/ there)")


# -- all files together ----------------------------------------------------------------------

@dataclass
class GraphReading:
    """What the encoder's graph files reveal: value and where it was read, per hyperparameter name."""

    arch: ArchSpec
    values: dict[str, Value] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def file_names(self) -> str:
        return ", ".join(p.name for p in self.files) or "no graph files"

    def meta_names(self) -> list[str]:
        return [hp.name for hp in self.arch.hyperparams if hp.meta_key is not None]


def read_graph(arch: str | ArchSpec, *, ncnn_param: Path | None = None, pnnx_param: Path | None = None,
               traced_pt: Path | None = None) -> GraphReading:
    """Read every given graph file (most telling first) and merge; files that disagree are a problem."""
    spec = get_arch(arch) if isinstance(arch, str) else arch
    reading = GraphReading(spec)
    from core.model.ncnn_hparams import read_ncnn_graph
    readers = [(traced_pt, read_traced_graph), (pnnx_param, read_pnnx_graph), (ncnn_param, read_ncnn_graph)]
    for path, reader in readers:
        if path is None or not Path(path).is_file():
            continue
        path = Path(path)
        found = reader(spec, path)
        if found.notes.get("unreadable"):
            reading.warnings.append(f"{found.notes['unreadable']}; its recorded shapes are not used")
            continue
        if found.notes.get("no_shapes"):
            reading.warnings.append(f"{path}: has no input shapes (traced or converted without them); not used "
                                    "for the hyperparameters")
            continue
        reading.files.append(path)
        reading.problems += found.problems
        for k, v in found.notes.items():
            reading.notes.setdefault(k, v)  # the first file's facts (later files agree or are reported)
        for name, value in found.values.items():
            if name not in reading.values:
                reading.values[name] = value
                reading.where[name] = found.where[name]
            elif reading.values[name] != value:
                hp = spec.param(name)
                reading.problems.append(f"the graph files disagree on {hp.flag}: {reading.where[name]} gives "
                                        f"{hp.format(reading.values[name])}, {found.where[name]} gives "
                                        f"{hp.format(value)}; are they from the same export?")
    return reading


# -- merging with the given flags ----------------------------------------------------------

def _parse_given(spec: ArchSpec, given: Mapping[str, object]) -> tuple[dict[str, Value], list[Problem]]:
    values: dict[str, Value] = {}
    problems: list[Problem] = []
    for key, raw in given.items():
        if raw is None:
            continue
        try:
            hp = spec.param(key)
        except KeyError:
            problems.append(Problem("error", (key,), f"{key} is not a {spec.title} hyperparameter"))
            continue
        text = ",".join(map(str, raw)) if isinstance(raw, (list, tuple)) else str(raw)
        try:
            value = hp.parse(text)
        except ValueError as exc:
            problems.append(Problem("error", (hp.flag,), str(exc)))
            continue
        if hp.kind == "int" and isinstance(value, tuple):
            problems.append(Problem("error", (hp.flag,), f"{hp.flag} takes one whole number"))
            continue
        values[hp.name] = value
    return values, problems


def reconcile(spec: ArchSpec, given: Mapping[str, object], reading: GraphReading) -> ResolvedValues:
    """The hyperparameters to write: the graph's where it shows them, else given, else refused/defaulted.

    Refused (errors naming the flag): a given value the graph contradicts; a metadata value neither the
    graph files nor a flag states. Flags the metadata does not use fall back to icefall's defaults.
    """
    parsed, problems = _parse_given(spec, given)
    values: dict[str, Value] = {}
    sources: dict[str, str] = {}
    for msg in reading.problems:
        problems.append(Problem("error", (), f"encoder graph: {msg}"))
    for hp in spec.hyperparams:
        graph = reading.values.get(hp.name)
        mine = parsed.get(hp.name)
        if graph is not None:
            if mine is not None and mine != graph:
                problems.append(Problem("error", (hp.flag,),
                                        f"{hp.flag} {hp.format(mine)} contradicts the model: its graph has "
                                        f"{hp.format(graph)} ({reading.where[hp.name]}); leave {hp.flag} out (it is "
                                        f"read from the graph) or check that the directory holds the model you mean"))
            values[hp.name], sources[hp.name] = graph, GRAPH
        elif mine is not None:
            values[hp.name], sources[hp.name] = mine, "given"
        else:
            values[hp.name], sources[hp.name] = hp.parse(hp.default), "default"
    for msg in spec.derive_from_graph(values, sources, reading, GRAPH):
        problems.append(Problem("error", (), msg))
    for hp in spec.hyperparams:
        if hp.meta_key is not None and sources[hp.name] == "default":
            problems.append(Problem("error", (hp.flag,),
                                    f"{hp.flag}: the encoder's graph files ({reading.file_names}) do not show it and "
                                    f"it was not given; give {hp.flag} (the value the model was exported with, "
                                    f"icefall's default is {hp.default}) or {SUPPLY_HINT}", unseen=True))
    spec.size_defaults(values, sources)
    if not problems:
        problems = [_soften(spec, p, sources) for p in spec.rules(values)]
    return ResolvedValues(spec, values, sources, problems)


def _soften(spec: ArchSpec, problem: Problem, sources: Mapping[str, str]) -> Problem:
    """A rule broken only because of a default the metadata does not use (e.g. --nhead against the graph's
    dims) says nothing about the model: a warning, not a refusal."""
    if problem.severity != "error" or not problem.flags:
        return problem
    hps = [spec.param(f) for f in problem.flags if any(h.flag == f for h in spec.hyperparams)]
    if len(hps) != len(problem.flags) or any(sources.get(h.name) == "given" for h in hps):
        return problem
    assumed = [h.flag for h in hps if h.meta_key is None and sources.get(h.name) == "default"]
    if assumed:
        return Problem("warning", problem.flags, f"{problem.message} ({', '.join(assumed)}: icefall's default, "
                                                 "assumed; it is not written to the metadata, so the run goes on)")
    return problem


def graph_mismatches(spec: ArchSpec, values: Mapping[str, Value], reading: GraphReading) -> list[str]:
    """Sentences naming every metadata value that disagrees with what the graph shows (also the sums and
    products the graph fixes when it does not show the parts: chunk + right context, left context x factor)."""
    out = []
    for hp in spec.hyperparams:
        if hp.meta_key is None or hp.name not in reading.values or hp.name not in values:
            continue
        if values[hp.name] != reading.values[hp.name]:
            out.append(f"{hp.flag} is {hp.format(values[hp.name])} but the encoder's graph has "
                       f"{hp.format(reading.values[hp.name])} ({reading.where[hp.name]})")
    out += spec.graph_contradictions(values, reading)
    return out
