#!/usr/bin/env bash
# Set up .venv if needed (CPU torch), then run the main job on its embedded default.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
exec "${LKSMN_VENV:-$root/.venv}/bin/python" -m lksmn_arch.complexity --scale 4 "$@"
