#!/usr/bin/env bash
# The GPU check, for the bare GPU machine (target: an H200 with CUDA 13 and PyTorch, none of our
# Debian packages, no package registry). It runs from the bundle that scripts/gpu_bundle.sh
# made on a CPU machine (gpu_bundle/: programs, their libraries, a CIFAR-10 subset) and builds
# here only when no bundle is present (which needs our build dependencies installed).
#
#   scripts/gpu_check.sh OUTDIR
#
# Steps, each stopped by a deadline so the whole check ends within DNNS_GPU_CHECK_SECONDS
# (default 360): hardware; the bundle's libraries resolved (cuBLAS/cudart looked for in the
# CUDA toolkit, then in PyTorch's nvidia wheels); the CUDA tests (including whole-model SGD
# steps against the CPU); training img/s of VGG-16 and ResNet-20 at batch 128, FP32 and TF32;
# dense and compact inference latency at batch 1 and 128; a short real training run; and every
# one of them in PyTorch on the same GPU in the same call (python3 there has it).
# Writes OUTDIR/log.txt, OUTDIR/results.jsonl ({"case", "side": ours|pytorch, "result"} per
# line) and OUTDIR/table.md (the figures side by side with the ratios).
# Without a GPU (e.g. on our CPU machines) the CPU-side steps still run (libraries, the CUDA
# test binary, which skips with a message, a CPU training step and a short CPU training run from
# the bundle) and every GPU step says that it is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
exec > >(tee "$out/log.txt") 2>&1
results="$out/results.jsonl"
: > "$results"
t_start=$(date +%s)
deadline=$((t_start + ${DNNS_GPU_CHECK_SECONDS:-360}))
step() { echo; echo "=== $* (+$(( $(date +%s) - t_start )) s)"; }
left() { echo $((deadline - $(date +%s))); }
failures=0

# run_case CASE SIDE SECONDS CMD...: runs CMD with a time limit (no more than what is left),
# stores its last JSON line as {"case": CASE, "side": SIDE, "result": ...}.
run_case() {
  local case=$1 side=$2 limit=$3; shift 3
  local l; l=$(left)
  [ "$l" -lt "$limit" ] && limit=$l
  if [ "$limit" -lt 5 ]; then  # a figure not measured is a failed check, not a pass
    echo "NOT RUN ($case, $side): the check's time is up"
    printf '{"case":"%s","side":"%s","error":"not run: time up"}\n' "$case" "$side" >> "$results"
    failures=$((failures + 1))
    return
  fi
  local o rc
  o=$(timeout "$limit" "$@" 2>"$out/stderr.tmp"); rc=$?
  local line; line=$(printf '%s\n' "$o" | grep '^{' | tail -n 1)
  if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
    echo "FAILED ($case, $side): exit $rc$([ "$rc" = 124 ] && echo ' (time limit)'): $*"
    tail -n 5 "$out/stderr.tmp"
    printf '{"case":"%s","side":"%s","error":"exit %s"}\n' "$case" "$side" "$rc" >> "$results"
    failures=$((failures + 1))
    return
  fi
  echo "$case [$side] $line"
  printf '{"case":"%s","side":"%s","result":%s}\n' "$case" "$side" "$line" >> "$results"
}

step "hardware"
gpu=0
if command -v nvidia-smi >/dev/null && [ -n "$(nvidia-smi -L 2>/dev/null | grep '^GPU')" ]; then
  gpu=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
else
  echo "no NVIDIA GPU here (nvidia-smi absent or lists none): the GPU steps below are skipped"
fi
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
export PATH=/usr/local/cuda/bin:$PATH
peer=0
if python3 -c 'import torch' 2>/dev/null; then
  peer=1
  python3 -c 'import torch; print("PyTorch", torch.__version__, "CUDA", torch.version.cuda, "sees a GPU:", torch.cuda.is_available())'
