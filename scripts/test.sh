#!/usr/bin/env bash
# Set up .venv if needed (CPU torch), then run the test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
exec "${LKSMN_VENV:-$root/.venv}/bin/python" -m pytest -q tests "$@"
