#!/usr/bin/python3
"""One CIFAR-10 epoch of ResNet-20, ours against PyTorch, run back to back (issue #12's
epoch target): `cifar_prune train --epochs 1` (the whole command: cached decoded set,
augmentation, the test pass) and `bench/torch_train_epoch.py` (its training time plus its JPEG
decoding, as the issue counts it; its whole command's wall time is reported too), alternated
--repeat times so a slow spell of a shared host hits both sides.

  bench/epoch.py DATA_DIR [--threads 2] [--repeat 2] [--model resnet20] [--out DIR]

Prints one line per run and a summary: the ratio of the medians, and each pair's ratio.
Needs a build (build/bin/cifar_prune) and Debian's torch for /usr/bin/python3.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_ours(a, out):
    cmd = [os.path.join(ROOT, 'build', 'bin', 'cifar_prune'), 'train', '--data', a.data, '--model', a.model,
           '--epochs', '1', '--threads', str(a.threads), '--out', out]
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit('epoch.py: %s failed (exit %d):\n%s' % (' '.join(cmd), p.returncode, p.stderr[-2000:]))
    with open(os.path.join(out, 'log.jsonl')) as f:
        log = json.loads(f.read().splitlines()[-1])
    return {'wall': wall, 'train': log['seconds'], 'acc': log['test_accuracy'],
            'data_wait': log.get('data_wait_seconds', float('nan'))}


def run_peer(a):
    cmd = ['/usr/bin/python3', os.path.join(ROOT, 'bench', 'torch_train_epoch.py'), a.data, '--threads',
           str(a.threads), '--model', a.model]
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit('epoch.py: %s failed (exit %d):\n%s' % (' '.join(cmd), p.returncode, p.stderr[-2000:]))
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {'wall': wall, 'train': r['train_seconds'], 'decode': r['decode_seconds'],
            'counted': r['train_seconds'] + r['decode_seconds'], 'acc': r['test_accuracy']}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('data', help='the CIFAR-10 image folder (train/ and test/)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--repeat', type=int, default=2, help='pairs of runs (ours, then PyTorch)')
    ap.add_argument('--model', default='resnet20')
    ap.add_argument('--out', default=None,
                    help='a new folder for our runs (OUT/run0, run1, ...; default: a temporary one)')
    a = ap.parse_args()
    if a.repeat < 1:
        sys.exit('epoch.py: --repeat must be >= 1')
    if not os.path.isdir(os.path.join(a.data, 'train')):
        sys.exit('epoch.py: %s has no train/ folder (an image-folder CIFAR-10 is needed)' % a.data)
    if not os.path.exists(os.path.join(ROOT, 'build', 'bin', 'cifar_prune')):
        sys.exit('epoch.py: build/bin/cifar_prune is missing: build first (scripts/setup.sh)')
    cpu = 'unknown CPU'
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    print('epoch.py: %s, %d threads, %s, %d pair(s)' % (a.model, a.threads, cpu, a.repeat), flush=True)
    ours, peer = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeat):
            out = os.path.join(a.out or tmp, 'run%d' % i)
            o = run_ours(a, out)
            ours.append(o)
            print('  ours    %d: whole command %.1f s (training %.1f s, waited %.1f s for data), test accuracy %.2f%%'
                  % (i + 1, o['wall'], o['train'], o['data_wait'], 100 * o['acc']), flush=True)
            p = run_peer(a)
            peer.append(p)
            print('  pytorch %d: training %.1f s + decoding %.1f s = %.1f s (whole command %.1f s), test accuracy %.2f%%'
                  % (i + 1, p['train'], p['decode'], p['counted'], p['wall'], 100 * p['acc']), flush=True)
            print('  pair %d: %.2fx (whole commands: %.2fx)' % (i + 1, p['counted'] / o['wall'], p['wall'] / o['wall']),
                  flush=True)
    mo = statistics.median(o['wall'] for o in ours)
    mp = statistics.median(p['counted'] for p in peer)
    mw = statistics.median(p['wall'] for p in peer)
    print('median: ours %.1f s, pytorch %.1f s (training + decoding; whole command %.1f s): %.2fx (whole commands %.2fx)'
          % (mo, mp, mw, mp / mo, mw / mo))


if __name__ == '__main__':
    main()
