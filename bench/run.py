#!/usr/bin/python3
"""Runs our benchmarks (build/bin/bench) and the PyTorch peer (bench/torch_peer.py) side by
side on this machine and prints a Markdown table with the ratios, plus the hardware.

  bench/run.sh [--threads 2] [--quick] [--out bench/results.json]
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
    a = ap.parse_args()
    ours = os.path.join(a.build, 'bin', 'bench')
    peer = ['/usr/bin/python3', os.path.join(ROOT, 'bench', 'torch_peer.py')]
    t = ['--threads', str(a.threads)]
    steps = '3' if a.quick else '6'
    runs = '20' if a.quick else '100'
    rows, results = [], []
    print('# dnnshifter vs PyTorch, %s, %d threads, %s' % (cpu_name(), a.threads, platform.platform()))

    for model in ['resnet20', 'vgg16']:
        o = run_json([ours, 'train', '--model', model, '--batch', '128', '--steps', steps] + t)
        p = run_json(peer + ['train', '--model', model, '--batch', '128', '--steps', steps] + t)
        results += [o, p]
        if o and p:
            rows.append(('train %s, batch 128 (img/s)' % model, o['images_per_sec'], p['images_per_sec'],
                         o['images_per_sec'] / p['images_per_sec']))

    with tempfile.TemporaryDirectory() as tmp:
        for model, density in [('vgg16', 0.05), ('resnet20', 0.1)]:
            dense = os.path.join(tmp, model + '-dense.dnns')
            compact = os.path.join(tmp, model + '-compact.dnns')
            c = run_json([ours, 'compact', '--model', model, '--density', str(density), '--save-masked', dense,
                          '--save-compact', compact] + t)
            results.append(c)
            if c:
                rows.append(('compact %s at %.0f%% weights (ms; DNNShifter: 41-222 ms)' % (model, density * 100),
                             c['ms_median'], None, None))
            for kind, path in [('dense', dense), ('compact', compact)]:
                for batch in ['1', '128']:
                    o = run_json([ours, 'infer', '--model', path, '--batch', batch, '--runs', runs if batch == '1' else '5'] + t)
                    pc = peer + ['infer', '--batch', batch, '--runs', runs if batch == '1' else '5'] + t
                    pc += ['--model-file', path] if os.path.exists(path) else ['--model', model]
                    p = run_json(pc)
                    results += [o, p]
                    if o and p:
                        rows.append(('infer %s %s, batch %s (p50 ms)' % (model, kind, batch), o['p50_ms'], p['p50_ms'],
                                     p['p50_ms'] / o['p50_ms']))

    print()
    print('| measurement | dnnshifter | PyTorch | speed-up |')
    print('|---|---:|---:|---:|')
    for name, o, p, r in rows:
        print('| %s | %.2f | %s | %s |' % (name, o, '%.2f' % p if p is not None else '-', '%.2fx' % r if r else '-'))
    if a.out:
        with open(a.out, 'w') as f:
            json.dump([r for r in results if r], f, indent=1)


if __name__ == '__main__':
    sys.exit(main())
