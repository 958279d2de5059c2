"""Where the bundled demo recipes live, without importing torch.

The demo is the embedded default of the wizard: one small stand-in icefall
recipe per architecture under ``assets/demo`` (an ``export-for-ncnn.py`` with
icefall's flags and log lines, a checkpoint trained on espeak-ng speech,
bpe.model/tokens.txt) plus held-out 16 kHz test wavs with their transcripts
(validated with WER) and a few calibration wavs. This module only resolves paths and reads ``flags.txt``, so the
CLI and the TUI can offer the demo (and ``--help`` stays fast) without the heavy
imports; running the recipe is the pipeline's job.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from core.model.architectures import get_arch

# SHERPA_NCNN_WIZARD_DEMO_ROOT lets a packaged install point at assets shipped elsewhere.
DEMO_ROOT = Path(os.environ.get("SHERPA_NCNN_WIZARD_DEMO_ROOT")
                 or Path(__file__).resolve().parents[2] / "assets" / "demo")
ICEFALL_ROOT = DEMO_ROOT / "icefall"
TEST_WAVS = DEMO_ROOT / "test_wavs"
TRANSCRIPTS = TEST_WAVS / "transcripts.txt"  # "<wav name> <REFERENCE TEXT>" per line (upper case, like the tokens)
CALIBRATION_WAVS = DEMO_ROOT / "calibration_wavs"  # training-distribution speech, never trained on, not the test wavs


@dataclass(frozen=True)
class DemoRecipe:
    """Everything needed to run one demo recipe the way the wizard runs a user's icefall recipe.

    Run ``PYTHON export_script --exp-dir X --tokens tokens --epoch 99 --avg 1
    --use-averaged-model 0 *flags`` with cwd = ``recipe_dir.parent`` and
    ``icefall_root`` on PYTHONPATH, after linking ``checkpoint`` as
    ``X/epoch-99.pt`` (what icefall's docs do with a pretrained.pt).
    """

    arch: str
    icefall_root: Path  # goes on PYTHONPATH (provides the small ``icefall`` package)
    recipe_dir: Path  # .../egs/librispeech/ASR/<recipe>
    export_script: Path
    checkpoint: Path  # exp/pretrained.pt, {"model": state_dict}
    bpe_model: Path
    tokens: Path
    flags: list[str]  # the demo's model flags, icefall syntax (from flags.txt)
    test_wavs: list[Path]
    transcripts: dict[str, str]  # test wav path -> reference text
    calibration_wavs: list[Path]

    def missing(self) -> list[Path]:
        """Files of this recipe that are not there (an incomplete checkout or install)."""
        paths = [self.export_script, self.checkpoint, self.bpe_model, self.tokens, *self.test_wavs,
                 *self.calibration_wavs]
        return [p for p in paths if not p.is_file()]


def read_transcripts(path: Path = TRANSCRIPTS) -> dict[str, str]:
    """wav path -> reference text from ``<wav name> <TEXT>`` lines (empty when the file is absent)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, text = line.strip().partition(" ")
        if name and text.strip():
            out[str(path.parent / name)] = text.strip()
    return out


def demo_recipe(arch: str) -> DemoRecipe:
    """The demo recipe for ``arch`` (any name or alias core.model.architectures accepts)."""
    spec = get_arch(arch)
    models = DEMO_ROOT / "models" / spec.name
    flags_file = models / "flags.txt"
    if not flags_file.is_file():
        raise FileNotFoundError(f"the demo assets for {spec.name} are missing ({flags_file}); "
                                "restore them from the repository (git checkout assets/demo) or retrain them as "
                                "assets/demo/training/README.md says")
    recipe_dir = ICEFALL_ROOT / spec.recipe
    return DemoRecipe(
        arch=spec.name,
        icefall_root=ICEFALL_ROOT,
        recipe_dir=recipe_dir,
        export_script=ICEFALL_ROOT / spec.export_script,
        checkpoint=models / "exp" / "pretrained.pt",
        bpe_model=models / "data" / "lang_bpe_500" / "bpe.model",
        tokens=models / "data" / "lang_bpe_500" / "tokens.txt",
        flags=shlex.split(flags_file.read_text(encoding="utf-8")),
        test_wavs=sorted(TEST_WAVS.glob("*.wav")),
        transcripts=read_transcripts(),
        calibration_wavs=sorted(CALIBRATION_WAVS.glob("*.wav")) or sorted(TEST_WAVS.glob("*.wav")),
    )


def demo_config(arch: str):
    """A run configuration (core.pipeline.config.WizardConfig) for the demo recipe of ``arch``.

    Everything a user would fill in for their own model: the recipe and icefall
    root, the pretrained.pt (linked as epoch-99.pt by the pipeline), the
    bpe.model (so the demo also makes tokens.txt from it), the model flags, the
    calibration wavs, and the held-out test wavs with their transcripts for
    validation (so it reports WER). The output directory is left at the config
    default; callers choose it.
    """
    from core.pipeline.config import ConfigError, WizardConfig  # imported here: config pulls in tomllib only when asked

    recipe = demo_recipe(arch)
    missing = recipe.missing()
    if missing:
        raise ConfigError("the bundled demo is incomplete; missing: " + ", ".join(map(str, missing)))
    flags = recipe.flags
    if len(flags) % 2:
        raise ConfigError(f"{DEMO_ROOT / 'models' / recipe.arch / 'flags.txt'}: expected '--flag value' pairs")
    config = WizardConfig(arch=recipe.arch, demo=recipe.arch)
    config.hyperparameters = {flags[i].lstrip("-"): flags[i + 1] for i in range(0, len(flags), 2)}
    config.files.recipe = str(recipe.recipe_dir)
    config.files.icefall_root = str(recipe.icefall_root)
    config.files.checkpoint = str(recipe.checkpoint)
    config.files.bpe_model = str(recipe.bpe_model)
    config.calibration.wavs = [str(w) for w in recipe.calibration_wavs]
    config.validation.wavs = [str(w) for w in recipe.test_wavs]
    config.validation.transcripts = {w: t for w, t in recipe.transcripts.items() if Path(w) in recipe.test_wavs}
    return config
