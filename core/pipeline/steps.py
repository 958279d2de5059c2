"""The in-process steps of a run: prepare, tokens, finalize the encoder, summary.

Each factory returns a :class:`Step` whose function gets a StepContext for
logging and progress; failures are raised as StepError with a sentence that
says what to do.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

from core.common.atomic import atomic_write_bytes
from core.common.formatting import human
from core.common.problems import Problem, ProblemKind
from core.model.metadata import build_metadata, plan_metadata
from core.model.tokens import read_tokens
from core.ncnn.param import load_param
from core.pipeline.runner import Step, StepContext, StepError

NETS = ("encoder", "decoder", "joiner")


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve())


def make_prepare(layout, checkpoints: list[Path], single: bool) -> Step:
    links = [layout.exp / "epoch-99.pt"] if single else [layout.exp / c.name for c in checkpoints]

    def run(ctx: StepContext) -> None:
        layout.exp.mkdir(parents=True, exist_ok=True)
        layout.pnnx_dir.mkdir(parents=True, exist_ok=True)
        for target, link in zip(checkpoints, links):
            _link(target, link)
            ctx.log(f"linked {link} -> {target.resolve()}")
        ctx.log(f"work directory: {layout.work} (your checkpoint directory is only read)")

    script = [f"mkdir -p {shlex.quote(str(layout.exp))} {shlex.quote(str(layout.pnnx_dir))}"]
    script += [f"ln -sfn {shlex.quote(str(t.resolve()))} {shlex.quote(str(link))}" for t, link in zip(checkpoints, links)]
    return Step("prepare", "Prepare the work directory", func=run, inputs=list(checkpoints), outputs=links,
                describe=f"link the checkpoint(s) into {layout.exp}", script=script,
                fingerprint_extra=json.dumps([str(c) for c in checkpoints]))


def make_tokens(layout, tokens_src: Path | None, bpe: Path | None) -> Step:
    def run(ctx: StepContext) -> None:
        if tokens_src is not None:
            data = tokens_src.read_bytes()
            ctx.log(f"copied {tokens_src}")
        else:
            import sentencepiece as spm  # only needed here
            try:
                sp = spm.SentencePieceProcessor(model_file=str(bpe))
            except (OSError, RuntimeError) as exc:
                raise StepError(f"{bpe}: not a sentencepiece model ({exc})",
                                hint="give the bpe.model from the recipe's data/lang_bpe_* directory") from None
            data = "".join(f"{sp.id_to_piece(i)} {i}\n" for i in range(sp.get_piece_size())).encode()
            ctx.log(f"made tokens.txt from {bpe} ({sp.get_piece_size()} pieces)")
        atomic_write_bytes(layout.tokens, data)
        table = read_tokens(layout.tokens)
        errors = [str(p) for p in table.problems if p.severity == "error"]
        for p in table.problems:
            ctx.log(f"{p.severity}: {p}")
        if errors:
            raise StepError(f"{layout.tokens}: " + "; ".join(errors),
                            hint="sherpa-ncnn needs '<blk> 0' first and one 'symbol id' pair per line")
        ctx.log(f"{table.size} tokens, blank <blk> = 0")

    src = tokens_src if tokens_src is not None else bpe
    if tokens_src is not None:
        script = [f"cp {shlex.quote(str(tokens_src))} {shlex.quote(str(layout.tokens))}"]
    else:
        code = ("import sentencepiece as spm, sys; sp = spm.SentencePieceProcessor(model_file=sys.argv[1]); "
                "print(''.join(f'{sp.id_to_piece(i)} {i}\\n' for i in range(sp.get_piece_size())), end='')")
        script = [f"python3 -c {shlex.quote(code)} {shlex.quote(str(bpe))} > {shlex.quote(str(layout.tokens))}"]
    title = "Copy tokens.txt" if tokens_src is not None else "Make tokens.txt from bpe.model"
    return Step("tokens", title, func=run, inputs=[src], outputs=[layout.tokens],
                describe=f"{title.lower()} -> {layout.tokens}", script=script)


def make_finalize_encoder(layout, spec, resolved, raw_param: Path | None = None, raw_bin: Path | None = None,
                          traced_pt: Path | None = None) -> Step:
    # raw_param/raw_bin: the rewrite step's output (core.pipeline.rewrite_step); default pnnx's own output
    # traced_pt: the traced encoder the graph came from (default: the export's, when there is one)
    raw_param = raw_param or layout.raw("encoder", "param")
    raw_bin = raw_bin or layout.raw("encoder", "bin")
    final_param, final_bin = layout.final("encoder", "param"), layout.final("encoder", "bin")
    pnnx_graph = layout.pnnx_dir / "encoder.pnnx.param"  # pnnx's own graph: the pnnx step's, or imported
    traced_pt = traced_pt or layout.pt("encoder")

    def check_against_graph(ctx: StepContext) -> None:
        """No path may write metadata the encoder's graph contradicts (core.model.graph_hparams)."""
        from core.model.graph_hparams import graph_mismatches, read_graph
        reading = read_graph(spec, pnnx_param=pnnx_graph if pnnx_graph.is_file() else None,
                             traced_pt=traced_pt if traced_pt.is_file() else None)
        for note in reading.warnings + reading.problems:
            ctx.log(f"graph check: {note}")
        wrong = graph_mismatches(spec, resolved.values, reading)
        for name, where in reading.where.items():
            hp = spec.param(name)
            mine = resolved.values.get(name)
            if hp.meta_key is not None and mine is not None and reading.values.get(name, mine) == mine:
                ctx.log(f"[✓] {hp.flag} {hp.format(resolved.values[name])} = the graph ({where})")
        if not reading.values:
            ctx.log("graph check: neither pnnx's graph nor a traced encoder shows the hyperparameters here; "
                    "the values are not checked against the graph")
        if wrong:
            raise StepError("; ".join(wrong), hint=Problem(ProblemKind.HYPERPARAMETERS, "the hyperparameters don't "
                                                           "match the encoder graph pnnx wrote; use the flags the "
                                                           "model was exported with"))

    def run(ctx: StepContext) -> None:
        parsed = load_param(raw_param)
        if parsed.model is None:
            raise StepError(parsed.describe())
        check_against_graph(ctx)
        metadata = build_metadata(resolved)
        plan = plan_metadata(parsed.model, metadata, resolved.values)
        for check in plan.checks:
            ctx.log(("[✓] " if check.ok else "[✗] ") + check.message)
        failed_runtime = [c for c in plan.checks if c.name == "runtime-layers" and not c.ok]
        if plan.errors:
            raise StepError("; ".join(plan.errors),
                            hint=Problem(ProblemKind.HYPERPARAMETERS, "the hyperparameters do not describe this "
                                         "encoder graph; use the flags the model was trained with"))
        if failed_runtime:
            raise StepError(failed_runtime[0].message,
                            hint="this pnnx left layers that sherpa-ncnn's runtime lacks; see sherpa-ncnn-wizard "
                                 "doctor for each layer")
        checks = layout.work / "metadata-checks.json"
        atomic_write_bytes(checks, json.dumps(plan.as_dict(), indent=2).encode())
        ctx.log(f"SherpaMetaData: {metadata.line}")
        ctx.log(f"header: {plan.header_before} -> {plan.header_after}")
        atomic_write_bytes(final_param, plan.new_bytes)
        if final_bin.exists() or final_bin.is_symlink():
            final_bin.unlink()
        try:
            os.link(raw_bin, final_bin)
        except OSError:
            shutil.copy2(raw_bin, final_bin)
        ctx.log(f"wrote {final_param} and {final_bin}")

    flags = " ".join(shlex.quote(x) for x in spec.flags_for(resolved.values))
    script = [f"cp {shlex.quote(str(raw_param))} {shlex.quote(str(final_param))}",
              f"cp {shlex.quote(str(raw_bin))} {shlex.quote(str(final_bin))}",
              f"sherpa-ncnn-wizard meta {shlex.quote(str(final_param))} --arch {spec.name} {flags} --apply"]
    return Step("metadata", "Add SherpaMetaData to the encoder", func=run, inputs=[raw_param, raw_bin],
                outputs=[final_param, final_bin], script=script,
                describe=f"insert the SherpaMetaData line into {final_param.name} and check the graph",
                fingerprint_extra=build_metadata(resolved).line if resolved.ok else "")


