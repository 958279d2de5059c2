"""Does sherpa-ncnn decode what the traced torch modules decode? Token-level agreement, end to end.

The numeric check compares single calls; this decodes each validation wav with
the traced torch modules exactly as sherpa-ncnn streams it -- the same fbank
(core.common.audio), the same tail padding, ``Segment`` frames per chunk advancing by
``Offset`` (both from the model's metadata, as sherpa-ncnn reads them), states
carried, zero initial states, and sherpa-ncnn's greedy search (decoder context
of 2 starting from blanks, blank 0 and <unk> 2 emit nothing, at most one symbol
per encoder frame) -- and compares the token ids with sherpa-ncnn's. Wrong
metadata (chunk, state shapes) shows up here as a divergence. fp16 must agree
token for token; int8 reports its agreement rate. Runs inside the validation
process (torch); sherpa-ncnn itself only ever runs in its child process.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.model.architectures import get_arch
from core.model.traced import Traced, TracedError, load, shape_files_near, specs_from_metadata

FRAME_SECONDS = 0.04  # sherpa-ncnn's timestamps: 10 ms shift x subsampling 4
TAIL_PADDING_SECONDS = 0.5  # silence after each validation wav, as an app's input_finished() pads it (both sides)
NO_WAV = "(1 s of silence: no test wavs given)"  # core.validation.validate.decode's stand-in input
BLANK, UNK = 0, 2  # sherpa-ncnn's greedy search emits neither
CONTEXT = 2  # sherpa-ncnn's decoder context (hard-coded)
NEAR_TIE = 1e-2  # fp16: a choice within this x max(1, |logits|max) of torch's best may flip (the numeric tolerance)


class AgreementError(Exception):
    """The torch side could not be set up or run; the message names the file and what to do."""


def stream_geometry(arch: str, meta: dict) -> tuple[int, int]:
    """(Segment, Offset) in feature frames, computed from the metadata as sherpa-ncnn computes them."""
    try:
        segment, offset = get_arch(arch).runtime_geometry(meta)
    except KeyError:
        raise AgreementError(f"no streaming rule for architecture {arch!r}") from None
    if offset <= 0:
        raise AgreementError(f"the metadata gives a chunk of {offset} frames (sherpa-ncnn would never advance); "
                             "fix the chunk-length metadata key")
    return segment, offset


@dataclass
class TorchTransducer:
    encoder: Traced
    decoder: Traced
    joiner: Traced
    segment: int
    offset: int

    def decode(self, features, follow: dict[int, int] | None = None, tolerance: float = 0.0,
               encoded: list | None = None) -> dict:
        """Greedy-decode (frames, 80) features as sherpa-ncnn does: token ids and the encoder frame of each.

        ``follow`` (sherpa-ncnn's emissions, frame -> token): where torch's choice differs from sherpa-ncnn's
        by no more than ``tolerance`` x max(1, |logits|max) -- a near-tie that fp16 rounding may flip -- torch
        takes sherpa-ncnn's choice (a ``near_ties`` entry) and goes on; a larger difference is the
        ``divergence`` (reported once; torch keeps its own choice from there on).
        ``encoded``: ``encode(features)``, when already computed (the encoder does not depend on the tokens, so a
        second search over the same wav needs no second encoder pass); the result's ``encoded`` is it.
        """
        encoded = self.encode(features) if encoded is None else encoded
        return {**self.search(encoded, follow, tolerance), "encoded": encoded}

    def encode(self, features) -> list:
        """The encoder's output frames ((frames, dim) per chunk), streamed as sherpa-ncnn streams: ``Segment``
        frames per chunk advancing by ``Offset``, states carried from zero."""
        import numpy as np
        import torch
        enc = self.encoder
        inputs = enc.zeros()
        lengths = enc.lengths_index()
        states = enc.state_indices()
        processed, chunks = 0, []
        feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        while processed + self.segment < feats.shape[0]:  # sherpa-ncnn's IsReady (strict <)
            inputs[0] = feats[processed: processed + self.segment].unsqueeze(0)
            if lengths is not None:
                inputs[lengths] = torch.full(tuple(inputs[lengths].shape), self.segment, dtype=inputs[lengths].dtype)
            outs = enc(inputs)
            for k in states:
                if k >= len(outs) or tuple(outs[k].shape) != tuple(inputs[k].shape):
                    raise AgreementError(f"{enc.path}: output out{k} does not fit input in{k} "
                                         f"({tuple(outs[k].shape) if k < len(outs) else 'missing'} vs "
                                         f"{tuple(inputs[k].shape)}); the states cannot be carried")
                inputs[k] = outs[k]
            chunks.append(outs[0].reshape(-1, outs[0].shape[-1]))  # (frames, dim)
            processed += self.offset
        return chunks

    def search(self, encoded: list, follow: dict[int, int] | None = None, tolerance: float = 0.0) -> dict:
        """sherpa-ncnn's greedy search over encoder output frames (see ``decode``)."""
        import numpy as np
        import torch
        dec_dtype = getattr(torch, self.decoder.specs[0].dtype) if self.decoder.specs else torch.int64
        enc_rank = len(self.joiner.specs[0].shape) if self.joiner.specs else 2
        dec_rank = len(self.joiner.specs[1].shape) if self.joiner.specs else 2

        def run_decoder(context: list[int]):
            out = self.decoder([torch.tensor([context], dtype=dec_dtype)])[0]
            return out.reshape([1] * (dec_rank - 1) + [-1])

        tokens = [BLANK] * CONTEXT
        frames: list[int] = []
        near_ties: list[dict] = []
        divergence = None
        dec_out = run_decoder(tokens[-CONTEXT:])
        frame_offset = 0
        for encoder_out in encoded:
            for t in range(encoder_out.shape[0]):
                frame = frame_offset + t
                logits = self.joiner([encoder_out[t].reshape([1] * (enc_rank - 1) + [-1]), dec_out])[0]
                logits = logits.reshape(-1).numpy()
                token = int(np.argmax(logits))  # first maximum, like std::max_element
                if follow is not None and divergence is None:
                    token, tie, divergence = _follow(logits, token, follow.get(frame), tolerance, frame,
                                                     len(tokens) - CONTEXT)
                    if tie:
                        near_ties.append(tie)
                if token not in (BLANK, UNK):
                    tokens.append(token)
                    frames.append(frame)
                    dec_out = run_decoder(tokens[-CONTEXT:])
            frame_offset += encoder_out.shape[0]
        return {"tokens": tokens[CONTEXT:], "frames": frames, "near_ties": near_ties, "divergence": divergence}


def _follow(logits, token: int, theirs: int | None, tolerance: float, frame: int, index: int):
    """(token to take, near-tie or None, divergence or None) at one frame, given sherpa-ncnn's choice there."""
    import numpy as np
    emits = token not in (BLANK, UNK)
    if (theirs is None and not emits) or theirs == token:
        return token, None, None
    alt = theirs if theirs is not None else (BLANK if logits[BLANK] >= logits[UNK] else UNK)
    margin = float(logits[token] - logits[alt])
    scale = max(1.0, float(np.abs(logits).max()))
    what = {"index": index, "frame": frame, "torch_token": token if emits else None, "sherpa_token": theirs,
            "margin": margin}
    if margin <= tolerance * scale:
        return alt, what, None
    return token, None, what


def load_transducer(traced_dir: Path, arch: str, meta: dict, extra_dirs: tuple[Path, ...] = ()) -> TorchTransducer:
    """The three traced modules, the encoder's input shapes found beside them (or from the metadata)."""
    traced_dir = Path(traced_dir)
    pts = {net: traced_dir / f"{net}_jit_trace-pnnx.pt" for net in ("encoder", "decoder", "joiner")}
    missing = [str(p) for p in pts.values() if not p.is_file()]
    if missing:
        raise AgreementError(f"{', '.join(missing)} not found; the agreement check needs icefall's three traced "
                             "modules (--traced-dir)")
    try:
        meta_specs = specs_from_metadata(arch, meta)
    except (KeyError, TypeError, ValueError):
        meta_specs = []
    segment, offset = stream_geometry(arch, meta)
    try:
        encoder = load(pts["encoder"], shape_files_near(pts["encoder"], *extra_dirs), meta_specs)
        decoder = load(pts["decoder"], shape_files_near(pts["decoder"], *extra_dirs))
        joiner = load(pts["joiner"], shape_files_near(pts["joiner"], *extra_dirs))
    except TracedError as exc:
        raise AgreementError(str(exc)) from None
    if not encoder.specs:
        encoder._need_specs()  # raises with the file and what to put beside it
    traced_frames = encoder.specs[0].shape[1] if len(encoder.specs[0].shape) == 3 else None
    if get_arch(arch).runtime_fixed_geometry is None and traced_frames is not None and traced_frames != segment:
        raise AgreementError(f"the metadata makes sherpa-ncnn feed {segment} frames per chunk, but {pts['encoder']} "
                             f"was traced on {traced_frames}; the chunk-length metadata disagrees with the model")
    return TorchTransducer(encoder, decoder, joiner, segment, offset)


_FEATURES: dict[tuple[str, float], object] = {}  # (wav, tail) -> features: each wav is read and featurized once


def features_for(wav: str, tail_seconds: float):
    """sherpa-ncnn's features for one validation input, tail padding included (computed once per process)."""
    key = (str(wav), tail_seconds)
    if key not in _FEATURES:
        _FEATURES[key] = _features(wav, tail_seconds)
    return _FEATURES[key]


def _features(wav: str, tail_seconds: float):
    import numpy as np

    from core.common.audio import SAMPLE_RATE, fbank, read_wav
    samples = np.zeros(SAMPLE_RATE, dtype=np.float32) if wav == NO_WAV else read_wav(wav).samples
    tail = np.zeros(int(SAMPLE_RATE * tail_seconds), dtype=np.float32)
    return fbank(np.concatenate([samples.astype(np.float32), tail]), SAMPLE_RATE)


def edit_distance(a: list, b: list) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def compare_tokens(torch_tokens: list[int], sherpa_tokens: list[int], torch_frames: list[int] | None = None,
                   sherpa_frames: list[int] | None = None) -> dict:
    """match, first divergence (index, tokens, frames when known) and 1 - edit distance / len(torch)."""
    first = None
    for i in range(max(len(torch_tokens), len(sherpa_tokens))):
        a = torch_tokens[i] if i < len(torch_tokens) else None
        b = sherpa_tokens[i] if i < len(sherpa_tokens) else None
        if a != b:
            first = {"index": i, "torch_token": a, "sherpa_token": b,
                     "torch_frame": torch_frames[i] if torch_frames and i < len(torch_frames) else None,
                     "sherpa_frame": sherpa_frames[i] if sherpa_frames and i < len(sherpa_frames) else None}
            break
    dist = edit_distance(torch_tokens, sherpa_tokens)
    rate = max(0.0, 1.0 - dist / len(torch_tokens)) if torch_tokens else (1.0 if not sherpa_tokens else 0.0)
    return {"match": first is None, "first_divergence": first, "rate": rate, "edit_distance": dist}


def describe(entry: dict) -> str:
    name = Path(entry["wav"]).name if entry["wav"] != NO_WAV else entry["wav"]
    n_t, n_s = len(entry["torch_tokens"]), len(entry["sherpa_tokens"])
    ties = entry.get("near_ties") or []
    if entry["match"] and ties:
        t = ties[0]
        return (f"-[✓] agreement {entry['model']} {name}: sherpa-ncnn's {n_s} tokens are torch's, with {len(ties)} "
                f"near-tie(s) decided the other way by fp16 rounding (first at frame {t['frame']}: torch "
                f"{t['torch_token'] if t['torch_token'] is not None else 'blank'} vs sherpa-ncnn "
                f"{t['sherpa_token'] if t['sherpa_token'] is not None else 'blank'}, logit margin {t['margin']:.1e}); "
                f"torch alone gives {entry['rate']:.1%} of the same tokens")
    if entry["match"]:
        return f"-[✓] agreement {entry['model']} {name}: torch and sherpa-ncnn give the same {n_t} tokens"
    d = entry["first_divergence"]
    frames = sorted({f for f in (d["torch_frame"], d["sherpa_frame"]) if f is not None})
    where = f" (frame {'/'.join(map(str, frames))})" if frames else ""
    margin = f", torch's logit margin {d['margin']:.2g}" if d.get("margin") is not None else ""

    def tok(v):
        return "nothing" if v is None else v
    text = (f"token {d['index']}{where}: torch {tok(d['torch_token'])}, sherpa-ncnn {tok(d['sherpa_token'])}{margin} "
            f"({n_t} vs {n_s} tokens, agreement {entry['rate']:.1%})")
    if entry["model"] == "int8":
        return f"-[i] agreement int8 {name}: {entry['rate']:.1%} of torch's tokens; first difference at {text}"
    return f"-[✗] agreement fp16 {name}: first divergence at {text}"


_TORCH_CACHE: dict[tuple[str, str], tuple[object, dict]] = {}  # (traced dir, wav) -> (features, plain decode)
_MODELS: dict[tuple[str, tuple[str, ...]], TorchTransducer] = {}  # (traced dir, shape dirs) -> the loaded modules


def transducer(out: Path, arch: str | None, traced_dir: Path, extra_dirs: tuple[Path, ...] = ()) -> TorchTransducer:
    """The traced modules, loaded once per validation process (the fp16 and int8 checks and the numeric check share
    them: the published LSTM's encoder alone is 230 MB)."""
    dirs = (out / "work" / "pnnx", *extra_dirs)
    key = (str(traced_dir), tuple(map(str, dirs)))
    if key not in _MODELS:
        meta, arch = _metadata(out, arch)
        _MODELS[key] = load_transducer(Path(traced_dir), arch, meta, dirs)
    return _MODELS[key]


def prepare(out: Path, arch: str | None, traced_dir: Path | None, wavs: list[str], tail_seconds: float,
            extra_dirs: tuple[Path, ...] = ()) -> int:
    """torch's plain streaming decode of every wav, before sherpa-ncnn's results are in (they decode meanwhile in
    child processes); ``check`` then only compares. Failures are left for ``check`` to report. Returns how many
    wavs each encoder call streamed (1: one at a time; 0: nothing decoded here)."""
    if traced_dir is None or not (Path(traced_dir) / "encoder_jit_trace-pnnx.pt").is_file():
        return 0
    from core.validation.batched import NotBatchable, encode_streams, worth_batching
    from core.validation.rebatch import rebatched
    try:
        torch_model = transducer(out, arch, Path(traced_dir), extra_dirs)
        todo = [w for w in dict.fromkeys(wavs) if (str(traced_dir), w) not in _TORCH_CACHE]
        feats = [features_for(w, tail_seconds) for w in todo]
        encoded, per_call = [None] * len(todo), min(1, len(todo))  # one wav at a time, as sherpa-ncnn streams
        if len(todo) > 1 and worth_batching(torch_model.offset):
            try:  # every wav's encoder pass at once (the weights read once per chunk step for all of them)
                encoded = encode_streams(torch_model.encoder, torch_model.segment, torch_model.offset, feats,
                                         rebatched(torch_model.encoder))
                per_call = len(todo)
            except NotBatchable:
                pass
        from core.validation import prefetch
        # each wav's greedy search (and its encoder pass, when not batched) in a lane of its own when cores are free
        decoded = prefetch.in_lanes([lambda f=f, enc=enc: torch_model.decode(f, encoded=enc)
                                     for f, enc in zip(feats, encoded)])
        for wav, f, plain in zip(todo, feats, decoded):
            _TORCH_CACHE[(str(traced_dir), wav)] = (f, plain)
    except (AgreementError, TracedError, OSError):
        return 0
    return per_call


def check(out: Path, arch: str | None, traced_dir: Path | None, decode: dict | None, report: dict,
          tail_seconds: float, print_fn=print, extra_dirs: tuple[Path, ...] = ()) -> None:
    """Append one ``report["agreement"]`` entry per decoded wav; fp16 divergence fails the report, int8 does not."""
    if traced_dir is None or not (Path(traced_dir) / "encoder_jit_trace-pnnx.pt").is_file():
        report["notes"].append("agreement check skipped: no traced *_jit_trace-pnnx.pt files")
        print_fn("agreement check skipped: no traced *_jit_trace-pnnx.pt files")
        return
    if not decode or not decode.get("ok") or not decode.get("results"):
        return  # the decode failure is already reported
    model = decode.get("model", "fp16")
    entries = report.setdefault("agreement", [])
    known = all((str(traced_dir), item["wav"]) in _TORCH_CACHE for item in decode["results"])
    loaded: list = []

    def torch_model() -> TorchTransducer:  # loaded only when needed: a wav not decoded yet, or a guided search
        if not loaded:
            loaded.append(transducer(out, arch, Path(traced_dir), extra_dirs))
        return loaded[0]
    try:
        if not known:
            torch_model()
    except (AgreementError, OSError) as exc:
        report["ok"] = False
        entries.append({"model": model, "error": str(exc), "match": False})
        print_fn(f"-[✗] agreement {model}: {exc}")
        return
    for item in decode["results"]:
        wav = item["wav"]
        key = (str(traced_dir), wav)
        sherpa_tokens = [int(t) for t in item.get("tokens", [])]
        sherpa_frames = [round(float(s) / FRAME_SECONDS) for s in item.get("timestamps", [])]
        try:
            if key not in _TORCH_CACHE:
                feats = features_for(wav, tail_seconds)
                _TORCH_CACHE[key] = (feats, torch_model().decode(feats))
            feats, plain = _TORCH_CACHE[key]
            entry = {"model": model, "wav": wav, "torch_tokens": plain["tokens"], "sherpa_tokens": sherpa_tokens,
                     **compare_tokens(plain["tokens"], sherpa_tokens, plain["frames"], sherpa_frames or None),
                     "near_ties": []}
            if model != "int8" and not entry["match"] and len(sherpa_frames) == len(sherpa_tokens):
                if feats is None:  # torch's decode came from an earlier process, without its features
                    feats = features_for(wav, tail_seconds)
                guided = torch_model().decode(feats, dict(zip(sherpa_frames, sherpa_tokens)), NEAR_TIE,
                                              plain.get("encoded"))
                if guided["divergence"] is None and guided["tokens"] == sherpa_tokens:
                    entry.update(match=True, near_ties=guided["near_ties"])
                elif guided["divergence"] is not None:
                    d = guided["divergence"]
                    entry["first_divergence"] = {"index": d["index"], "torch_token": d["torch_token"],
                                                 "sherpa_token": d["sherpa_token"], "torch_frame": d["frame"],
                                                 "sherpa_frame": d["frame"], "margin": d["margin"]}
                    entry["near_ties"] = guided["near_ties"]
        except (AgreementError, TracedError, OSError) as exc:
            report["ok"] = False
            entries.append({"model": model, "wav": wav, "error": str(exc), "match": False})
            print_fn(f"-[✗] agreement {model} {Path(wav).name}: {exc}")
            continue
        entries.append(entry)
        print_fn(describe(entry))
        if model != "int8" and not entry["match"]:
            report["ok"] = False


def check_agreement(out: Path, arch: str | None, traced_dir: Path | None, decoded: dict | None, report: dict,
                    print_fn=print, extra_dirs: tuple[Path, ...] = ()) -> None:
    """torch vs sherpa-ncnn token agreement on the decoded wavs (core.validation.agreement); never raises."""
    try:
        check(out, arch, traced_dir, decoded, report, TAIL_PADDING_SECONDS, print_fn, extra_dirs)
    except Exception as exc:  # noqa: BLE001 - an unexpected failure is a failed check, said in one line
        report["ok"] = False
        report.setdefault("agreement", []).append({"model": (decoded or {}).get("model"), "error": str(exc),
                                                   "match": False})
        print_fn(f"-[✗] agreement: {type(exc).__name__}: {exc}")


def torch_decodes(traced_dir: Path) -> dict[str, dict]:
    """torch's plain decode of each wav this process decoded (tokens and their encoder frames): the int8 check
    compares sherpa-ncnn's int8 tokens with these, so a later process needs no torch for it."""
    return {wav: {"tokens": plain["tokens"], "frames": plain["frames"]}
            for (where, wav), (_, plain) in _TORCH_CACHE.items() if where == str(traced_dir)}


def use_torch_decodes(traced_dir: Path, decodes: dict) -> None:
    """Take torch's decodes from an earlier process (``torch_decodes``); the features are not kept with them."""
    for wav, plain in (decodes or {}).items():
        if isinstance(plain, dict) and isinstance(plain.get("tokens"), list):
            _TORCH_CACHE.setdefault((str(traced_dir), wav), (None, {"tokens": plain["tokens"],
                                                                   "frames": plain.get("frames") or []}))


def _metadata(out: Path, arch: str | None) -> tuple[dict, str]:
    from core.model.architectures import BY_MODEL_TYPE
    from core.model.metadata import read_metadata
    from core.ncnn.param import load_param
    param = out / "encoder_jit_trace-pnnx.ncnn.param"
    parsed = load_param(param)
    meta = read_metadata(parsed.model) if parsed.model else None
    if not meta:
        raise AgreementError(f"{param}: no SherpaMetaData layer; sherpa-ncnn's streaming cannot be reproduced")
    spec = BY_MODEL_TYPE.get(meta.get(0))
    if spec is None:
        raise AgreementError(f"{param}: metadata model type {meta.get(0)!r} is not one sherpa-ncnn knows")
    if arch and arch != spec.name:
        raise AgreementError(f"{param}: the metadata says {spec.name} (0={meta.get(0)}), the run says {arch}")
    return meta, spec.name
