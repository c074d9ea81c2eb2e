#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (target: H200): builds with CUDA, runs the
# GPU tests, benchmarks training and inference on the GPU, and trains briefly on real data.
# Everything it prints also goes to OUTDIR/log.txt; results as JSON lines in OUTDIR/results.jsonl.
# Finishes in well under 8 minutes on an H200 machine (16 cores).
#
#   scripts/gpu_check.sh OUTDIR
#
# Data for the short training run: $DNNS_GPU_DATA, else ../shared/data/cifar10-jpeg, else a
# carried copy in gpu_data/ (git-ignored), else the synthetic set (said so in the log).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
results="$out/results.jsonl"
: > "$results"
step() { echo; echo "=== $* ($(date +%T))"; }

step "hardware"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi not available"
nproc
export PATH=/usr/local/cuda/bin:$PATH

step "build (CUDA on)"
missing=()
for p in libopenblas-dev libtbb-dev libstb-dev doctest-dev zlib1g-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DDNNS_CUDA=ON >/dev/null || exit 1
cmake --build build-gpu -j "$(nproc)" 2>&1 | grep -E "error|warning" || true
[ -x build-gpu/bin/bench ] || { echo "build failed"; exit 1; }

step "GPU tests"
build-gpu/tests/test_cuda_ops --duration=true 2>&1 | tail -40
echo "test_cuda_ops exit status: ${PIPESTATUS[0]}"

step "training throughput, batch 128 (FP32, then TF32)"
for model in vgg16 resnet20; do
  build-gpu/bin/bench train --device cuda --model "$model" --batch 128 --steps 30 | tee -a "$results"
  build-gpu/bin/bench train --device cuda --tf32 --model "$model" --batch 128 --steps 30 | tee -a "$results"
done

step "inference latency, dense and compact (5% of VGG-16's weights, 10% of ResNet-20's)"
tmp=$(mktemp -d)
build-gpu/bin/bench compact --model vgg16 --density 0.05 --runs 5 --save-masked "$tmp/vgg16.dnns" \
  --save-compact "$tmp/vgg16c.dnns" | tee -a "$results"
build-gpu/bin/bench compact --model resnet20 --density 0.1 --runs 5 --save-masked "$tmp/resnet20.dnns" \
  --save-compact "$tmp/resnet20c.dnns" | tee -a "$results"
for m in vgg16 vgg16c resnet20 resnet20c; do
  for b in 1 128; do
    build-gpu/bin/bench infer --device cuda --model "$tmp/$m.dnns" --batch $b --runs 50 | tee -a "$results"
  done
done

step "short real training run on the GPU"
data=${DNNS_GPU_DATA:-}
[ -z "$data" ] && [ -d ../shared/data/cifar10-jpeg/train ] && data=../shared/data/cifar10-jpeg
[ -z "$data" ] && [ -d gpu_data/cifar10-jpeg/train ] && data=gpu_data/cifar10-jpeg
if [ -z "$data" ]; then data=synthetic; echo "no CIFAR-10 copy on this machine: training on the synthetic set"; fi
timeout 240 build-gpu/bin/cifar_prune train --device cuda --data "$data" --model resnet20 --epochs 3 \
  --milestones 2 --out "$tmp/run" --threads "$(nproc)" 2>&1 | grep -v " step " | tail -8
[ -f "$tmp/run/metrics.json" ] && cat "$tmp/run/metrics.json" | tee -a "$results"
cp "$tmp/run/log.jsonl" "$out/train_log.jsonl" 2>/dev/null
rm -rf "$tmp"
step "done"
