"""Shared test helpers: fixture paths and an in-process CLI runner."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.paths import FIXTURES as _TEST_FIXTURES
from tests.paths import REPO, SHARED_REAL  # noqa: F401  (REPO: for tests that import it from here)

FIXTURES = _TEST_FIXTURES / "icefall-real"
SHARED_FIXTURES = SHARED_REAL
ARCH_DIRS = {"zipformer": "zipformer", "conv-emformer": "conv-emformer", "lstm": "lstm"}


def fixture_flags(arch: str) -> list[str]:
    return (FIXTURES / ARCH_DIRS[arch] / "export-flags.txt").read_text().split()


def pytest_collection_modifyitems(config, items):
    """End-to-end tests (tests/e2e) run the whole tool chain: marked slow wherever they are collected from."""
    e2e = Path(__file__).resolve().parent / "e2e"
    for item in items:
        if e2e in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def private_state(tmp_path_factory, monkeypatch):
    """Recent-runs state goes to a temp dir, never the user's home."""
    monkeypatch.setenv("SHERPA_NCNN_WIZARD_STATE", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def model_dir(tmp_path):
    """Copy a fixture's params and tokens to a writable dir, with small stand-in .bin files."""
    def make(arch: str) -> Path:
        dst = tmp_path / arch
        dst.mkdir()
        for f in (FIXTURES / ARCH_DIRS[arch]).iterdir():
            if f.suffix in (".param", ".txt") and f.name != "export-flags.txt":
                shutil.copy(f, dst / f.name)
                if f.suffix == ".param":
                    (dst / (f.name[:-len(".param")] + ".bin")).write_bytes(b"\0" * 16)
        return dst
    return make


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from tui.cli.main import main

    def run(*args: str):
        capsys.readouterr()  # drop whatever the test printed before
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


@pytest.fixture
def cli_json(cli):
    def run(*args: str):
        code, out, err = cli(*args, "--json")
        return code, json.loads(out)
    return run


@pytest.fixture
def read_only_dir():
    """Make a directory unwritable, even for root (chattr +i), for the duration of a with-block."""
    import contextlib
    import os
    import shutil as _shutil
    import subprocess

    @contextlib.contextmanager
    def make(path):
        if os.geteuid() == 0:
            if not _shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)]).returncode:
                pytest.skip("cannot make a directory read-only for root here")
            try:
                yield
            finally:
                subprocess.run(["chattr", "-i", str(path)])
        else:
            os.chmod(path, 0o500)
            try:
                yield
            finally:
                os.chmod(path, 0o700)
    return make
