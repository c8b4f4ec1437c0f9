#!/usr/bin/env bash
# Download, here, the Python wheels that `scripts/gpu_check.sh` needs on the lent GPU machine and
# that its image lacks (it has no package index): they go to the git-ignored .whl/ folder, which
# that travels with the checkout to the GPU machine, where gpu_check.sh installs them with pip --no-index.
#
#   bash scripts/gpu_wheels.sh              # Python 3.12, x86-64 (the GPU image)
#   PY_VERSION=3.13 bash scripts/gpu_wheels.sh
#
# The image (the device README's KINDS.md) has torch, Triton, numpy, scipy, scikit-learn, tqdm,
# pytest, pytest-xdist, hypothesis, pytest-benchmark, pybind11, cmake, ninja, click, pillow and
# torchvision; it lacks Captum, torchattacks, parameterized and Zennit (the peers). hypothesis and
# pytest-benchmark travel anyway, at the versions the tests were written against here (this
# pytest-benchmark reads the CPU through py-cpuinfo2, which the image lacks). --no-deps fetches
# none of their needs: the listing printed below names them, and the image has the rest.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python3)}"
dest="${root}/.whl"
wheels=(
  captum==0.9.0
  torchattacks==3.5.1
  parameterized==0.9.0
  zennit==0.5.1
  pytest-benchmark==5.3.1
  py-cpuinfo2==10.1.1
  hypothesis==6.170.17
)

mkdir -p "${dest}"
# One version of each package: two wheels of one name stop the whole install there.
for spec in "${wheels[@]}"; do
  name="${spec%%==*}"
  stem="${name//-/_}"
  find "${dest}" -maxdepth 1 -iname "${stem}-*.whl" ! -iname "${stem}-${spec##*==}-*.whl" -delete
done
"${python}" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version "${PY_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "${dest}" "${wheels[@]}"

echo "gpu_wheels.sh: ${dest}"
for wheel in "${dest}"/*.whl; do
  needs="$(unzip -p "${wheel}" '*/METADATA' | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \
    | sed 's/[ ;<>=!~(].*//' | sort -u | tr '\n' ' ' || true)"
  printf '  %-50s needs: %s\n' "$(basename "${wheel}")" "${needs:-nothing}"
done
du -sh "${dest}" | sed 's/^/  total /'
