#!/usr/bin/env bash
# Side-by-side benchmark: our CPU path against PyTorch (Debian's python3-torch) on this
# machine. Needs a build (scripts/setup.sh --with-torch). Flags: see bench/run.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
/usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "bench/run.sh: PyTorch missing: run scripts/setup.sh --with-torch" >&2; exit 1; }
exec /usr/bin/python3 bench/run.py "$@"
