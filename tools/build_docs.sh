#!/usr/bin/env bash
# Build the docs site into docs/, offline, from the notebooks' committed outputs: see tools/build_docs.py.
#   bash tools/build_docs.sh [--force] [--out DIR] [--no-export-check] [--n-workers N]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python tools/build_docs.py "$@"
