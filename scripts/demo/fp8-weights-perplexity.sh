#!/usr/bin/env bash
# Perplexity of both demo models with bf16 and FP8 weights, on the CPU and on a GPU (or
# cuda-emu): the effect of the FP8 GEMM's activation quantization beyond the weights' rounding,
# measured exactly on the CPU (`--fp8-activations dynamic`) and in f32 and bf16 on the GPU.
# The text is 40 samples the MLA demo model writes itself (seeds 1-40, temperature 0.8, about
# 5,100 tokens), so that it needs nothing outside the repository.
#   scripts/demo/fp8-weights-perplexity.sh [MLA_BINARY]       # with a GPU, or under cuda-emu:
#   LD_LIBRARY_PATH="$(cuda-emu/build.sh)" scripts/demo/fp8-weights-perplexity.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
mla=${1:-target/release/mla}
text=$(mktemp)
trap 'rm -f "$text"' EXIT
for seed in $(seq 1 40); do
  "$mla" generate --model models/demo-mla --prompt "It is a truth universally acknowledged" \
    --max-new-tokens 400 --temperature 0.8 --seed "$seed" 2>/dev/null >> "$text"
  echo >> "$text"
done
echo "| model | device | flags | perplexity |"
echo "|---|---|---|---:|"
for model in demo-mla demo-mha; do
  # The CPU's `dynamic` is what the FP8 GEMM computes, exactly: the GPU's f32 run must repeat it.
  for run in "cpu|" "cpu|--quantization fp8" "cpu|--quantization fp8 --fp8-activations dynamic" \
      "cuda|--dtype f32 --quantization fp8 --fp8-activations dynamic" "cuda|--dtype bf16" \
      "cuda|--dtype bf16 --quantization fp8" "cuda|--dtype bf16 --quantization fp8 --kv-cache-dtype fp8"; do
    device=${run%%|*}
    read -r -a flags <<< "${run#*|}"
    ppl=$("$mla" perplexity --model "models/$model" --file "$text" --context 256 --stride 128 \
      --device "$device" "${flags[@]}" 2>&1 | sed -n 's/^perplexity: *//p')
    echo "| $model | $device | ${run#*|} | $ppl |"
  done
done
