#!/usr/bin/env bash
# One entry point for a fresh clone: creates .venv/ when missing (or when the
# dependency files changed), then runs the demo, the tests or the tool itself.
#   ./dev.sh demo [ARCH]   set up, then run the main job on the bundled demo
#   ./dev.sh test [ARGS]   set up with the dev extras, then run the test suite
#   ./dev.sh run ARGS...   set up, then run sherpa-ncnn-wizard ARGS...
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="$here/.venv"
FALLBACK_PNNX=20241223  # = core.pnnx.convert.FALLBACK_VERSION (a test checks)
python="${PYTHON:-python3}"

setup() {
  local extras="$1"
  local stamp="$venv/.installed-$extras"
  local want
  want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
  if [ ! -x "$venv/bin/python" ]; then
    echo "[dev.sh] creating $venv" >&2
    "$python" -m venv "$venv"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[dev.sh] installing sherpa-ncnn-wizard[$extras] (pinned by constraints.txt)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      -c constraints.txt -e ".[$extras]"
    echo "$want" > "$stamp"
  fi
  # The fallback pnnx (core/pnnx_convert.py): a second wheel, unpacked beside the venv's own pnnx, for the
  # models whose conversion the pinned pnnx gets wrong (its shape-inference bug, e.g. icefall's ConvEmformer).
  local fallback="$venv/opt/pnnx-$FALLBACK_PNNX"
  if [ ! -x "$fallback/pnnx/pnnx" ]; then
    echo "[dev.sh] installing the fallback pnnx $FALLBACK_PNNX into $fallback" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$fallback" "pnnx==$FALLBACK_PNNX"
  fi
}

cmd="${1:-demo}"
shift || true
case "$cmd" in
  demo)
    setup main
    exec "$venv/bin/sherpa-ncnn-wizard" run --demo "${1:-zipformer}" "${@:2}"
    ;;
  test)
    setup dev
    # every core by default (pytest-xdist; tests sharing fixed paths stay on one worker); pass -n to choose
    case " $* " in *" -n "*|*" -n"[0-9]*|*" -p no:xdist "*) exec "$venv/bin/python" -m pytest "$@" ;; esac
    exec "$venv/bin/python" -m pytest -n auto --dist loadgroup "$@"
    ;;
  run)
    setup main
    exec "$venv/bin/sherpa-ncnn-wizard" "$@"
    ;;
  *)
    echo "usage: ./dev.sh demo [ARCH] | test [PYTEST ARGS] | run ARGS..." >&2
    exit 2
    ;;
esac
