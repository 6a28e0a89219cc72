#!/usr/bin/env bash
# Prove the set-up on every Python found: for each of Python 3.10-3.13 on this machine (or the interpreters
# given as arguments), run scripts/setup_env.sh into a throwaway environment, then the arch, pipeline and
# upscale tests in it, and print a table. Not part of CI: it downloads and installs gigabytes.
#   bash scripts/check_setup.sh                      # every python3.1x found (PATH, then pyenv)
#   bash scripts/check_setup.sh python3.12 /usr/bin/python3.11
# Writes the table to stdout and to ${LKSMN_CHECK_OUT:-check_setup.md}; each log to a temporary folder.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${LKSMN_CHECK_OUT:-check_setup.md}"
work="$(mktemp -d)"
candidates=("$@")
if [[ ${#candidates[@]} -eq 0 ]]; then
  for minor in 10 11 12 13; do
    for c in "python3.$minor" "$(pyenv root 2>/dev/null)"/versions/3.$minor*/bin/python3.$minor; do
      if "$c" -c "import sys; assert sys.version_info[:2] == (3, $minor)" 2>/dev/null; then
        candidates+=("$c"); break
      fi
    done
  done
fi
rows=("| Python | torch build | set-up time | venv size | tests (arch, pipeline, upscale) |" "|---|---|---:|---:|---|")
for python in "${candidates[@]}"; do
  version="$("$python" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "$python: not runnable")"
  venv="$work/venv-$version"
  echo "[check] Python $version ($python): setting up $venv" >&2
  start=$SECONDS
  if LKSMN_PYTHON="$python" LKSMN_VENV="$venv" bash "$root/scripts/setup_env.sh" > "$work/setup-$version.log" 2>&1; then
    took="$((SECONDS - start)) s"
    torch="$("$venv/bin/python" -c 'import torch; print(torch.__version__, "(CUDA " + torch.version.cuda + ")" if torch.version.cuda else "(CPU)")')"
    size="$(du -sh "$venv" | cut -f1)"
    echo "[check] Python $version: testing" >&2
    (cd "$root" && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_lksmn_arch.py tests/test_pipeline.py \
      tests/test_upscale.py) > "$work/tests-$version.log" 2>&1
    tests="$(grep -E '^[0-9]+ (passed|failed)|^(FAILED|ERROR)' "$work/tests-$version.log" | tail -n 1)"
  else
    took="failed after $((SECONDS - start)) s"; torch="-"; size="-"
    tests="set-up failed: $(grep -v '^\s*$' "$work/setup-$version.log" | tail -n 1)"
  fi
  rows+=("| $version | $torch | $took | $size | ${tests:-no result} |")
  rm -rf "$venv"
done
printf '%s\n' "${rows[@]}" | tee "$out"
echo "[check] logs in $work" >&2
