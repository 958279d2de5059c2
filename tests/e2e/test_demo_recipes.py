"""The bundled demo recipes (assets/demo) against the real toolchain.

Each demo recipe is run exactly the way the wizard runs a user's icefall recipe
(``PYTHON RECIPE/export-for-ncnn.py --exp-dir X --tokens T --epoch 99 --avg 1
--use-averaged-model 0 FLAGS`` with cwd = the recipe's parent and the icefall
root on PYTHONPATH, the checkpoint linked as ``X/epoch-99.pt``), then

* the three traced files go through the pnnx wheel's binary (all 7 output paths given),
* core's rewrite runs on the encoder as the wizard runs it (the LSTM is traced as
  icefall traces it: 100 frames, int64 lengths, (h, c) tuple, so it needs the
  lengths-cast and static-time rewrites like a real icefall LSTM),
* core plans and applies the SherpaMetaData line; its graph checks (inputs,
  outputs, runtime layers) must all pass,
* python ncnn must compute what the traced torch modules compute (called as
  traced, through core.model.traced, with pnnx's numbering), with the
  encoder driven the way sherpa-ncnn drives it (its initial state Mats, its
  reshapes of the returned states, two chunks in a row),
* sherpa-ncnn's Recognizer decodes every demo wav (in a child process: it can segfault).

Besides the three demo configurations, two variants with other flags (a 2-stack
Zipformer, a 3-layer ConvEmformer, with checkpoints made for them by
make_demo_assets.py) show that the graphs follow the flags. The expensive part
(export + pnnx for 5 configurations) runs once per session, in parallel.

Tolerance for torch vs ncnn: pnnx stores fp16 weights by default, so every
output must satisfy ``max|ncnn - torch| <= 1e-2 * max(1, max|torch|)`` (the largest seen is 1.6e-3).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from core.model.architectures import get_arch, resolve
from core.pipeline.demo import DEMO_ROOT, ICEFALL_ROOT, demo_recipe
from core.model.metadata import META_NAME, META_TYPE, apply_plan, build_metadata, plan_metadata, read_metadata
from core.model.metadata import runtime_layer_check
from core.ncnn.param import load_param
from core.model.tokens import read_tokens
from tests.paths import KIT, REPO

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")]

ARCHS = ("zipformer", "conv-emformer", "lstm")
TOLERANCE = 1e-2  # relative to max(1, max|torch|); fp16 weights (observed: up to 1.6e-3)
CHILD_TIMEOUT = 120
PNNX_OUTPUTS = {"pnnxparam": ".pnnx.param", "pnnxbin": ".pnnx.bin", "pnnxpy": "_pnnx.py",
                "pnnxonnx": ".pnnx.onnx", "ncnnparam": ".ncnn.param", "ncnnbin": ".ncnn.bin", "ncnnpy": "_ncnn.py"}
MAKE_ASSETS = DEMO_ROOT / "make_demo_assets.py"


@dataclass(frozen=True)
class Config:
    """One configuration to export: an architecture and its model flags (None: the demo's flags.txt)."""

    name: str
    arch: str
    flags: tuple[str, ...] | None = None


VARIANTS = (
    Config("zipformer-2-stacks", "zipformer", (
        "--num-encoder-layers", "1,2", "--feedforward-dims", "48,64", "--nhead", "2,4", "--encoder-dims", "32,32",
        "--attention-dims", "16,32", "--encoder-unmasked-dims", "16,16", "--zipformer-downsampling-factors", "1,2",
        "--cnn-module-kernels", "5,3", "--decoder-dim", "24", "--joiner-dim", "40", "--decode-chunk-len", "16",
        "--num-left-chunks", "2")),
    Config("conv-emformer-3-layers", "conv-emformer", (
        "--num-encoder-layers", "3", "--encoder-dim", "24", "--nhead", "3", "--dim-feedforward", "48",
        "--cnn-module-kernel", "5", "--left-context-length", "16", "--chunk-length", "16",
        "--right-context-length", "4", "--memory-size", "2")),
)
CONFIGS = tuple(Config(a, a) for a in ARCHS) + VARIANTS


# -- fast checks of the assets (no torch) ---------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_demo_recipe_assets(arch):
    recipe = demo_recipe(arch)
    assert recipe.missing() == []
    assert recipe.export_script.parent == recipe.recipe_dir
    assert recipe.recipe_dir.is_relative_to(recipe.icefall_root / "egs")
    resolved = resolve(get_arch(arch), _flag_dict(recipe.flags))
    assert resolved.ok and not resolved.warnings, [str(p) for p in resolved.problems]
    assert all(s == "given" for n, s in resolved.sources.items()
               if not get_arch(arch).param(n).training_only and n != "context_size"), resolved.defaulted_flags()
    table = read_tokens(recipe.tokens)
    assert not table.problems, [str(p) for p in table.problems]
    assert [table.symbols[i] for i in range(3)] == ["<blk>", "<sos/eos>", "<unk>"]
    assert 50 <= table.size <= 200  # the trained demos: 128 pieces, about one per word of their vocabulary
    assert recipe.checkpoint.stat().st_size < 3_000_000


@pytest.mark.parametrize("arch", ARCHS)
def test_demo_config_points_at_the_demo_files(arch):
    from core.pipeline.demo import demo_config

    config = demo_config(arch)
    recipe = demo_recipe(arch)
    assert (config.arch, config.demo) == (arch, arch)
    assert resolve(get_arch(arch), config.hyperparameter_flags()).values == \
        resolve(get_arch(arch), _flag_dict(recipe.flags)).values
    for path in (config.files.recipe, config.files.icefall_root, config.files.checkpoint, config.files.tokens,
                 *config.validation.wavs, *config.calibration.wavs):
        assert Path(path).exists(), path
    assert Path(config.files.recipe, "export-for-ncnn.py") == recipe.export_script


def test_demo_wavs_are_short_16k_mono_pcm16():
    wavs = sorted((DEMO_ROOT / "test_wavs").glob("*.wav"))
    assert 3 <= len(wavs) <= 6
    for path in wavs:
        with wave.open(str(path)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2), path
            assert 1.0 <= w.getnframes() / 16000 <= 3.0, path


def test_demo_tree_is_small():
    total = sum(p.stat().st_size for p in DEMO_ROOT.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 8_000_000, total  # three trained checkpoints (< 3 MB each) and 29 short wavs


def test_core_demo_does_not_import_torch():
    code = "import sys, core.pipeline.demo; core.pipeline.demo.demo_recipe('lstm'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- running the recipes ------------------------------------------------------------------------------

def _flag_dict(flags) -> dict[str, str]:
    flags = list(flags)
    return {flags[i]: flags[i + 1] for i in range(0, len(flags), 2)}


def _pnnx_exe() -> Path:
    spec = importlib.util.find_spec("pnnx")  # finds the package without importing it (and torch)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the pnnx package is not installed")
    exe = Path(list(spec.submodule_search_locations)[0]) / "pnnx"
    if not exe.is_file():
        pytest.skip(f"the pnnx binary is missing: {exe}")
    return exe


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ICEFALL_ROOT), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONSTARTUP", None)
    return env


PRETRAINED_LOADING = ("--epoch", "99", "--avg", "1", "--use-averaged-model", "0")  # epoch-99.pt -> pretrained.pt


def _export_command(recipe, exp_dir: Path, flags, loading=PRETRAINED_LOADING, tokens=True) -> list[str]:
    """``python RECIPE/export-for-ncnn.py ...``, relative to the recipe's parent (the cwd), as the wizard runs it."""
    return [sys.executable, str(recipe.export_script.relative_to(recipe.recipe_dir.parent)),
            "--exp-dir", str(exp_dir), *(("--tokens", str(recipe.tokens)) if tokens else ()), *loading, *flags]


@dataclass
class Run:
    """One configuration taken through export and pnnx."""

    config: Config
    flags: list[str]
    exp_dir: Path
    tokens: Path
    export_rc: int | None = None
    export_stderr: str = ""
    pnnx: dict = field(default_factory=dict)  # name -> (returncode, stderr, outputs)
    seconds: dict = field(default_factory=dict)  # export / pnnx wall time, for failure reports

    def outputs(self, name: str) -> dict[str, Path]:
        return self.pnnx[name][2]

    def require_converted(self) -> None:
        if self.export_rc != 0:
            pytest.fail(f"{self.config.name}: export failed (rc {self.export_rc}, {self.seconds}):\n"
                        f"{self.export_stderr[-4000:]}")
        for name in ("encoder", "decoder", "joiner"):
            rc, err, _ = self.pnnx[name]
            if rc != 0:
                pytest.fail(f"{self.config.name}: pnnx failed on {name} (rc {rc}):\n{err[-4000:]}")


def _run_config(config: Config, root: Path, exe: Path) -> Run:
    recipe = demo_recipe(config.arch)
    exp_dir = root / config.name / "exp"
    exp_dir.mkdir(parents=True)
    flags = list(config.flags) if config.flags is not None else recipe.flags
    run = Run(config, flags, exp_dir, recipe.tokens)
    t0 = time.monotonic()
    if config.flags is None:
        (exp_dir / "epoch-99.pt").symlink_to(recipe.checkpoint)  # what the wizard does with a pretrained.pt
    else:
        made = subprocess.run([sys.executable, str(MAKE_ASSETS), "checkpoint", "--arch", config.arch,
                               "--tokens", str(recipe.tokens), "--out", str(exp_dir / "epoch-99.pt"), "--", *flags],
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=_env())
        if made.returncode:
            run.export_rc, run.export_stderr = made.returncode, "make_demo_assets.py checkpoint: " + made.stderr
            return run
    proc = subprocess.run(_export_command(recipe, exp_dir, flags), cwd=recipe.recipe_dir.parent, env=_env(),
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    run.export_rc, run.export_stderr = proc.returncode, proc.stderr
    run.seconds["export"] = time.monotonic() - t0
    if proc.returncode:
        return run
    t0 = time.monotonic()
    for name in ("encoder", "decoder", "joiner"):
        pt = exp_dir / f"{name}_jit_trace-pnnx.pt"
        outputs = {k: exp_dir / f"{name}_jit_trace-pnnx{suffix}" for k, suffix in PNNX_OUTPUTS.items()}
        cmd = [str(exe), str(pt)] + [f"{k}={v}" for k, v in outputs.items()]
        p = subprocess.run(cmd, cwd=exp_dir, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
        run.pnnx[name] = (p.returncode, p.stderr, outputs)
    run.seconds["pnnx"] = time.monotonic() - t0
    return run


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Export + pnnx for every configuration, in parallel (one worker per core)."""
    exe = _pnnx_exe()
    root = tmp_path_factory.mktemp("demo_recipes")
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {c.name: pool.submit(_run_config, c, root, exe) for c in CONFIGS}
        return {name: f.result() for name, f in futures.items()}


@dataclass
class Meta:
    param: Path  # the encoder param, rewritten for sherpa-ncnn's runtime, now with SherpaMetaData
    plan: object
    result: object
    values: dict
    bin: Path  # its weights (the rewrite may change them)


@pytest.fixture(scope="session")
def with_metadata(runs) -> dict[str, Meta]:
    """core's rewrite (as the wizard runs it) and then its metadata plan, applied to each converted encoder.

    The demo LSTM is traced as icefall traces it (100 frames, int64 lengths cast back with Tensor.to), so
    its pnnx output needs the rewrite before ncnn or sherpa-ncnn can run it, exactly like a real icefall LSTM.
    """
    from core.pipeline.rewrite_step import run_rewrite
    out = {}
    for name, run in runs.items():
        if run.export_rc != 0 or any(r[0] != 0 for r in run.pnnx.values()):
            continue
        raw = run.outputs("encoder")
        param, binary = raw["ncnnparam"].parent / "rewritten.ncnn.param", raw["ncnnparam"].parent / "rewritten.ncnn.bin"
        run_rewrite(raw["ncnnparam"], raw["ncnnbin"], raw["pnnxparam"], param, binary,
                    raw["ncnnparam"].parent / "rewrite-plan.json", log=lambda _line: None, arch=run.config.arch)
        parsed = load_param(param)
        assert parsed.ok, parsed.describe()
        resolved = resolve(get_arch(run.config.arch), _flag_dict(run.flags))
        assert resolved.ok, [str(p) for p in resolved.errors]
        plan = plan_metadata(parsed.model, build_metadata(resolved), resolved.values)
        result = apply_plan(plan, param) if plan.can_apply else None
        out[name] = Meta(param, plan, result, resolved.values, binary)
    return out


def _meta(with_metadata, runs, name) -> Meta:
    runs[name].require_converted()
    return with_metadata[name]


# -- the export scripts -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_export_rejects_unknown_flag(arch, tmp_path):
    recipe = demo_recipe(arch)
    cmd = _export_command(recipe, tmp_path, recipe.flags) + ["--no-such-flag", "3"]
    proc = subprocess.run(cmd, cwd=recipe.recipe_dir.parent, env=_env(), capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("usage: export-for-ncnn.py "), proc.stderr
    assert proc.stderr.rstrip().endswith("export-for-ncnn.py: error: unrecognized arguments: --no-such-flag 3")
    assert not list(tmp_path.iterdir())  # nothing written, not even the log directory


@pytest.mark.slow
def test_export_failures_look_like_icefall(tmp_path):
    """The paths a lone pretrained.pt does not support, a wrong flag, a missing required flag."""
    recipe = demo_recipe("conv-emformer")
    (tmp_path / "epoch-99.pt").symlink_to(recipe.checkpoint)
    flags = list(recipe.flags)
    wider = flags[:]
    wider[wider.index("--encoder-dim") + 1] = "48"
    cases = {
        # icefall's defaults (--avg 15 --use-averaged-model True) need epoch-84.pt and epoch-99.pt
        "averaged": (_export_command(recipe, tmp_path, flags, loading=("--epoch", "99")),
                     1, f"No such file or directory: '{tmp_path}/epoch-84.pt'"),
        # strict=False ignores missing/unexpected keys, but not shape mismatches
        "mismatch": (_export_command(recipe, tmp_path, wider), 1, "size mismatch for encoder.encoder_embed.out.weight"),
        "no-tokens": (_export_command(recipe, tmp_path, flags, tokens=False), 2, "export-for-ncnn.py: error: the following arguments are required: --tokens"),
    }

    def run(cmd):
        return subprocess.run(cmd, cwd=recipe.recipe_dir.parent, env=_env(), capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT)

    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = {name: pool.submit(run, cmd) for name, (cmd, _, _) in cases.items()}
    for name, (_, rc, message) in cases.items():
        proc = procs[name].result()
        assert proc.returncode == rc, (name, proc.stderr[-2000:])
        assert message in proc.stderr, (name, proc.stderr[-2000:])
    assert not (tmp_path / "encoder_jit_trace-pnnx.pt").exists()


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) \[[\w.-]+\.py:\d+\] ")


def _expected_log(run: Run) -> list[str]:
    """icefall's progress lines, in order (regexes)."""
    exp = re.escape(str(run.exp_dir))
    values = _flag_dict(run.flags)
    lines = [r"device: cpu", r"About to create model", rf"Loading checkpoint from {exp}/epoch-99\.pt",
             r"encoder parameters: \d+", r"decoder parameters: \d+", r"joiner parameters: \d+",
             r"total parameters: \d+", r"Using torch\.jit\.trace\(\)", r"Exporting encoder"]
    if run.config.arch == "zipformer":
        dcl = int(values["--decode-chunk-len"])
        lines += [rf"decode_chunk_len: {dcl}$", rf"T: {dcl + 7}$"]
    elif run.config.arch == "conv-emformer":
        lines += [rf"chunk_length: {values['--chunk-length']}, right_context_length: {values['--right-context-length']}$"]
    for name in ("encoder", "decoder", "joiner"):
        if name != "encoder":
            lines.append(f"Exporting {name}")
        lines.append(rf"Saved to {exp}/{name}_jit_trace-pnnx\.pt$")
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CONFIGS])
def test_export_logs_like_icefall_and_writes_three_files(runs, name):
    run = runs[name]
    assert run.export_rc == 0, run.export_stderr[-4000:]
    log = [line for line in run.export_stderr.splitlines() if LOG_LINE.match(line)]
    messages = [LOG_LINE.sub("", line) for line in log]
    pos = 0
    for pattern in _expected_log(run):
        while pos < len(messages) and not re.search(pattern, messages[pos]):
            pos += 1
        assert pos < len(messages), f"log line /{pattern}/ missing or out of order:\n" + "\n".join(log)
    assert all(re.search(r"\[export-for-ncnn\.py:\d+\]", line) for line in log
               if "parameters:" in line or "Saved to" in line)
    total = int(re.search(r"total parameters: (\d+)", run.export_stderr).group(1))
    parts = [int(n) for n in re.findall(r"(?:encoder|decoder|joiner) parameters: (\d+)", run.export_stderr)]
    assert total == sum(parts)
    vocab = len(demo_recipe(run.config.arch).tokens.read_text().splitlines())  # tokens.txt: one line per piece
    assert f'"vocab_size": {vocab}' in run.export_stderr and '"blank_id": 0' in run.export_stderr
    for part in ("encoder", "decoder", "joiner"):
        assert (run.exp_dir / f"{part}_jit_trace-pnnx.pt").stat().st_size > 0
    logs = list((run.exp_dir / "log-export").glob("log-export-ncnn-*"))
    assert len(logs) == 1 and re.fullmatch(r"log-export-ncnn-\d{4}(-\d\d){5}", logs[0].name)
    assert logs[0].read_text().splitlines()[-1] == log[-1]


# What icefall's export-for-ncnn.py traces: the encoder module itself, states as one structured argument
# (as in ../shared/fixtures/icefall-kit/*/traced/encoder_jit_trace-pnnx.pt: class, arguments, returns).
ICEFALL_ENCODER = {
    "zipformer": ("Zipformer", [("x", "tensor"), ("states", "list")], "Tuple[Tensor, List[Tensor]]"),
    "conv-emformer": ("Emformer", [("x", "tensor"), ("states", "list")], "Tuple[Tensor, List[Tensor]]"),
    "lstm": ("RNN", [("x", "tensor"), ("x_lens", "tensor"), ("states", "tuple")],
             "Tuple[Tensor, Tensor, Tuple[Tensor, Tensor]]"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CONFIGS])
def test_traced_encoder_has_icefalls_signature(runs, name):
    """The demo encoders are traced as icefall traces them (TorchScript schema: names, List/Tuple states), and
    pnnx converts that list-taking trace without mixing up its shapes (the demo's constants are per module)."""
    from core.model.traced import load
    from core.pnnx.graph import shape_mismatches
    from tests.paths import KIT
    run = runs[name]
    run.require_converted()
    cls, arguments, returns = ICEFALL_ENCODER[run.config.arch]
    pnnx_graph = run.outputs("encoder")["pnnxparam"]
    traced = load(run.exp_dir / "encoder_jit_trace-pnnx.pt", [pnnx_graph])
    assert traced.module.original_name == cls
    assert [(s.name, s.kind) for s in traced.slots] == arguments, traced.signature()
    assert [str(r.type) for r in traced.module.forward.schema.returns] == [returns]
    n_states = len(get_arch(run.config.arch).io_contract(resolve(get_arch(run.config.arch),
                                                                 _flag_dict(run.flags)).values).inputs) - 1
    assert traced.n_inputs == 1 + n_states  # every state travels inside the one structured argument
    assert shape_mismatches(pnnx_graph) == []
    real = sorted(KIT.glob(f"{run.config.arch.split('-')[0]}-*/traced/encoder_jit_trace-pnnx.pt"))
    if real:  # the real thing, when the kit is there: icefall's own trace reads the same
        icefall = load(real[0])
        assert icefall.module.original_name == cls
        assert [(s.name, s.kind) for s in icefall.slots] == arguments
        assert [str(r.type) for r in icefall.module.forward.schema.returns] == [returns]


# -- pnnx and the metadata checks ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CONFIGS])
def test_pnnx_output_passes_the_metadata_graph_checks(runs, with_metadata, name):
    run = runs[name]
    run.require_converted()
    for part in ("encoder", "decoder", "joiner"):
        for key, path in run.outputs(part).items():
            assert path.is_file(), f"pnnx did not write {key}={path}"
        rc, err, _ = run.pnnx[part]
        # a trained Zipformer's SimpleCombiner weight is a 0-d parameter: pnnx cannot give that (1) operand a batch
        # axis and says so, and the BinaryOp is still right (the numeric checks); icefall's own pnnx logs are full of
        # such batch-axis notes (fixtures/icefall-kit/README.md). Any other "not supported" fails.
        unsupported = [line for line in err.splitlines() if "not supported" in line
                       and not line.startswith("binaryop broadcast across batch axis 0 and 233")]
        assert "pass_ncnn" in err and not unsupported, err
    meta = with_metadata[name]
    plan = meta.plan
    assert not plan.errors and not plan.warnings, (plan.errors, plan.warnings)
    assert [c.name for c in plan.checks] == ["inputs", "outputs", "runtime-layers"]
    assert all(c.ok for c in plan.checks), [c.message for c in plan.checks if not c.ok]
    assert plan.action == "insert" and meta.result.applied, meta.result
    after = load_param(meta.param)
    assert after.ok and not after.issues, after.describe()
    assert read_metadata(after.model) == build_metadata(resolve(get_arch(run.config.arch),
                                                                _flag_dict(run.flags))).as_dict()
    contract = get_arch(run.config.arch).io_contract(meta.values)
    assert after.model.input_names == list(contract.inputs)  # in0..inK, in the contract's order
    for part in ("decoder", "joiner"):
        model = load_param(run.outputs(part)["ncnnparam"]).model
        check = runtime_layer_check(model, encoder=False)
        assert check.ok, check.message
        assert model.input_names == (["in0"] if part == "decoder" else ["in0", "in1"])
        assert "out0" in model.output_names


# -- torch vs python ncnn --------------------------------------------------------------------------------

def _ncnn_net(param: Path, bin_: Path, keep: list):
    import ncnn

    class SherpaMetaData(ncnn.Layer):
        def __init__(self):
            super().__init__()
            self.one_blob_only = False  # 0 bottoms / 0 tops
            self.params = {}

        def load_param(self, pd):
            self.params = {k: pd.get(k, 0) for k in range(16)}
            return 0

    def creator():
        layer = SherpaMetaData()
        keep.append(layer)  # ncnn keeps a raw pointer: python must keep the object alive
        return layer

    keep.append(creator)
    net = ncnn.Net()
    keep.append(net)
    net.opt.num_threads = 1
    assert net.register_custom_layer(META_TYPE, creator, lambda layer: None) == 0
    assert net.load_param(str(param)) == 0, param
    assert net.load_model(str(bin_)) == 0, bin_
    return net


def _extract(net, feeds: dict, outputs: list[str]) -> dict:
    import ncnn

    ex = net.create_extractor()
    ex.set_light_mode(False)
    for name, value in feeds.items():
        mat = value if isinstance(value, ncnn.Mat) else ncnn.Mat(np.ascontiguousarray(value))
        assert ex.input(name, mat) == 0, name
    out = {}
    for name in outputs:
        ret, mat = ex.extract(name)
        assert ret == 0, f"extract {name} -> {ret}"
        out[name] = mat.clone()
    return out


def _close(name: str, got, ref) -> None:
    got = np.asarray(got, dtype=np.float32).reshape(-1)
    ref = np.asarray(ref, dtype=np.float32).reshape(-1)
    assert got.size == ref.size, f"{name}: ncnn has {got.size} values, torch {ref.size}"
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    limit = TOLERANCE * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    assert err <= limit, f"{name}: max abs diff {err:.3g} > {limit:.3g}"


def _sherpa_states(arch: str, values: dict) -> list:
    """The initial state Mats sherpa-ncnn creates for this model (zero-filled), in input order."""
    import ncnn

    def zeros(*wh_c):
        m = ncnn.Mat(*wh_c)
        m.fill(0.0)
        return m

    if arch == "lstm":
        layers, d, h = values["num_encoder_layers"], values["encoder_dim"], values["rnn_hidden_size"]
        return [zeros(d, layers), zeros(h, layers)]
    if arch == "conv-emformer":
        d, k = values["encoder_dim"], values["cnn_module_kernel"]
        mem, lc = values["memory_size"], values["left_context_length"] // 4
        return [m for _ in range(values["num_encoder_layers"])
                for m in (zeros(d, mem), zeros(d, lc), zeros(d, lc), zeros(k - 1, d))]
    left = values["decode_chunk_len"] // 2 * values["num_left_chunks"]  # zipformer-model.cc
    kinds = [[] for _ in range(7)]
    for L, d, a, ds, k in zip(values["num_encoder_layers"], values["encoder_dims"], values["attention_dims"],
                              values["zipformer_downsampling_factors"], values["cnn_module_kernels"]):
        c = left // ds
        for kind, m in zip(kinds, (zeros(L), zeros(d, L), zeros(a, c, L), zeros(a // 2, c, L),
                                   zeros(a // 2, c, L), zeros(k - 1, d, L), zeros(k - 1, d, L))):
            kind.append(m)
    return [m for kind in kinds for m in kind]


def _sherpa_next_states(arch: str, outs: list, n_stacks: int) -> list:
    """What sherpa-ncnn feeds back: zipformer reshapes cached_len by h and cached_avg by (w, c)."""
    if arch != "zipformer":
        return outs
    nxt = list(outs)
    for i in range(n_stacks):
        nxt[i] = outs[i].reshape(outs[i].h)
        nxt[n_stacks + i] = outs[n_stacks + i].reshape(outs[n_stacks + i].w, outs[n_stacks + i].c)
    for i, m in enumerate(nxt):
        assert not m.empty(), f"state {i + 1}: sherpa-ncnn's reshape gives an empty Mat (wrong output rank)"
    return nxt


def _torch_zero_states(arch: str, values: dict):
    import torch

    if arch == "lstm":
        L = values["num_encoder_layers"]
        return [torch.zeros(L, 1, values["encoder_dim"]), torch.zeros(L, 1, values["rnn_hidden_size"])]
    if arch == "conv-emformer":
        d, k = values["encoder_dim"], values["cnn_module_kernel"]
        mem, lc = values["memory_size"], values["left_context_length"] // 4
        return [t for _ in range(values["num_encoder_layers"])
                for t in (torch.zeros(mem, 1, d), torch.zeros(lc, 1, d), torch.zeros(lc, 1, d),
                          torch.zeros(1, d, k - 1))]
    left = values["decode_chunk_len"] // 2 * values["num_left_chunks"]
    kinds = [[] for _ in range(7)]
    for L, d, a, ds, k in zip(values["num_encoder_layers"], values["encoder_dims"], values["attention_dims"],
                              values["zipformer_downsampling_factors"], values["cnn_module_kernels"]):
        c = left // ds
        for kind, shape in zip(kinds, ((L, 1), (L, 1, d), (L, c, 1, a), (L, c, 1, a // 2), (L, c, 1, a // 2),
                                       (L, 1, d, k - 1), (L, 1, d, k - 1))):
            kind.append(torch.zeros(*shape))
    return [t for kind in kinds for t in kind]


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CONFIGS])
def test_ncnn_matches_torch(runs, with_metadata, name):
    """Two chunks through the encoder, driven like sherpa-ncnn drives it, then the decoder and joiner."""
    import torch

    run = runs[name]
    meta = _meta(with_metadata, runs, name)
    arch, values = run.config.arch, meta.values
    segment, _ = get_arch(arch).segment_offset(values)
    keep: list = []
    rng = np.random.default_rng(0)

    from core.model.traced import load
    enc = load(run.exp_dir / "encoder_jit_trace-pnnx.pt", [run.outputs("encoder")["pnnxparam"]])
    net = _ncnn_net(meta.param, meta.bin, keep)
    assert net.layers()[0].type == META_TYPE and net.layers()[0].name == META_NAME
    n_states = len(get_arch(arch).io_contract(values).inputs) - 1
    n_extra = 1 if arch == "lstm" else 0  # in1 / out1: the lengths
    n_stacks = len(values["num_encoder_layers"]) if arch == "zipformer" else 0
    torch_states = _torch_zero_states(arch, values)
    ncnn_states = _sherpa_states(arch, values)
    assert len(ncnn_states) == len(torch_states) == n_states - n_extra
    for chunk in range(2):
        x = rng.standard_normal((1, segment, 80)).astype(np.float32)
        feeds = {"in0": x[0]}
        torch_in = [torch.from_numpy(x)]
        if arch == "lstm":  # sherpa-ncnn: a float Mat; icefall's trace: int64 lengths
            feeds["in1"] = np.array([float(segment)], dtype=np.float32)
            assert enc.lengths_index() == 1
            torch_in.append(torch.tensor([segment], dtype=getattr(torch, enc.specs[1].dtype)))
        for i, m in enumerate(ncnn_states):
            feeds[f"in{1 + n_extra + i}"] = m
        ref = enc(torch_in + list(torch_states))  # called as traced: (x, states) / (x, x_lens, (h, c))
        names = [f"out{i}" for i in range(1 + n_states)]
        got = _extract(net, feeds, names)
        for i, r in enumerate(ref):
            _close(f"{name} chunk {chunk} out{i}", np.array(got[f"out{i}"]), r.numpy())
        torch_states = list(ref[1 + n_extra:])
        ncnn_states = _sherpa_next_states(arch, [got[f"out{i}"] for i in range(1 + n_extra, 1 + n_states)],
                                          n_stacks)

    dec = torch.jit.load(str(run.exp_dir / "decoder_jit_trace-pnnx.pt")).eval()
    dnet = _ncnn_net(run.outputs("decoder")["ncnnparam"], run.outputs("decoder")["ncnnbin"], keep)
    for ids in ([5, 7], [0, 0], [63, 12]):
        with torch.no_grad():
            ref = dec(torch.tensor([ids], dtype=torch.int64), torch.tensor([False]))
        got = _extract(dnet, {"in0": np.array(ids, dtype=np.int32)}, ["out0"])
        _close(f"{name} decoder {ids}", np.array(got["out0"]), ref.numpy())

    join = torch.jit.load(str(run.exp_dir / "joiner_jit_trace-pnnx.pt")).eval()
    jnet = _ncnn_net(run.outputs("joiner")["ncnnparam"], run.outputs("joiner")["ncnnbin"], keep)
    d_enc = join.encoder_proj.weight.shape[1]
    d_dec = join.decoder_proj.weight.shape[1]
    e = rng.standard_normal((1, d_enc)).astype(np.float32)
    d = rng.standard_normal((1, d_dec)).astype(np.float32)
    with torch.no_grad():
        ref = join(torch.from_numpy(e), torch.from_numpy(d))
    got = _extract(jnet, {"in0": e[0], "in1": d[0]}, ["out0"])
    _close(f"{name} joiner", np.array(got["out0"]), ref.numpy())


# -- sherpa-ncnn ---------------------------------------------------------------------------------------

DECODE_SCRIPT = textwrap.dedent("""
    import sys, wave
    import numpy as np
    import sherpa_ncnn
    tokens, ep, eb, dp, db, jp, jb, *wavs = sys.argv[1:]
    for path in wavs:
        with wave.open(path) as w:
            sr = w.getframerate()
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        r = sherpa_ncnn.Recognizer(tokens=tokens, encoder_param=ep, encoder_bin=eb, decoder_param=dp,
                                   decoder_bin=db, joiner_param=jp, joiner_bin=jb, num_threads=1)
        r.accept_waveform(sr, samples)
        r.accept_waveform(sr, np.zeros(sr // 2, dtype=np.float32))  # 0.5 s tail padding
        r.input_finished()
        print(f"TEXT {path}: {r.text}", flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CONFIGS])
def test_sherpa_ncnn_decodes_the_demo_wavs(runs, with_metadata, name):
    run = runs[name]
    meta = _meta(with_metadata, runs, name)
    wavs = demo_recipe(run.config.arch).test_wavs
    enc, dec, join = (run.outputs(p) for p in ("encoder", "decoder", "joiner"))
    args = [run.tokens, meta.param, meta.bin, dec["ncnnparam"], dec["ncnnbin"], join["ncnnparam"],
            join["ncnnbin"], *wavs]
    proc = subprocess.run([sys.executable, "-c", DECODE_SCRIPT, *map(str, args)], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    texts = [line for line in proc.stdout.splitlines() if line.startswith("TEXT ")]
    assert len(texts) == len(wavs), proc.stdout
    assert "FATAL" not in proc.stderr and "still in use" not in proc.stderr, proc.stderr


# -- the variants follow their flags -------------------------------------------------------------------

@pytest.mark.slow
def test_variant_graphs_follow_the_flags(runs, with_metadata):
    zip_demo = _meta(with_metadata, runs, "zipformer")
    zip_two = _meta(with_metadata, runs, "zipformer-2-stacks")
    assert len(load_param(zip_demo.param).model.input_names) == 1 + 7 * 3
    assert len(load_param(zip_two.param).model.input_names) == 1 + 7 * 2
    assert "-23316=2,1,2" in zip_two.plan.line and "1=16" in zip_two.plan.line.split()
    assert "T: 23" in runs["zipformer-2-stacks"].export_stderr

    emf_demo = _meta(with_metadata, runs, "conv-emformer")
    emf_three = _meta(with_metadata, runs, "conv-emformer-3-layers")
    assert len(load_param(emf_demo.param).model.input_names) == 1 + 4 * 3
    assert len(load_param(emf_three.param).model.input_names) == 1 + 4 * 3
    assert emf_three.plan.line.split()[4:] == ["0=1", "1=3", "2=2", "3=5", "4=4", "5=16", "6=4", "7=24"]
