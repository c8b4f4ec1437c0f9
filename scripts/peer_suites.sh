#!/usr/bin/env bash
# The peers' own test suites against fastxai's drop-in classes (make test-peers).
#   usage: scripts/peer_suites.sh PYTHON
# Runs Captum's per-class test files and torchattacks' code_coverage test with fastxai's classes
# swapped in (the runner scripts and the unmodified test files live in PEER_SUITES, default
# ../shared/peer-suites beside the checkout). Fails when Captum's share of passed tests is below
# CAPTUM_MIN_SHARE percent (default 95) or any torchattacks test fails. Where the suites are not
# present (a clone outside this workplace), says so and exits 0.
set -uo pipefail
py="${1:?usage: scripts/peer_suites.sh PYTHON}"
py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"
root="$(cd "$(dirname "$0")/.." && pwd)"
suites="${PEER_SUITES:-$root/../shared/peer-suites}"
min_share="${CAPTUM_MIN_SHARE:-95}"
if [ ! -x "$suites/run-captum-suite" ] || [ ! -x "$suites/run-torchattacks-suite" ]; then
  echo "peer suites: not found at $suites (set PEER_SUITES); skipped"
  exit 0
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
status=0

# Captum's files for the drop-in classes beyond the runner's default list (the runner counts a
# file whose class the drop-in lacks against Captum's own class, so these are named only once the
# classes exist).
extra_files=(
  tests/attr/layer/test_layer_gradient_shap.py tests/attr/layer/test_internal_influence.py
  tests/attr/neuron/test_neuron_gradient.py tests/attr/neuron/test_neuron_integrated_gradients.py
  tests/attr/neuron/test_neuron_gradient_shap.py tests/attr/neuron/test_neuron_deeplift.py
  tests/attr/neuron/test_neuron_ablation.py tests/attr/neuron/test_neuron_conductance.py
  tests/attr/test_feature_permutation.py tests/attr/layer/test_layer_deeplift.py
  tests/attr/layer/test_layer_feature_permutation.py tests/attr/layer/test_layer_lrp.py
  tests/attr/test_baselines.py tests/attr/test_dataloader_attr.py tests/attr/test_input_layer_wrapper.py
  tests/attr/test_stat.py tests/attr/test_summarizer.py tests/attr/test_class_summarizer.py
  tests/attr/models/test_base.py
  # test_llm_attr.py's classes that run fastxai's LLM faces (the CPU ones; TestVLLMProvider tests
  # Captum's own vLLM client, which needs the openai package, so it is left out)
  tests/attr/test_llm_attr.py::TestLLMAttr_0_cpu tests/attr/test_llm_attr.py::TestLLMAttr_1_cpu
  tests/attr/test_llm_attr.py::TestLLMGradAttr_0_cpu tests/attr/test_llm_attr.py::TestRemoteLLMAttr_0_cpu
)

captum_log="$(mktemp)"; extra_log="$(mktemp)"; ta_log="$(mktemp)"
trap 'rm -f "$captum_log" "$extra_log" "$ta_log"' EXIT
"$suites/run-captum-suite" "$py" | tee "$captum_log"
"$suites/run-captum-suite" "$py" "${extra_files[@]}" | tee "$extra_log"
total_of() { sed -n 's/^captum suite: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$1"; }
read -r passed failed < <(total_of "$captum_log")
read -r extra_passed extra_failed < <(total_of "$extra_log")
if [ -z "${passed:-}" ] || [ -z "${extra_passed:-}" ]; then
  echo "peer suites: the Captum runner printed no total"; status=1
else
  passed=$((passed + extra_passed)); failed=$((failed + extra_failed))
  total=$((passed + failed))
  share=$(( total > 0 ? 100 * passed / total : 0 ))
  echo "captum share: $passed of $total passed ($share%, at least $min_share% required)"
  [ "$share" -ge "$min_share" ] || status=1
fi

"$suites/run-torchattacks-suite" "$py" | tee "$ta_log"
if grep -Eq '(^| )[0-9]+ failed|error' "$ta_log" || ! grep -Eq '[0-9]+ passed' "$ta_log"; then
  echo "torchattacks suite: not every test passed"; status=1
fi
exit $status
