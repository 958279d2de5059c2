#!/usr/bin/env python3
"""Random-weight checkpoints of the demo recipes, for tests and for other model flags.

    python assets/demo/make_demo_assets.py checkpoint --arch zipformer --tokens T --out F -- FLAGS...
    python assets/demo/make_demo_assets.py random --out DIR      # random-weight copies of all three demos

The committed demo models (models/<arch>/exp/pretrained.pt, bpe.model,
tokens.txt) are TRAINED: training/train.py makes them (see training/README.md).
Nothing here writes into models/ or test_wavs/. ``checkpoint`` writes a
``{"model": state_dict}`` checkpoint for other model flags (the tests use it to
export variants of the demo); ``random`` writes DIR/<arch>/{flags.txt,
data/lang_bpe_500, exp/pretrained.pt} with the demo's flags and random weights
(a fast, untrained stand-in). Models are built by the demo recipes' own code
(``get_params``/``get_transducer_model``), with random weights from a fixed
seed, so the same flags give the same bytes. Needs torch, numpy and
sentencepiece (the project's .venv has them).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import random
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent
ICEFALL = DEMO / "icefall"
ASR = ICEFALL / "egs" / "librispeech" / "ASR"

# arch -> (recipe directory, the recipe module that has add_model_arguments/get_params/get_transducer_model)
RECIPES = {
    "zipformer": ("pruned_transducer_stateless7_streaming", "do_not_use_it_directly"),
    "conv-emformer": ("conv_emformer_transducer_stateless2", "do_not_use_it_directly"),
    "lstm": ("lstm_transducer_stateless2", "train"),
}
RECIPE_LOCAL_MODULES = ("do_not_use_it_directly", "zipformer_for_ncnn_export_only", "emformer2", "train", "lstm")

# The demo's model flags (icefall syntax) are models/<arch>/flags.txt, the flags the trained checkpoints have.
def demo_flags(arch: str) -> list[str]:
    import shlex
    return shlex.split((DEMO / "models" / arch / "flags.txt").read_text())


SEED = 20260521
VOCAB_SIZE = 64
SAMPLE_RATE = 16000

WORDS = """the a an and of to in is it that he she we they you was for on are with as his her at by this
had not but from or have one all were there when what your can said each which do how their if will up
about out many then them these so some would make like into time has look two more write go see number
no way could people my than first water been call who oil its now find long down day did get come made
may part sound speech model stream chunk voice board phone small quick test word hello world seven eight
nine ten zero left right memory context frame token blank audio signal noise tone light night early late
""".split()


# -- text, bpe.model, tokens.txt ------------------------------------------------------------------------

def corpus(lines: int = 3000, seed: int = SEED) -> list[str]:
    """Synthetic upper-case English sentences (icefall's LibriSpeech BPE models are upper case)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))).upper() for _ in range(lines)]


def train_bpe(lang_dir: Path, vocab_size: int = VOCAB_SIZE, sentences: list[str] | None = None):
    """bpe.model with icefall's special pieces (0 <blk>, 1 <sos/eos>, 2 <unk>) and the matching tokens.txt, from
    ``sentences`` (the synthetic corpus when None); returns the SentencePieceProcessor."""
    import sentencepiece as spm

    lang_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus() if sentences is None else sentences), model_writer=model,
        vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, user_defined_symbols=["<blk>", "<sos/eos>"], unk_id=2, bos_id=-1, eos_id=-1,
        normalization_rule_name="identity", num_threads=1, minloglevel=2)
    (lang_dir / "bpe.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert pieces[:3] == ["<blk>", "<sos/eos>", "<unk>"], pieces[:3]
    (lang_dir / "tokens.txt").write_text("".join(f"{p} {i}\n" for i, p in enumerate(pieces)), encoding="utf-8")
    return sp


# -- checkpoints --------------------------------------------------------------------------------------

@contextlib.contextmanager
def recipe_module(arch: str):
    """Import the recipe's model module the way export-for-ncnn.py sees it (recipe dir first on sys.path)."""
    recipe, module = RECIPES[arch]
    saved = list(sys.path)
    sys.path[:0] = [str(ASR / recipe), str(ICEFALL)]
    try:
        yield importlib.import_module(module)
    finally:
        sys.path[:] = saved
        for name in RECIPE_LOCAL_MODULES:
            sys.modules.pop(name, None)


def build_model(arch: str, flags: list[str], tokens: Path, seed: int = SEED):
    """The transducer the recipe's export builds for these flags, with seeded random weights."""
    import torch

    with recipe_module(arch) as mod:
        from icefall.utils import SymbolTable, num_tokens

        parser = argparse.ArgumentParser(prog=f"{arch} model flags")
        mod.add_model_arguments(parser)
        parser.add_argument("--context-size", type=int, default=2)
        params = mod.get_params()
        params.update(vars(parser.parse_args(flags)))
        table = SymbolTable.from_file(tokens)
        params.blank_id = table["<blk>"]
        params.vocab_size = num_tokens(table) + 1
        torch.manual_seed(seed)
        if arch == "lstm":
            return mod.get_transducer_model(params, enable_giga=False)
        return mod.get_transducer_model(params)


def make_checkpoint(arch: str, flags: list[str], tokens: Path, out: Path, seed: int = SEED) -> Path:
    """Write ``{"model": state_dict}`` (what icefall's export.py writes as pretrained.pt)."""
    import torch

    model = build_model(arch, flags, tokens, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": state}, out)
    return out


# -- main -----------------------------------------------------------------------------------------------

def make_random(out: Path) -> None:
    """Random-weight copies of the three demos under ``out`` (never the committed, trained models/)."""
    if out.resolve() == (DEMO / "models").resolve():
        raise SystemExit(f"{out} holds the trained demo models; write random ones elsewhere (training/train.py "
                         "recreates the trained ones)")
    for arch in RECIPES:
        root = out / arch
        lang = root / "data" / "lang_bpe_500"
        train_bpe(lang)
        flags = demo_flags(arch)
        make_checkpoint(arch, flags, lang / "tokens.txt", root / "exp" / "pretrained.pt")
        (root / "flags.txt").write_text(" ".join(flags) + "\n")
        print(f"{arch}: {root}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    rnd = sub.add_parser("random", help="random-weight copies of the three demos (not into models/)")
    rnd.add_argument("--out", required=True, type=Path)
    ck = sub.add_parser("checkpoint", help="write a checkpoint for other model flags (given after --)")
    ck.add_argument("--arch", required=True, choices=sorted(RECIPES))
    ck.add_argument("--tokens", required=True, type=Path)
    ck.add_argument("--out", required=True, type=Path)
    ck.add_argument("--seed", type=int, default=SEED)
    ck.add_argument("flags", nargs=argparse.REMAINDER, help="the recipe's model flags, after --")
    args = parser.parse_args(argv)
    if args.command == "checkpoint":
        flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
        print(make_checkpoint(args.arch, flags, args.tokens, args.out, args.seed))
    elif args.command == "random":
        make_random(args.out)
    else:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
