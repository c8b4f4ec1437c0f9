#!/usr/bin/env bash
# The one command to validate a GPU machine: build fastxai's CUDA kernels for sm_90, run the
# gpu-marked tests and the equivalence suite on cuda (native and Triton), compute-sanitizer on a
# short equivalence run, the fused ops' bandwidth and the benchmarks; one JSON and one text
# summary in $OUT, within 8 minutes on an H200. Stages and outputs: scripts/gpu_check.py.
#
#   bash scripts/gpu_check.sh                 # GPU run (the checkout copied there with .whl/)
#   bash scripts/gpu_check.sh --dry-run       # the same stages on the CPU (what `make test` runs)
#   bash scripts/gpu_check.sh --stages benchmarks --budget 300   # a second call on a warm machine
#
# PYTHON picks the interpreter (default: .venv/bin/python where it exists, else python3, which on
# the GPU image is the one with torch). Wheels in .whl/ (scripts/gpu_wheels.sh downloads them
# here) are installed first, with no index, into a folder put on PYTHONPATH.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
export PYTHONUNBUFFERED=1

dry=0
for arg in "$@"; do
  [[ "${arg}" == "--dry-run" ]] && dry=1
done

python="${PYTHON:-}"
if [[ -z "${python}" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python="$(command -v python3)"; fi
fi

shopt -s nullglob
wheels=(.whl/*.whl)
if (( dry )); then
  echo "gpu_check.sh: dry run: carried wheels not installed (${#wheels[@]} in .whl/)"
elif (( ${#wheels[@]} )); then
  site="${GPU_CHECK_SITE:-/tmp/fastxai-gpu-site}"
  echo "gpu_check.sh: installing ${#wheels[@]} carried wheels into ${site}"
  if "${python}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "${site}" "${wheels[@]}"; then
    export PYTHONPATH="${site}${PYTHONPATH:+:${PYTHONPATH}}"
  else
    echo "gpu_check.sh: installing the wheels failed: the peers (Captum, torchattacks) will be missing"
  fi
else
  echo "gpu_check.sh: no wheels in .whl/ (run scripts/gpu_wheels.sh where there is a package index and copy .whl/ along): peers missing"
fi

exec "${python}" scripts/gpu_check.py "$@"
