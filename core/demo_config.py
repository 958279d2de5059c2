"""A run configuration for a bundled demo recipe: the wizard's embedded default."""
from __future__ import annotations

import sys

from .architectures import get_arch
from .config import ConfigError, WizardConfig
from .demo import demo_recipe


def demo_config(arch: str) -> WizardConfig:
    """The config that runs the demo recipe of ``arch`` like a user's icefall recipe.

    tokens.txt is made from the demo's bpe.model, so the demo also exercises
    that step.
    """
    spec = get_arch(arch)
    recipe = demo_recipe(spec.name)
    missing = recipe.missing()
    if missing:
        raise ConfigError("the bundled demo is incomplete; missing: " + ", ".join(map(str, missing)))
    flags = recipe.flags
    hyper = {flag.lstrip("-"): value for flag, value in zip(flags[0::2], flags[1::2])}
    config = WizardConfig(arch=spec.name, hyperparameters=hyper, demo=spec.name)
    config.files.recipe = str(recipe.recipe_dir)
    config.files.icefall_root = str(recipe.icefall_root)
    config.files.checkpoint = str(recipe.checkpoint)
    config.files.bpe_model = str(recipe.bpe_model)
    config.files.python = sys.executable
    config.validation.wavs = [str(w) for w in recipe.test_wavs]
    return config
