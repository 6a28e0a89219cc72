#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment, .venv by default. Idempotent: re-running with unchanged
# requirements does nothing. Every choice is printed.
#   LKSMN_PYTHON=python3.12   the interpreter (default: the first of python3, python3.13, python3.12, python3.11,
#                             python3.10 that is Python 3.10-3.13)
#   LKSMN_VENV=path           another environment folder (an existing one keeps the torch it has)
#   LKSMN_EXTRAS=...          pip extras to install (default: test,onnx,openvino,bench,spandrel)
#   LKSMN_TORCH_INDEX=URL     the PyTorch CPU wheel index, or a mirror of it (default https://download.pytorch.org/whl/cpu)
# torch, in this order: one already importable in the environment (GPU users bring their own CUDA build); the
# pinned CPU build where the configured indexes have it; the CPU build from LKSMN_TORCH_INDEX; last the package
# index's default build (CUDA on Linux, several GB), with a line saying so.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LKSMN_VENV:-$root/.venv}"
extras="${LKSMN_EXTRAS:-test,onnx,openvino,bench,spandrel}"
torch_index="${LKSMN_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
torch_version="$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' "$root/constraints-cpu.txt")"

supported() { "$1" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; }
if [[ -n "${LKSMN_PYTHON:-}" ]]; then
  python="$LKSMN_PYTHON"
  if ! supported "$python"; then
    echo "[setup] error: LKSMN_PYTHON=$python is not a Python 3.10-3.13 interpreter (torch 2.13 needs 3.10 or newer;" \
         "3.14 is not tested)" >&2
    exit 2
  fi
else
  python=""
  for candidate in python3 python3.13 python3.12 python3.11 python3.10; do
    if supported "$candidate"; then python="$candidate"; break; fi
  done
  if [[ -z "$python" ]]; then
    echo "[setup] error: no Python 3.10-3.13 found (python3 is $(python3 --version 2>&1)); install one or set" \
         "LKSMN_PYTHON to it" >&2
    exit 2
  fi
fi
py_version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

stamp="$venv/.lksmn-installed"
want="$(cat "$root/setup.py" "$root/constraints-cpu.txt" "$0" "$root/scripts/basicsr_wheel.py" | sha256sum | cut -c1-16) $extras $py_version"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
start=$SECONDS
if [[ -x "$venv/bin/python" ]] && [[ "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$py_version" ]]; then
  echo "[setup] error: $venv is a Python $("$venv/bin/python" --version 2>&1 | cut -d' ' -f2) environment, not $py_version;" \
       "delete it or choose another LKSMN_VENV" >&2
  exit 2
fi
echo "[setup] environment $venv with $python (Python $py_version)"
"$python" -m venv "$venv"
vpy="$venv/bin/python"
pip=("$vpy" -m pip --quiet --disable-pip-version-check)
quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
probe() { quiet "${pip[@]}" install --dry-run --no-deps "$@" >/dev/null 2>&1; }
quiet "${pip[@]}" install --upgrade pip setuptools wheel

# 1. torch
if "$vpy" -c 'import torch' 2>/dev/null; then
  echo "[setup] torch: keeping torch $("$vpy" -c 'import torch; print(torch.__version__)') already in $venv"
elif probe "torch==$torch_version+cpu"; then
  echo "[setup] torch: the pinned CPU build torch==$torch_version+cpu, from the configured package indexes"
  quiet "${pip[@]}" install "torch==$torch_version+cpu"
elif probe --timeout 20 --retries 0 --extra-index-url "$torch_index" "torch==$torch_version+cpu"; then
  echo "[setup] torch: the CPU build torch==$torch_version+cpu from $torch_index (LKSMN_TORCH_INDEX)"
  quiet "${pip[@]}" install --extra-index-url "$torch_index" "torch==$torch_version+cpu"
else
  echo "[setup] torch: no CPU build of torch $torch_version for Python $py_version in the configured indexes or at" \
       "$torch_index; installing the package index's default build of torch==$torch_version (on Linux a CUDA build:" \
       "about 3.7 GB more disk with its nvidia packages). Set LKSMN_TORCH_INDEX to a mirror of the PyTorch CPU index" \
       "to avoid it."
  quiet "${pip[@]}" install "torch==$torch_version"
fi
torch_build="$("$vpy" -c 'import torch; print(torch.__version__, "CUDA " + torch.version.cuda if torch.version.cuda else "CPU")')"
# keep exactly this torch (and a torchvision already there) through every later step
pins="$venv/.lksmn-pins.txt"
"$vpy" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | grep -E '^(torch|torchvision)==' > "$pins"
constraints=(-c "$pins")
if grep -q "^torch==$torch_version" "$pins"; then
  constraints+=(-c "$root/constraints-cpu.txt")   # the torchvision that matches torch $torch_version
fi

# 2. basicsr 1.4.2 without build isolation (its setup.py would otherwise pull a CUDA torch into a build env);
#    on Python 3.13 its setup.py needs one build-time fix (scripts/basicsr_wheel.py says which)
quiet "${pip[@]}" install "${constraints[@]}" cython numpy
if [[ "$py_version" == "3.13" ]]; then
  echo "[setup] basicsr: Python 3.13: building basicsr 1.4.2's wheel with the get_version fix (scripts/basicsr_wheel.py)"
  wheel="$("$vpy" "$root/scripts/basicsr_wheel.py" "$venv/.basicsr-wheel")"
  quiet "${pip[@]}" install --no-build-isolation "${constraints[@]}" "$wheel"
fi
quiet "${pip[@]}" install --no-build-isolation "${constraints[@]}" -e "$root[$extras]"

# 3. no CUDA packages unless this torch needs them
if [[ "$torch_build" == *CPU ]] && "$vpy" -m pip list 2>/dev/null | grep -qi '^nvidia'; then
  echo "[setup] error: CUDA packages were installed into $venv beside a CPU torch" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "[setup] done in $((SECONDS - start)) s: torch $torch_build; environment size $(du -sh "$venv" | cut -f1)"
