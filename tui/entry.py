"""Console-script entry point: a Ctrl-C while Python is still importing the CLI ends quietly with exit 130."""
from __future__ import annotations

import sys


def main() -> int:
    try:
        from tui.cli.main import main as cli_main
        return cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
