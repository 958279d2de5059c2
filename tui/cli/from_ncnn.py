"""`sherpa-ncnn-wizard run --from-ncnn DIR --arch ARCH [icefall flags]`: start from existing pnnx output.

Only light imports at module level: ``build_parser`` imports this module to add the options.
"""
from __future__ import annotations

import argparse

from core.model.architectures import ARCHITECTURES, EXPORT_ONLY_FLAGS


def add_from_ncnn_arguments(run: argparse.ArgumentParser, source) -> None:
    source.add_argument("--from-ncnn", metavar="DIR",
                        help="start from existing pnnx output in DIR ({encoder,decoder,joiner}_jit_trace-pnnx.ncnn."
                             "{param,bin} or pnnx's default *_jit_trace_pnnx.ncnn.*, tokens.txt): copy into --out, "
                             "rewrite layers sherpa-ncnn lacks, add the metadata, validate; DIR is only read. Needs "
                             "--arch; the metadata values are read from the encoder's graph (pnnx's *.pnnx.param or "
                             "the traced .pt beside the files); icefall flags are needed only for what it cannot show")
    run.add_argument("--arch", choices=sorted(ARCHITECTURES), help="with --from-ncnn: the model architecture")
    run.add_argument("--reference-dir", metavar="D",
                     help="with --from-ncnn: where encoder-reference.npz / decoder-joiner-reference.npz are "
                          "(default: DIR when it has them)")
    run.add_argument("--traced-dir", metavar="D",
                     help="with --from-ncnn: where the traced *_jit_trace-pnnx.pt files are (default: DIR when "
                          "it has them)")
    run.add_argument("--wav", action="append", default=[], metavar="W",
                     help="with --from-ncnn: a 16 kHz test wav to decode (repeatable)")
    run.add_argument("--calibration-wav", action="append", default=[], metavar="W",
                     help="with --from-ncnn --int8: a 16 kHz calibration wav (repeatable; default: the --wav files)")
    own = {o for a in run._actions for o in a.option_strings}  # noqa: SLF001
    flags: dict[str, None] = {}
    for spec in ARCHITECTURES.values():
        for hp in spec.hyperparams:
            flags.setdefault(hp.flag, None)
    for flag in flags:
        if flag not in own:
            run.add_argument(flag, dest="hp:" + flag, default=None, metavar="VALUE", help=argparse.SUPPRESS)
    for flag in EXPORT_ONLY_FLAGS:
        if flag not in own:
            run.add_argument(flag, dest="ignored:" + flag, default=None, metavar="VALUE", help=argparse.SUPPRESS)


def value_lines(planned) -> list[tuple[str, str, str]]:
    """(flag value, source, where) for every value the metadata is written from."""
    resolved = planned.resolved
    where = planned.graph.where if planned.graph is not None else {}
    rows = []
    for hp in resolved.arch.hyperparams:
        if hp.meta_key is None:
            continue
        source = resolved.sources.get(hp.name, "default")
        rows.append((f"{hp.flag} {hp.format(resolved.values[hp.name])}", source,
                     where.get(hp.name, "") if source == "graph" else ""))
    return rows


def print_values(out, planned) -> None:
    from rich.text import Text
    files = ", ".join(str(p) for p in planned.graph.files) if planned.graph and planned.graph.files else "none"
    out.print(Text(f"Metadata values (graph files read: {files}):", style="bold"))
    for value, source, where in value_lines(planned):
        style = {"graph": "green", "given": "cyan"}.get(source, "yellow")
        out.print(Text(f"  {value:<44}") + Text(source, style=style) + Text(f"  {where}" if where else ""),
                  highlight=False)


def run_from_ncnn(args) -> int:
    import asyncio
    from pathlib import Path

    from rich.text import Text

    from core.pipeline.from_ncnn import build_from_ncnn_plan
    from core.pipeline.layout import PlanError
    from tui.cli.common import stderr_console, stdout_console
    from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
    from tui.cli.run import PlainRenderer, RichRenderer, _print_results, _run, _write_script, print_plan_problems

    err = stderr_console()
    if not args.arch:
        err.print(Text("error: ", style="bold red") + Text("--from-ncnn needs --arch (zipformer, conv-emformer "
                                                            "or lstm); the metadata values are read from the encoder's graph"))
        return EXIT_BAD_INPUT
    spec = ARCHITECTURES[args.arch]
    own = {hp.flag for hp in spec.hyperparams}
    given, notes = {}, []
    for key, value in vars(args).items():
        if value is None or not key.startswith("hp:"):
            continue
        if key[3:] in own:
            given[key[3:]] = value
        else:
            notes.append(f"{key[3:]} is not a {spec.title} flag; ignored")
    int8 = None
    if args.int8:
        from core.pipeline.config import WizardConfig
        int8 = WizardConfig(arch=spec.name)
        int8.calibration.wavs = [str(Path(w).resolve()) for w in (args.calibration_wav or args.wav)]
        int8.calibration.backend = args.int8_backend or "builtin"
        int8.calibration.resample = bool(args.resample)
        int8.calibration.histogram = getattr(args, "histogram", None) or int8.calibration.histogram
        if getattr(args, "min_cosine", None) is not None:
            from core.pipeline.config import min_cosine_problem
            problem = min_cosine_problem(args.min_cosine, "--min-cosine")
            if problem:
                err.print(Text("error: ", style="bold red") + Text(problem))
                return EXIT_BAD_INPUT
            int8.calibration.min_cosine = args.min_cosine
        int8.tools.generate_int8_scale_table = args.table_tool or ""
        int8.tools.ncnn2int8 = args.ncnn2int8 or ""
        if not args.calibration_wav and args.wav:
            notes.append("no --calibration-wav: calibrating on the --wav files")
    out_dir = args.out or str(Path("runs") / f"from-ncnn-{spec.name}")
    try:
        planned = build_from_ncnn_plan(args.from_ncnn, args.arch, given, out_dir=out_dir,
                                       reference_dir=args.reference_dir, traced_dir=args.traced_dir,
                                       wavs=args.wav, check_out_dir=not args.dry_run, int8=int8)
    except PlanError as exc:
        print_plan_problems(err, exc)
        return EXIT_BAD_INPUT
    from tui.cli.ship import add_ship_options  # --dataset, --package (core.pipeline.ship_steps)
    if add_ship_options(args, planned, err):
        return EXIT_BAD_INPUT
    out = stdout_console()
    for w in notes + planned.warnings:
        out.print(Text("warning: ", style="yellow") + Text(w))
    print_values(out, planned)
    if args.script:
        _write_script(Path(args.script), planned.script)
        out.print(f"script written to {args.script}")
    if args.dry_run:
        out.print(Text(f"Plan for {spec.title} from {planned.source} -> {planned.out_dir} (nothing has been run)",
                       style="bold"))
        for i, step in enumerate(planned.plan.steps, start=1):
            out.print(Text(f"{i:>2}. {step.title}", style="bold"))
            out.print(f"    {step.command or step.describe}", highlight=False)
        return EXIT_OK
    planned.out_dir.mkdir(parents=True, exist_ok=True)
    _write_script(planned.out_dir / "export.sh", planned.script)
    renderer = RichRenderer(out) if out.is_terminal else PlainRenderer(out)
    out.print(Text(f"{spec.title} from {planned.source} -> {planned.out_dir}", style="bold"))
    status = asyncio.run(_run(planned, renderer, args.resume))
    renderer.close()
    _print_results(out, planned.out_dir, status)
    return {"ok": EXIT_OK, "cancelled": EXIT_INTERRUPTED}.get(status, EXIT_FAILED)
