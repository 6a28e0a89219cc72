#!/usr/bin/env bash
# Set up .venv if needed (CPU torch), then run the main job on its embedded default: the LKSMN x4 demo
# (train on scikit-image's photos through BasicSR, test on held-out photos against bicubic).
# Output: demo_output/ in the current directory. Extra arguments go to lksmn-demo (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
exec "${LKSMN_VENV:-$root/.venv}/bin/python" -m lksmn_arch.cli.demo "$@"
