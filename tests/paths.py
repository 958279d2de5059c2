"""Where the tests find things: the repository, its test fixtures, and ../shared beside the clone (the real icefall
artifacts). Defined once here; conftest.py and the test modules import them."""
from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
SHARED = REPO.parent / "shared"
SHARED_FIXTURES_DIR = SHARED / "fixtures"
KIT = SHARED_FIXTURES_DIR / "icefall-kit"  # six configurations of icefall's own exports (see its README)
SHARED_REAL = SHARED_FIXTURES_DIR / "icefall-real"  # the older three