else
  echo "python3 has no torch: the PyTorch peer is skipped"
fi

step "programs"
if [ -x gpu_bundle/bin/cifar_prune ]; then
  bin=gpu_bundle/bin
  data=gpu_bundle/data/cifar10-jpeg
  sed -n '1,4p' gpu_bundle/MANIFEST.txt
  if [ ! -d gpu_bundle/lib ]; then  # unpack the carried libraries (xz, else Python's lzma)
    if command -v xz >/dev/null; then
      tar -C gpu_bundle -xJf gpu_bundle/lib.tar.xz
    else
      python3 -c 'import tarfile; tarfile.open("gpu_bundle/lib.tar.xz").extractall("gpu_bundle")'
    fi || { echo "cannot unpack gpu_bundle/lib.tar.xz"; exit 1; }
  fi
  export LD_LIBRARY_PATH=$PWD/gpu_bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
else
  echo "no gpu_bundle/ (made by scripts/gpu_bundle.sh): building here instead (needs our build dependencies)"
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DDNNS_CUDA=ON >/dev/null || exit 1
  cmake --build build-gpu -j "$(nproc)" --target cifar_prune bench test_cuda_ops > "$out/build.log" 2>&1 ||
    { tail -n 40 "$out/build.log"; echo "build failed"; exit 1; }
  mkdir -p build-gpu/tests
  bin=build-gpu/bin
  cp build-gpu/tests/test_cuda_ops "$bin/" 2>/dev/null
  data=${DNNS_GPU_DATA:-../shared/data/cifar10-jpeg}
fi
[ -d "$data/train" ] || { echo "no CIFAR-10 subset at $data: the short training run uses the synthetic set"; data=synthetic; }

# The CUDA toolkit's own libraries are not carried: find them where the programs look (RPATH:
# /usr/local/cuda/lib64, /usr/local/cuda/lib), else in the toolkit's other folders or PyTorch's
# nvidia wheels, and put that folder on LD_LIBRARY_PATH. If none has them, the GPU steps are
# skipped with the list of what is missing (the PyTorch peer still runs).
for p in cifar_prune bench test_cuda_ops; do
  [ -x "$bin/$p" ] || { echo "$bin/$p is missing: the bundle or build is incomplete"; exit 1; }
done
missing() { ldd "$bin"/cifar_prune "$bin"/bench "$bin"/test_cuda_ops 2>/dev/null | awk '/not found/ {print $1}' | sort -u; }
miss=$(missing)
if [ -n "$miss" ]; then
  echo "not found where the programs look: $(echo $miss | tr '\n' ' ')"
  roots="/usr/local/cuda /usr/local/cuda-13 /usr/lib/x86_64-linux-gnu"
  [ "$peer" = 1 ] && roots="$roots $(python3 -c 'import site; print(*site.getsitepackages())' 2>/dev/null)"
  for lib in $miss; do
    found=$(find -L $roots -maxdepth 5 -name "$lib" 2>/dev/null | head -n 1)
    if [ -n "$found" ]; then
      d=$(dirname "$found")
      echo "  $lib: found in $d"
      export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
    fi
  done
  miss=$(missing)
fi
if [ -n "$miss" ]; then
  echo "STILL MISSING: $(echo $miss | tr '\n' ' '): the programs cannot start; GPU steps skipped"
  printf '{"case":"libraries","side":"ours","error":"missing %s"}\n' "$(echo $miss | tr '\n' ' ')" >> "$results"
  gpu=0
  ours=0
else
  echo "every library resolved:"
  ldd "$bin/cifar_prune" | awk '/=>/ {print "  " $1 " -> " $3}'
  ours=1
fi

