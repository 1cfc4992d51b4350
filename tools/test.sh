#!/usr/bin/env bash
# Run every test of the project: the README's test command runs this, and so does CI (.ci/run).
#
#   bash tools/test.sh              # export check, every notebook (nbdev-test), then pytest tests/
#   bash tools/test.sh -k docs      # arguments go to pytest
#
# 1. export check: the library (compass_nbdev/) must be exactly what the notebooks export;
# 2. nbdev-test --n-workers 2 --timing: every notebook under nbs/, top to bottom, without `#| slow` and `#| cuda`
#    cells (pyproject's tst_flags); run `nbdev-test --flags slow` yourself for those;
# 3. pytest tests/ (it builds the docs site and opens it in headless Chromium, among the rest).
# All three run even when one fails; the exit code is non-zero when any failed.
#
# Environment (this script sets none of them, except TRITON_INTERPRET where no GPU is visible):
#   COMPASS_DATA_DIR   the real data (a folder laid out as ../shared/data); unset: the embedded synthetic corpus
#   TRITON_INTERPRET   1 runs Triton kernels on the CPU; set to 1 here when nvidia-smi finds no GPU
#   COMPASS_ARTIFACTS  where tests leave artifacts (screenshots); default: artifacts/
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -z "${TRITON_INTERPRET+x}" ] && ! nvidia-smi -L >/dev/null 2>&1; then
  export TRITON_INTERPRET=1
  echo "test.sh: no GPU visible: TRITON_INTERPRET=1 (Triton kernels run in the interpreter, on the CPU)"
fi
export COMPASS_ARTIFACTS="${COMPASS_ARTIFACTS:-$PWD/artifacts}"
echo "test.sh: COMPASS_DATA_DIR=${COMPASS_DATA_DIR:-<unset: synthetic corpus>} TRITON_INTERPRET=${TRITON_INTERPRET:-<unset>}"
echo "test.sh: $(nproc) CPU(s), $(python --version 2>&1), artifacts in $COMPASS_ARTIFACTS"

summary=()
failed=0
phase() {  # phase NAME COMMAND...: run one step, time it, remember how it went
  local name=$1; shift
  local t0=$SECONDS
  echo; echo "=== test.sh: $name: $*"
  "$@"
  local rc=$?
  local verdict="ok"
  [ $rc -ne 0 ] && verdict="FAILED (exit $rc)" && failed=1
  summary+=("$name: $verdict in $((SECONDS - t0))s")
}

phase "export check" python tools/export_check.py
phase "notebooks" nbdev-test --n-workers 2 --timing

pytest_log=$(mktemp)
run_pytest() {  # pytest, with its output kept to find its closing line; exit 5 (no tests collected) is a failure
  python -m pytest tests/ --durations=10 "$@" 2>&1 | tee "$pytest_log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 5 ] && echo "test.sh: pytest collected no tests"
  return "$rc"
}
phase "pytest" run_pytest "$@"
last=$(grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* =+$' "$pytest_log" | tail -1)
rm -f "$pytest_log"

echo; echo "=== test.sh summary ($((SECONDS / 60))m $((SECONDS % 60))s in all)"
printf '  %s\n' "${summary[@]}"
[ -n "$last" ] && echo "$last"   # pytest's own closing line, last, for whoever reads the log
exit $failed
