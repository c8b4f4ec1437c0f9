#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with nvcc alone (no torch) for each target architecture, with
# warnings as errors, to catch CUDA build breaks on machines without a GPU or a CUDA torch.
#
#   bash scripts/compile_cuda.sh            # sm_80 and sm_90
#   CUDA_ARCHS="80 90 100" bash scripts/compile_cuda.sh
#   NVCC=/usr/local/cuda/bin/nvcc bash scripts/compile_cuda.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "${nvcc}" && -x /usr/local/cuda/bin/nvcc ]]; then
  nvcc=/usr/local/cuda/bin/nvcc
fi
if [[ -z "${nvcc}" ]]; then
  echo "compile_cuda.sh: nvcc not found (set NVCC or put it on PATH)" >&2
  exit 2
fi
read -r -a archs <<< "${CUDA_ARCHS:-80 90}"

out="$(mktemp -d)"
trap 'rm -rf "${out}"' EXIT

shopt -s nullglob
sources=("${root}"/csrc/cuda/*.cu)
if (( ${#sources[@]} == 0 )); then
  echo "compile_cuda.sh: no .cu files under csrc/cuda" >&2
  exit 2
fi

"${nvcc}" --version | tail -n 1
status=0
for src in "${sources[@]}"; do
  for arch in "${archs[@]}"; do
    name="$(basename "${src}" .cu)"
    echo "nvcc ${src#"${root}"/} -arch=sm_${arch}"
    if ! "${nvcc}" -std=c++17 -O3 -c "${src}" -I "${root}/csrc" -arch="sm_${arch}" \
        --Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
        -o "${out}/${name}.sm_${arch}.o"; then
      echo "FAILED: ${src#"${root}"/} for sm_${arch}" >&2
      status=1
    fi
  done
done
if (( status == 0 )); then
  echo "compile_cuda.sh: all CUDA sources compiled"
fi
exit "${status}"
