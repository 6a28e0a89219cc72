#!/usr/bin/env bash
# Wheels that the lent GPU machine (CPython 3.12, x86-64, no index) lacks for benchmarks/gpu_check.py:
# basicsr 1.4.2 (built here from its sdist, pure Python), lmdb < 2 and the pure-Python packages basicsr and
# spandrel need there. Written to .whl/ in the repository (gitignored); name .whl in the device tool's carry.
# Then checks that they install into a clean Python 3.12 environment with --no-index.
#   bash scripts/gpu_wheels.sh [OUT_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/.whl}"
bash "$root/scripts/setup_env.sh"   # basicsr's setup.py imports torch: build it with the project's environment
py="${LKSMN_VENV:-$root/.venv}/bin/python"
rm -rf "$out" && mkdir -p "$out"
"$py" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$out" basicsr==1.4.2
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
quiet "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$out" 'lmdb==1.7.5' 'addict==2.4.0' 'yapf==0.43.0' 'platformdirs==4.3.8' \
  'future==1.0.0' 'spandrel==0.4.2'
ls -la "$out"
python312=""
for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    python312="$candidate"; break
  fi
done
if [[ -n "$python312" ]]; then
  check="$(mktemp -d)"
  "$python312" -m venv "$check/venv"
  "$check/venv/bin/python" -m pip install --quiet --no-index --no-deps --no-compile "$out"/*.whl
  echo "[gpu_wheels] installed into a clean Python 3.12 environment with --no-index:"
  "$check/venv/bin/python" -m pip list --format=freeze | grep -v -E '^(pip|setuptools)=='
  rm -rf "$check"
else
  echo "[gpu_wheels] no python3.12 here: the --no-index install was not checked"
fi
du -sh "$out"
