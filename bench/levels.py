#!/usr/bin/python3
"""Per-level compaction benchmark of a real IMP run: for every level, the compact model's
parameters, file size and CPU latency against the dense (masked) model's, and against PyTorch
executing the same compact shapes (bench/torch_peer.py --spec). Prints a Markdown table.

  bench/levels.py RUN_DIR [--threads 2] [--build build] [--runs 30]

Runs `cifar_prune compact RUN_DIR` first (which verifies every level on the run's test set).
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write('failed: %s\n%s\n' % (' '.join(cmd), p.stderr[-2000:]))
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('run')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--build', default=os.path.join(ROOT, 'build'))
    ap.add_argument('--runs', type=int, default=30)
    a = ap.parse_args()
    cp = os.path.join(a.build, 'bin', 'cifar_prune')
    bench = os.path.join(a.build, 'bin', 'bench')
    peer = ['/usr/bin/python3', os.path.join(ROOT, 'bench', 'torch_peer.py')]
    t = ['--threads', str(a.threads)]
    subprocess.run([cp, 'compact', a.run] + t, check=True, capture_output=True)
    rows = json.load(open(os.path.join(a.run, 'compaction.json')))
    print('| level | weights left | params (dense -> compact) | file MB (dense -> compact) | '
          'ours b1 ms (dense -> compact) | ours b128 ms (dense -> compact) | PyTorch compact b1 / b128 ms | '
          'test acc (masked = compact) |')
    print('|---:|---:|---:|---:|---:|---:|---:|---:|')
    for r in rows:
        d = os.path.join(a.run, 'level_%d' % r['level'])
        dense, compact = os.path.join(d, 'model.dnns'), os.path.join(d, 'compact.dnns')
        spec = os.path.join(d, 'compact.spec')
        subprocess.run([cp, 'inspect', compact, '--spec-out', spec], check=True, capture_output=True)
        lat = {}
        for name, path in [('dense', dense), ('compact', compact)]:
            for b in ('1', '128'):
                o = run_json([bench, 'infer', '--model', path, '--batch', b, '--runs', str(a.runs) if b == '1' else '5'] + t)
                lat[name, b] = o['p50_ms'] if o else float('nan')
        pt = {}
        for b in ('1', '128'):
            o = run_json(peer + ['infer', '--spec', spec, '--batch', b, '--runs', str(a.runs) if b == '1' else '5'] + t)
            pt[b] = o['p50_ms'] if o else float('nan')
        left = 100.0 * r['nonzero_weights_before'] / r['params_before']
        print('| %d | %.2f%% | %d -> %d | %.2f -> %.2f | %.2f -> %.2f | %.1f -> %.1f | %.2f / %.1f | %.2f%% |' % (
            r['level'], left, r['params_before'], r['params_after'], r['bytes_before'] / 1e6, r['bytes_after'] / 1e6,
            lat['dense', '1'], lat['compact', '1'], lat['dense', '128'], lat['compact', '128'], pt['1'], pt['128'],
            100 * r['test_accuracy_compact']))
        sys.stdout.flush()


if __name__ == '__main__':
    sys.exit(main())
