#!/usr/bin/python3
"""Runs our benchmarks (build/bin/bench) and the PyTorch peer (bench/torch_peer.py) side by
side on this machine and prints a Markdown table with the ratios, plus the hardware.

  bench/run.sh [--threads 2] [--quick] [--clock wall|cpu] [--repeat N] [--out bench/results.json]

--clock cpu compares the CPU time of each process per step / batch instead of the elapsed time:
with --threads 1 that is the work each side does, and it holds on a loaded machine, where the
elapsed times of the two sides are not comparable (the figures of a run say which clock).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write('failed: %s\n%s\n' % (' '.join(cmd), p.stderr))
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def cpu_name():
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--quick', action='store_true', help='fewer steps and runs')
    ap.add_argument('--build', default=os.path.join(ROOT, 'build'))
    ap.add_argument('--out', default='')
    ap.add_argument('--clock', default='wall', choices=['wall', 'cpu'])
    ap.add_argument('--repeat', type=int, default=1,
                    help='run each pair (ours, then the peer) this many times, alternating, and keep each '
                         "side's best: on a shared host the best of several is the closest to its unloaded speed")
    a = ap.parse_args()
    cpu_clock = a.clock == 'cpu'
    # (ours, peer) -> ms of one training step / inference batch on the chosen clock
    def step_ms(r):
        return r['cpu_ms_per_step_median'] if cpu_clock else r['ms_per_step_median']

    def batch_ms(r):
        return r['cpu_ms_median'] if cpu_clock else r['p50_ms']
    def pair(ours_cmd, peer_cmd, ms):
        # (ours, peer): each side's fastest of --repeat alternated runs (None where one failed)
        best_o = best_p = None
        for _ in range(max(1, a.repeat)):
            o, p = run_json(ours_cmd), run_json(peer_cmd)
            if o and (best_o is None or ms(o) < ms(best_o)):
                best_o = o
            if p and (best_p is None or ms(p) < ms(best_p)):
                best_p = p
        return best_o, best_p
    ours = os.path.join(a.build, 'bin', 'bench')
    peer = ['/usr/bin/python3', os.path.join(ROOT, 'bench', 'torch_peer.py')]
    t = ['--threads', str(a.threads)]
    steps = '3' if a.quick else '6'
    runs = '20' if a.quick else '100'
    rows, results = [], []
    print('# dnnshifter vs PyTorch, %s, %d threads, %s clock, %s' % (cpu_name(), a.threads, a.clock, platform.platform()))
    # The machine's sgemm peak on the same threads and clock, measured in this run: our rows
    # say what fraction of it they reach (FLOPs of the direct convolution: 2 x MACs forward,
    # 3x that for a training step; Winograd layers count as the direct FLOPs they replace).
    # It is measured at the start and again at the end, and the higher counts: a host busy
    # for a moment would otherwise understate it.
    peak_runs = []

    def measure_peak():
        pk = run_json([ours, 'peak'] + t)
        results.append(pk)
        if pk:
            peak_runs.append(2.0 * pk['size'] ** 3 / (pk['cpu_ms'] if cpu_clock else pk['ms']) / 1e6)
    measure_peak()

    def efficiency(r, ms):
        # (GFLOP/s, fraction of the peak, filled in at the end) of one of our results
        flops = r['gflops'] * (r['ms_per_step_median'] if 'ms_per_step_median' in r else r['p50_ms']) * 1e6
        return flops / ms / 1e6

    for model in ['resnet20', 'vgg16']:
        o, p = pair([ours, 'train', '--model', model, '--batch', '128', '--steps', steps] + t,
                    peer + ['train', '--model', model, '--batch', '128', '--steps', steps] + t, step_ms)
        results += [o, p]
        if o and p:
            rows.append(('train %s, batch 128 (img/s%s)' % (model, ', CPU time' if cpu_clock else ''),
                         128000 / step_ms(o), 128000 / step_ms(p), step_ms(p) / step_ms(o),
                         efficiency(o, step_ms(o))))

    with tempfile.TemporaryDirectory() as tmp:
        for model, density in [('vgg16', 0.05), ('resnet20', 0.1)]:
            dense = os.path.join(tmp, model + '-dense.dnns')
            compact = os.path.join(tmp, model + '-compact.dnns')
            c = run_json([ours, 'compact', '--model', model, '--density', str(density), '--save-masked', dense,
                          '--save-compact', compact] + t)
            results.append(c)
            if c:
                rows.append(('compact %s at %.0f%% weights (ms; DNNShifter: 41-222 ms)' % (model, density * 100),
                             c['ms_median'], None, None, None))
            # dense: the unpruned network (random weights; the dense kernels against oneDNN);
            # masked: the IMP level's file at that density, run as our plan chooses per layer
            # (sparse kernels where they measure faster), the peer running it dense;
            # compact: the compacted level, both sides dense-shaped.
            for kind, path in [('dense', model), ('masked %.0f%%' % (density * 100), dense), ('compact', compact)]:
                for batch in ['1', '128']:
                    oc = [ours, 'infer', '--model', path, '--batch', batch, '--runs', runs if batch == '1' else '5'] + t
                    pc = peer + ['infer', '--batch', batch, '--runs', runs if batch == '1' else '5'] + t
                    pc += ['--model-file', path] if os.path.exists(path) else ['--model', model]
                    o, p = pair(oc, pc, batch_ms)
                    results += [o, p]
                    if o and p:
                        # (a masked model's FLOPs are the dense ones it skips: no efficiency)
                        rows.append(('infer %s %s, batch %s (%s ms)' % (model, kind, batch, 'CPU' if cpu_clock else 'p50'),
                                     batch_ms(o), batch_ms(p), batch_ms(p) / batch_ms(o),
                                     None if kind.startswith('masked') else efficiency(o, batch_ms(o))))

    measure_peak()
    peak = max(peak_runs) if peak_runs else None
    print()
    if peak:
        print('sgemm peak (2048^3, %d threads, %s clock, best of two measurements in this run): %.1f GFLOP/s'
              % (a.threads, a.clock, peak))
    isa = next((r.get('isa') for r in results if r and r.get('isa')), '?')
    print('(our kernels: %s path)' % isa)
    print('| measurement | dnnshifter | PyTorch | speed-up | our GFLOP/s (of peak) |')
    print('|---|---:|---:|---:|---:|')
    for name, o, p, r, e in rows:
        eff = '-'
        if e:
            eff = '%.1f' % e + (' (%.0f%%)' % (100 * e / peak) if peak else '')
        print('| %s | %.2f | %s | %s | %s |' % (name, o, '%.2f' % p if p is not None else '-',
                                                '%.2fx' % r if r else '-', eff))
    if a.out:
        with open(a.out, 'w') as f:
            json.dump([r for r in results if r], f, indent=1)


if __name__ == '__main__':
    sys.exit(main())
