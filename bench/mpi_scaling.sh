#!/usr/bin/env bash
# Data-parallel scaling on this machine: training img/s of each model with 1 rank x T threads
# and with R ranks x (T/R) threads, measured back to back (so both see the same machine load),
# several repeats, from the second epoch of `cifar_prune train` on synthetic 32x32 data.
# Prints one line per run (img/s, communication ms/step from the trainer) and the ratios.
#
#   bench/mpi_scaling.sh [--bin build/bin/cifar_prune] [--models resnet20,vgg16] [--repeats 3]
#                        [--ranks 2] [--threads 2] [--images 512] [--batch 128]
set -euo pipefail
bin=build/bin/cifar_prune models=resnet20,vgg16 repeats=3 ranks=2 threads=2 images=512 batch=128
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "mpi_scaling.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "mpi_scaling.sh: $bin not found (build cifar_prune)" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "mpi_scaling.sh: mpirun not found (apt-get install openmpi-bin)" >&2; exit 1; }
root_flags=()
[ "$(id -u)" = 0 ] && root_flags=(--allow-run-as-root)
per_rank=$(( threads / ranks )); [ "$per_rank" -ge 1 ] || per_rank=1
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "synthetic 3x32x32, $images images/epoch, global batch $batch, img/s and comm of epoch 2"

# run NAME RANKS THREADS MODEL: prints "img/s comm_ms"; exits 1 (its subshell) when the run fails,
# so callers take its output with $(...) || exit 1: an exit inside a process substitution would
# not stop this script.
run() {
  local out=$work/$1 np=$2 t=$3 model=$4
  local args=(train --data synthetic --model "$model" --epochs 2 --batch-size "$batch" --train-subset "$images"
              --test-subset 128 --threads "$t" --out "$out")
  if [ "$np" = 1 ]; then "$bin" "${args[@]}" >/dev/null 2>"$out.err" || { cat "$out.err" >&2; exit 1; }
  else mpirun -np "$np" --oversubscribe --bind-to none "${root_flags[@]}" "$bin" "${args[@]}" >/dev/null 2>"$out.err" \
         || { cat "$out.err" >&2; exit 1; }
  fi
  python3 - "$out/log.jsonl" <<'EOF'
import json, sys
line = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f"{line['images_per_sec']:.1f} {1e3 * line.get('comm_seconds_per_step', 0):.1f}")
EOF
}

for model in ${models//,/ }; do
  ratios=()
  for r in $(seq 1 "$repeats"); do
    res=$(run "$model-1-$r" 1 "$threads" "$model") || exit 1
    read -r one one_comm <<<"$res"
    res=$(run "$model-$ranks-$r" "$ranks" "$per_rank" "$model") || exit 1
    read -r many many_comm <<<"$res"
    ratio=$(python3 -c "print(f'{$many / $one:.2f}')")
    ratios+=("$ratio")
    echo "$model repeat $r: 1 rank x $threads threads $one img/s | $ranks ranks x $per_rank threads $many img/s," \
         "comm $many_comm ms/step | ratio $ratio"
  done
  echo "$model: $ranks-rank / 1-rank img/s ratios: ${ratios[*]}"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
