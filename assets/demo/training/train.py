#!/usr/bin/env python3
"""Train one demo transducer on the espeak-ng speech, through the streaming forward sherpa-ncnn runs.

    python assets/demo/training/make_speech.py --out /tmp/speech                 # once
    python assets/demo/training/train.py --arch lstm --data /tmp/speech           # writes models/lstm/...

The model is the demo recipe's own (``get_transducer_model`` through
make_demo_assets.build_model, icefall's state_dict names) with the flags of
``models/<arch>/flags.txt``. Features are core.common.audio.fbank (what
sherpa-ncnn computes) of the wav plus the validation's 0.5 s tail of zeros.
The encoder runs chunk by chunk exactly as sherpa-ncnn feeds it (Segment frames
per call advancing by Offset, from core.validation.agreement.stream_geometry;
zero initial states, states carried), so what is trained is what is exported.
The recipes' encoders only take batch 1: a batch is run through torch.vmap (the
same code, one call per chunk for the whole batch); the LSTM, whose chunks of 9
frames overlap by 5 and give one frame each, runs its subsampling on all the
chunks at once and its LSTM over the chunk sequence (identical to stepping).
The decoder sees what sherpa-ncnn gives it (the last 2 tokens, blanks at the
start). The loss is rnnt_loss.py. Writes ``exp/pretrained.pt`` ({"model":
state_dict}), ``data/lang_bpe_500/{bpe.model,tokens.txt}`` (trained on the
training sentences only) and ``train.log`` under ``models/<arch>``. Seeded; one thread by default.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent
REPO = DEMO.parents[1]
for p in (str(HERE), str(DEMO), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

SEED = 20261129
VOCAB_SIZE = 128  # about one piece per word of the 40-word vocabulary (short label sequences train fast)
BLANK, UNK, CONTEXT = 0, 2, 2


# -- tokens ---------------------------------------------------------------------------------------------

def train_bpe(lang_dir: Path, sentences: list[str], vocab_size: int = VOCAB_SIZE):
    """bpe.model (icefall's specials: 0 <blk>, 1 <sos/eos>, 2 <unk>) and tokens.txt from the training sentences."""
    from make_demo_assets import train_bpe as make_bpe  # assets/demo: the one place a demo bpe.model is made
    return make_bpe(lang_dir, vocab_size, sentences)


# -- data -----------------------------------------------------------------------------------------------

def features(samples):
    """sherpa-ncnn's features of ``samples`` followed by the validation's tail of zeros."""
    import numpy as np

    from core.common.audio import SAMPLE_RATE, fbank
    from core.validation.decoding import TAIL_PADDING_SECONDS
    tail = np.zeros(int(SAMPLE_RATE * TAIL_PADDING_SECONDS), dtype=np.float32)
    return fbank(np.concatenate([samples.astype(np.float32), tail]), SAMPLE_RATE)


def load_features(data: Path, count: int | None):
    """[(features float16, text)] of the training set (cached beside it as feats-<n>.pt)."""
    import numpy as np
    import torch
    from make_speech import train_rows

    from core.common.audio import read_wav
    rows = [r for r in train_rows(count or 12000) if (data / "wav" / r[0]).is_file()]
    cache = data / f"feats-{len(rows)}.pt"
    if cache.is_file():
        return torch.load(cache)
    out = []
    for i, (name, _voice, text) in enumerate(rows):
        out.append((torch.from_numpy(features(read_wav(data / "wav" / name).samples).astype(np.float16)), text))
        if i % 2000 == 0:
            print(f"features {i}/{len(rows)}", flush=True)
    torch.save(out, cache)
    return out


# -- the streaming encoder ------------------------------------------------------------------------------

def geometry(arch: str, encoder) -> tuple[int, int]:
    """(Segment, Offset) as sherpa-ncnn computes them from the metadata this encoder's export writes."""
    from core.validation.agreement import stream_geometry
    if arch == "zipformer":
        meta = {1: encoder.decode_chunk_size * 2, 3: 7}
    elif arch == "conv-emformer":
        meta = {5: encoder.chunk_length, 6: encoder.right_context_length}
    else:
        meta = {}
    return stream_geometry(arch, meta)


def init_states(arch: str, encoder) -> list:
    if arch == "zipformer":
        return list(encoder.get_init_state())
    if arch == "conv-emformer":
        return list(encoder.init_states())
    return list(encoder.get_init_states())


def step_fn(arch: str, encoder):
    """The traced streaming step, batch 1: (x (1, Segment, 80), *states) -> (out (1, t, D), *new states)."""
    if arch == "zipformer":
        def step(x, *states):
            out, new = encoder.streaming_forward(x, list(states))
            return (out, *new)
    else:
        def step(x, *states):
            out, new = encoder(x, list(states))
            return (out, *new)
    return step


def encode(arch: str, encoder, feats, num_chunks):
    """Batched streaming encoder: feats (N, F, 80), chunks per utterance (N,) -> (N, T, D), lengths (N,)."""
    import torch

    segment, offset = geometry(arch, encoder)
    n = feats.shape[0]
    chunks = int(num_chunks.max())
    if arch == "lstm":
        win = feats.unfold(1, segment, offset)[:, :chunks]  # (N, C, 80, 9): the chunks sherpa-ncnn feeds
        win = win.permute(0, 1, 3, 2).reshape(n * chunks, segment, 80)
        x = encoder.encoder_embed(win).reshape(n, chunks, -1)  # one frame per chunk
        h, c = encoder.get_init_states(batch_size=n)
        out, _ = encoder.encoder(x, (h, c))
        return out, num_chunks
    states = [s.unsqueeze(0).expand(n, *s.shape).contiguous() for s in init_states(arch, encoder)]
    step = torch.vmap(step_fn(arch, encoder))
    outs = []
    for k in range(chunks):
        x = feats[:, k * offset: k * offset + segment].unsqueeze(1)  # (N, 1, Segment, 80)
        out, *states = step(x, *states)
        outs.append(out[:, 0])
    out = torch.cat(outs, dim=1)
    per_chunk = outs[0].shape[1]
    return out, num_chunks * per_chunk


def chunks_for(arch: str, encoder, frames: int) -> int:
    """How many encoder calls sherpa-ncnn makes on ``frames`` feature frames (IsReady: processed + Segment < F)."""
    segment, offset = geometry(arch, encoder)
    return max(0, (frames - segment - 1) // offset + 1) if frames > segment else 0


# -- the transducer -------------------------------------------------------------------------------------

def decoder_contexts(targets: list[list[int]], u_max: int):
    """(N, U+1, 2) decoder inputs: before label u, the last two of [blank, blank, y1..yu] (sherpa-ncnn's context)."""
    import torch
    rows = []
    for y in targets:
        seq = [BLANK] * CONTEXT + list(y) + [BLANK] * (u_max - len(y))
        rows.append([seq[u:u + CONTEXT] for u in range(u_max + 1)])
    return torch.tensor(rows, dtype=torch.int64)


def batch_loss(arch: str, model, feats, texts: list[str], sp):
    """Mean RNN-T loss of one batch (list of (F, 80) tensors) through the streaming encoder."""
    import torch
    from rnnt_loss import rnnt_loss
    n = len(feats)
    frames = max(f.shape[0] for f in feats)
    pad = torch.stack([torch.nn.functional.pad(f.float(), (0, 0, 0, frames - f.shape[0]), value=float(f[-1, 0]))
                       for f in feats])
    nchunks = torch.tensor([chunks_for(arch, model.encoder, f.shape[0]) for f in feats])
    enc, enc_lens = encode(arch, model.encoder, pad, nchunks)
    targets = [sp.encode(t) for t in texts]
    u_max = max(len(y) for y in targets)
    ctx = decoder_contexts(targets, u_max)
    dec = model.decoder(ctx.reshape(-1, CONTEXT), need_pad=False).reshape(n, u_max + 1, -1)
    logits = model.joiner(enc.unsqueeze(2), dec.unsqueeze(1))  # (N, T, U+1, V)
    tg = torch.tensor([y + [1] * (u_max - len(y)) for y in targets], dtype=torch.int64)
    return rnnt_loss(logits, tg, enc_lens, torch.tensor([len(y) for y in targets]))


def greedy(arch: str, model, feats) -> list[int]:
    """sherpa-ncnn's greedy search on one utterance's features: context 2, at most one symbol per frame."""
    import torch
    with torch.no_grad():
        n = chunks_for(arch, model.encoder, feats.shape[0])
        if n == 0:
            return []
        enc, _ = encode(arch, model.encoder, feats.float().unsqueeze(0), torch.tensor([n]))
        tokens = [BLANK] * CONTEXT
        dec = model.decoder(torch.tensor([tokens[-CONTEXT:]]), need_pad=False).reshape(1, -1)
        for t in range(enc.shape[1]):
            tok = int(model.joiner(enc[0, t:t + 1], dec).argmax(-1))
            if tok not in (BLANK, UNK):
                tokens.append(tok)
                dec = model.decoder(torch.tensor([tokens[-CONTEXT:]]), need_pad=False).reshape(1, -1)
        return tokens[CONTEXT:]


# -- evaluation -----------------------------------------------------------------------------------------

def heldout_sets() -> dict[str, list[tuple[Path, str]]]:
    """The committed held-out wavs with their transcripts: test_wavs/ and heldout/ (LibriSpeech layout)."""
    sets = {"test_wavs": [], "heldout": []}
    tr = DEMO / "test_wavs" / "transcripts.txt"
    if tr.is_file():
        for line in tr.read_text().splitlines():
            name, text = line.split(" ", 1)
            sets["test_wavs"].append((DEMO / "test_wavs" / name, text))
    for trans in sorted((DEMO / "heldout").rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            sets["heldout"].append((trans.parent / f"{utt}.wav", text))
    return sets


def evaluate(arch: str, model, sp, sets) -> dict[str, float]:
    """Mean per-utterance WER of torch greedy decoding on each held-out set (the validation's measure)."""
    from core.common.audio import read_wav
    from core.validation.decoding import word_error_rate
    model.eval()
    result = {}
    for name, items in sets.items():
        wers = []
        for wav, text in items:
            hyp = sp.decode(greedy(arch, model, features_tensor(read_wav(wav).samples)))
            wers.append(word_error_rate(text, hyp))
        result[name] = sum(wers) / len(wers) if wers else float("nan")
    model.train()
    return result


def features_tensor(samples):
    import torch
    return torch.from_numpy(features(samples))


# -- main -----------------------------------------------------------------------------------------------

def build_model(arch: str, flags: list[str], tokens: Path, seed: int):
    """The recipe's transducer (make_demo_assets.build_model); hides this file's name from the LSTM recipe's ``train``."""
    import make_demo_assets
    mine = sys.modules.pop("train", None)
    try:
        return make_demo_assets.build_model(arch, flags, tokens, seed)
    finally:
        if mine is not None:
            sys.modules["train"] = mine


def read_flags(arch: str, models: Path = DEMO / "models") -> list[str]:
    """The model flags from ``models/<arch>/flags.txt``; a fresh --models dir uses the bundled demo's."""
    path = models / arch / "flags.txt"
    return shlex.split((path if path.is_file() else DEMO / "models" / arch / "flags.txt").read_text())


def spec_mask(f, rng: random.Random):
    """Light SpecAugment: up to two frequency bands of <= 8 bins set to the utterance mean."""
    f = f.float().clone()
    for _ in range(rng.randint(0, 2)):
        w = rng.randint(1, 8)
        lo = rng.randint(0, 80 - w)
        f[:, lo:lo + w] = f.mean()
    return f


def train(args) -> dict:
    import torch
    from make_speech import split

    import core.validation.agreement  # noqa: F401  (imported up front: a long run never imports mid-way)
    import core.validation.decoding  # noqa: F401

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    root = args.models / args.arch
    lang = root / "data" / "lang_bpe_500"
    sp = train_bpe(lang, split()["train_sentences"], args.vocab_size)
    flags = read_flags(args.arch, args.models)
    model = build_model(args.arch, flags, lang / "tokens.txt", args.seed)
    if args.init:  # a second phase continues from a first one's checkpoint (same flags and tokens)
        model.load_state_dict(torch.load(args.init, map_location="cpu")["model"])
    model.train()
    nparams = sum(p.numel() for p in model.parameters())
    data = load_features(args.data, args.count)
    sets = heldout_sets()
    log_path = root / "train.log"
    log = log_path.open("w")

    def say(msg: str):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    say(f"{args.arch}: {nparams} parameters, flags {' '.join(flags)}; {len(data)} training utterances; "
        f"init {args.init.name if args.init else 'random'}, vocab {args.vocab_size}, steps {args.steps}, batch {args.batch}, lr {args.lr}, seed {args.seed}, threads {args.threads}")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, args.beta2))
    rng = random.Random(args.seed)
    order: list[int] = []
    t0 = time.time()
    avg = None
    for step in range(1, args.steps + 1):
        warm = min(1.0, step / args.warmup)
        decay = 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.05 + 0.95 * decay)
        if len(order) < args.batch:
            order = list(range(len(data)))
            rng.shuffle(order)
        idx, order = order[:args.batch], order[args.batch:]
        feats = [spec_mask(data[i][0], rng) for i in idx]
        loss = batch_loss(args.arch, model, feats, [data[i][1] for i in idx], sp)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 50 == 0:
            say(f"step {step} loss {avg:.3f} lr {opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s")
        if step % args.eval_every == 0 or step == args.steps:
            w = evaluate(args.arch, model, sp, sets)
            say(f"step {step} torch greedy WER " + ", ".join(f"{k} {v:.1%}" for k, v in w.items()))
        if args.stop_after and step >= args.stop_after:
            say(f"stopping at step {step} (--stop-after)")
            break
        if args.minutes and time.time() - t0 > args.minutes * 60:
            say(f"stopping at step {step}: the {args.minutes} min budget is used up")
            break
    out = root / "exp" / "pretrained.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": state}, out)
    w = evaluate(args.arch, model, sp, sets)
    summary = {"arch": args.arch, "parameters": nparams, "steps": step, "seconds": round(time.time() - t0),
               "checkpoint_bytes": out.stat().st_size, "torch_wer": w}
    say("done " + json.dumps(summary))
    log.close()
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, choices=("lstm", "conv-emformer", "zipformer"))
    p.add_argument("--data", type=Path, required=True, help="make_speech.py --out DIR")
    p.add_argument("--count", type=int, default=12000, help="training utterances made by make_speech.py")
    p.add_argument("--models", type=Path, default=DEMO / "models", help="writes <models>/<arch>/...")
    p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--beta2", type=float, default=0.999, help="Adam's beta2")
    p.add_argument("--init", type=Path, help="start from this checkpoint ({'model': state_dict}) instead of random")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--minutes", type=float, default=0, help="stop early after this long (0: never)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after this step, the schedule still planned for --steps (replays a --minutes stop)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=SEED)
    train(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