def size_table(layout, checkpoint: Path | None) -> list[dict]:
    rows = []
    for net in NETS:
        def size(p: Path):
            return p.stat().st_size if p.exists() else None
        rows.append({"model": net,
                     "pt": size(layout.pt(net)),
                     "fp16": size(layout.final(net, "bin")),
                     "fp32": size(layout.work / "fp32" / f"{net}_jit_trace-pnnx.ncnn.bin"),
                     "int8": size(layout.out / f"{net}_jit_trace-pnnx.ncnn.int8.bin")})
    if checkpoint is not None and checkpoint.exists():
        rows.insert(0, {"model": "checkpoint", "pt": checkpoint.stat().st_size, "fp16": None, "fp32": None,
                        "int8": None})
    return rows


def make_summary(layout, checkpoint: Path | None) -> Step:
    out = layout.out / "summary.json"

    def run(ctx: StepContext) -> None:
        rows = size_table(layout, checkpoint)
        ctx.log(f"{'model':<12}{'pt':>12}{'fp16':>12}{'fp32':>12}{'int8':>12}")
        for r in rows:
            ctx.log(f"{r['model']:<12}{human(r['pt']):>12}{human(r['fp16']):>12}{human(r['fp32']):>12}"
                    f"{human(r['int8']):>12}")
        from core.validation.report import read_validation
        report = read_validation(layout.out)
        if report.problem:
            ctx.log(f"validation results not included: {report.problem}")
        validation = report.raw if report.readable else None
        files = sorted(str(p.relative_to(layout.out)) for p in layout.out.iterdir() if p.is_file())
        checks_file = layout.work / "metadata-checks.json"
        metadata_checks = json.loads(checks_file.read_text()) if checks_file.exists() else None
        rewrite_file = layout.work / "rewrite-plan.json"
        rewrite = json.loads(rewrite_file.read_text()) if rewrite_file.exists() else None
        summary = {"sizes": rows, "metadata": metadata_checks, "validation": validation, "files": files,
                   "rewrite": rewrite}
        from core.pipeline.ship_steps import summary_extras
        summary.update(summary_extras(layout.out))  # speed rows, int8 report by layer type
        atomic_write_bytes(out, json.dumps(summary, indent=2).encode())

    return Step("summary", "Summary: sizes and results", func=run,
                inputs=[layout.final(n, "bin") for n in NETS], outputs=[out],
                describe="size table and manifest.json", script=[f"ls -l {shlex.quote(str(layout.out))}"])