step "CUDA tests"
if [ "$ours" = 1 ]; then
  timeout "$(( $(left) < 120 ? $(left) : 120 ))" "$bin/test_cuda_ops" 2>&1 | tail -n 30
  rc=${PIPESTATUS[0]}
  echo "test_cuda_ops exit status: $rc"
  printf '{"case":"cuda tests","side":"ours","result":{"exit_status":%s,"gpu":%s}}\n' "$rc" "$gpu" >> "$results"
  # Without a GPU the CUDA tests skip (exit 77, tests/test_main.cpp); with one, anything but 0
  # is a failure (a 77 there would mean they did not run on the device).
  if [ "$rc" != 0 ] && ! { [ "$gpu" != 1 ] && [ "$rc" = 77 ]; }; then failures=$((failures + 1)); fi
fi

if [ "$gpu" = 1 ]; then
  step "training throughput, batch 128 (FP32, then TF32)"
  for model in vgg16 resnet20; do
    for tf in "" --tf32; do
      c="train $model b128${tf:+ tf32}"
      run_case "$c" ours 60 "$bin/bench" train --device cuda $tf --model "$model" --batch 128 --steps 20
      [ "$peer" = 1 ] && run_case "$c" pytorch 90 python3 bench/torch_peer.py train --device cuda $tf --model "$model" --batch 128 --steps 20
    done
  done

  step "inference latency, dense and compact (5% of VGG-16's weights, 10% of ResNet-20's)"
  tmp=$(mktemp -d)
  for md in vgg16:0.05 resnet20:0.1; do
    m=${md%%:*}
    run_case "compact $m" ours 60 "$bin/bench" compact --model "$m" --density "${md##*:}" --runs 3 \
      --save-masked "$tmp/$m-dense.dnns" --save-compact "$tmp/$m-compact.dnns"
    for kind in dense compact; do
      f="$tmp/$m-$kind.dnns"
      [ -f "$f" ] || continue
      for b in 1 128; do
        runs=50; [ "$b" = 128 ] && runs=20
        run_case "infer $m $kind b$b" ours 60 "$bin/bench" infer --device cuda --model "$f" --batch "$b" --runs "$runs"
        [ "$peer" = 1 ] &&  # the peer runs the same model file: same graph, same weights
          run_case "infer $m $kind b$b" pytorch 60 python3 bench/torch_peer.py infer --device cuda --model-file "$f" --batch "$b" --runs "$runs"
      done
    done
  done

  step "short real training run (ResNet-20, 2 epochs of the bundled CIFAR-10 subset)"
  run_case "train resnet20 2 epochs" ours 120 bash -c "'$bin/cifar_prune' train --device cuda --data '$data' --model resnet20 --epochs 2 --milestones 1 --threads $(nproc) --out '$tmp/run' >/dev/null && tail -n 1 '$tmp/run/log.jsonl'"
  cp "$tmp/run/log.jsonl" "$out/train_log.jsonl" 2>/dev/null
  [ "$peer" = 1 ] && [ "$data" != synthetic ] &&
    run_case "train resnet20 2 epochs" pytorch 120 python3 bench/torch_train_epoch.py "$data" --device cuda --epochs 2 --threads "$(nproc)"
  rm -rf "$tmp"
elif [ "$ours" = 1 ]; then
  step "no GPU: GPU steps skipped; the bundled programs on the CPU instead"
  run_case "cpu smoke: train step" ours 120 "$bin/bench" train --device cpu --model resnet20 --batch 8 --steps 1
  tmp=$(mktemp -d)
  run_case "cpu smoke: short training" ours 300 bash -c "'$bin/cifar_prune' train --device cpu --data '$data' --model resnet20 --epochs 1 --train-subset 256 --test-subset 128 --out '$tmp/run' >/dev/null && tail -n 1 '$tmp/run/log.jsonl'"
  rm -rf "$tmp"
fi

step "table"
if python3 bench/gpu_table.py "$results" > "$out/table.md"; then cat "$out/table.md"; else failures=$((failures + 1)); fi
rm -f "$out/stderr.tmp"
step "done: $failures failed step(s)"
[ "$failures" = 0 ]
