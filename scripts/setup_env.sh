#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv on a CPU machine.
# Idempotent: re-running with unchanged requirements does nothing.
#   LKSMN_VENV=path   use another environment folder
#   LKSMN_EXTRAS=...  pip extras to install (default: test,onnx,openvino,bench,spandrel)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LKSMN_VENV:-$root/.venv}"
extras="${LKSMN_EXTRAS:-test,onnx,openvino,bench,spandrel}"
stamp="$venv/.lksmn-installed"
want="$(cat "$root/setup.py" "$root/constraints-cpu.txt" "$0" | sha256sum | cut -c1-16) $extras"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
start=$SECONDS
echo "[setup] creating environment in $venv (CPU torch, pinned by constraints-cpu.txt)"
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
quiet "${pip[@]}" install --upgrade pip setuptools wheel
# torch first: basicsr's setup.py imports it, and it is built without build isolation
# (with isolation pip would fetch ~2.6 GB of CUDA torch just to build basicsr).
quiet "${pip[@]}" install -c "$root/constraints-cpu.txt" torch cython numpy
quiet "${pip[@]}" install --no-build-isolation -c "$root/constraints-cpu.txt" -e "$root[$extras]"
if "$venv/bin/python" -m pip list 2>/dev/null | grep -qi '^nvidia'; then
  echo "[setup] error: CUDA packages were installed into $venv" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "[setup] done in $((SECONDS - start)) s; environment size: $(du -sh "$venv" | cut -f1)"
