#!/usr/bin/python3
"""The PyTorch peer of apps/bench: the same models (open_lth's CIFAR VGG and ResNet), the
same measurements, printed as JSON lines. Run by bench/run.sh beside our numbers.

  torch_peer.py train  --model vgg16 --batch 128 --steps 5 --threads 2
  torch_peer.py infer  --model resnet20 --batch 1 --runs 50 --threads 2
  torch_peer.py infer  --spec FILE ...   (a graph spec written by our code: same shapes)
  torch_peer.py train  --device cuda [--tf32] ...   (the GPU peer of `bench train --device cuda`)
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VGG_PLANS = {
    11: [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512],
    13: [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512],
    16: [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512],
    19: [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512],
}


class VGG(nn.Module):
    def __init__(self, depth, classes=10):
        super().__init__()
        layers, c = [], 3
        for w in VGG_PLANS[depth]:
            if w == 'M':
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = F.avg_pool2d(self.features(x), 2)
        return self.fc(x.flatten(1))


class Block(nn.Module):
    def __init__(self, fin, fout, down):
        super().__init__()
        s = 2 if down else 1
        self.conv1 = nn.Conv2d(fin, fout, 3, s, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(fout)
        self.conv2 = nn.Conv2d(fout, fout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(fout)
        self.shortcut = nn.Sequential()
        if down or fin != fout:
            self.shortcut = nn.Sequential(nn.Conv2d(fin, fout, 1, s, bias=False), nn.BatchNorm2d(fout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, depth, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, fin = [], 16
        for stage, w in enumerate([16, 32, 64]):
            for b in range(n):
                blocks.append(Block(fin, w, stage > 0 and b == 0))
                fin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(name):
    if name.startswith('vgg'):
        return VGG(int(name[3:]))
    return ResNet(int(name[6:]))


class SpecNet(nn.Module):
    """Runs a dnnshifter graph spec (as written by Model::spec) with PyTorch ops: the same
    layer shapes as our compact models, random weights (timing only)."""

    def __init__(self, spec):
        super().__init__()
        self.nodes = []
        self.mods = nn.ModuleDict()
        self.output = None
        for line in spec.splitlines()[1:]:
            if not line.strip():
                continue
            parts = line.split()
            kind, name = parts[0], parts[1]
            attrs = dict(p.split('=', 1) for p in parts[2:])
            if kind == 'output':
                self.output = name
                continue
            if kind == 'input':
                self.input_name = name
                self.input_shape = [int(v) for v in attrs['shape'].split(',')]
                continue
            key = name.replace('.', '_')
            if kind == 'conv':
                cin, cout = int(attrs['in']), int(attrs['out'])
                self.mods[key] = nn.Conv2d(max(cin, 1), max(cout, 1), (int(attrs['kh']), int(attrs['kw'])),
                                           int(attrs['stride']), int(attrs['pad']), bias=attrs['bias'] == '1')
            elif kind == 'batchnorm':
                self.mods[key] = nn.BatchNorm2d(max(int(attrs['channels']), 1))
            elif kind == 'linear':
                self.mods[key] = nn.Linear(max(int(attrs['in']), 1), int(attrs['out']), bias=attrs['bias'] == '1')
            self.nodes.append((kind, name, key, attrs.get('inputs', '').split(','), attrs))

    def forward(self, x):
        acts = {self.input_name: x}
        for kind, name, key, ins, attrs in self.nodes:
            a = acts[ins[0]]
            if kind in ('conv', 'batchnorm', 'linear'):
                y = self.mods[key](a)
                if kind == 'conv' and attrs.get('relu') == '1':
                    y = F.relu(y)
            elif kind == 'relu':
                y = F.relu(a)
            elif kind == 'maxpool':
                y = F.max_pool2d(a, int(attrs['kernel']), int(attrs['stride']))
            elif kind == 'avgpool':
                y = F.avg_pool2d(a, int(attrs['kernel']), int(attrs['stride']))
            elif kind == 'global_avgpool':
                y = a.mean((2, 3))
            elif kind == 'flatten':
                y = a.flatten(1)
            elif kind == 'add':
                y = a + acts[ins[1]]
            else:
                raise ValueError('unknown layer kind ' + kind)
            acts[name] = y
        return acts[self.output]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('command', choices=['train', 'infer'])
    ap.add_argument('--model', default='resnet20')
    ap.add_argument('--spec', default='')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--steps', type=int, default=5)
    ap.add_argument('--runs', type=int, default=50)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--tf32', action='store_true', help='allow TF32 in matmuls and convolutions (cuda)')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    dev = torch.device(a.device)
    if a.device == 'cuda':
        if not torch.cuda.is_available():
            sys.exit('torch_peer.py: --device cuda but torch sees no CUDA device')
        torch.backends.cudnn.benchmark = True  # as a user tuning for speed would
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32

    def sync():
        if a.device == 'cuda':
            torch.cuda.synchronize()
    if a.spec:
        with open(a.spec) as f:
            model = SpecNet(f.read())
        shape = model.input_shape
    else:
        model = build(a.model)
        shape = [3, 32, 32]
    model = model.to(dev)
    x = torch.randn(a.batch, *shape).to(dev)
    out = {'peer': 'pytorch ' + torch.__version__, 'model': a.spec or a.model, 'batch': a.batch, 'threads': a.threads,
           'device': torch.cuda.get_device_name(0) if a.device == 'cuda' else 'cpu', 'tf32': a.tf32}
    if a.command == 'train':
        y = torch.randint(0, 10, (a.batch,)).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        model.train()
        times, cpu_times = [], []
        for s in range(a.steps + 3):
            t0, c0 = time.perf_counter(), time.process_time()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sync()
            if s >= 3:  # three warm-up steps: oneDNN builds its kernels on first use
                times.append((time.perf_counter() - t0) * 1000)
                cpu_times.append((time.process_time() - c0) * 1000)
        med = statistics.median(times)
        # CPU time of the process per step (all threads): with 1 thread, the work a step takes
        # even on a loaded machine.
        out.update(bench='train', ms_per_step_median=med, images_per_sec=a.batch * 1000 / med,
                   cpu_ms_per_step_median=statistics.median(cpu_times))
    else:
        model.eval()
        times = []
        with torch.no_grad():
            for _ in range(3):
                model(x)
            sync()
            cpu_times = []
            for _ in range(a.runs):
                t0, c0 = time.perf_counter(), time.process_time()
                model(x)
                sync()
                times.append((time.perf_counter() - t0) * 1000)
                cpu_times.append((time.process_time() - c0) * 1000)
        times.sort()
        out.update(bench='infer', p50_ms=times[len(times) // 2], p99_ms=times[min(len(times) - 1, int(0.99 * len(times)))],
                   cpu_ms_median=statistics.median(cpu_times))
    print(json.dumps(out))


if __name__ == '__main__':
    sys.exit(main())
