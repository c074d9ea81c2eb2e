#!/usr/bin/python3
"""The PyTorch peer of apps/bench: the same models (open_lth's CIFAR VGG and ResNet), the
same measurements, printed as JSON lines. Run by bench/run.sh beside our numbers.

  torch_peer.py train  --model vgg16 --batch 128 --steps 5 --threads 2
  torch_peer.py infer  --model resnet20 --batch 1 --runs 50 --threads 2
  torch_peer.py infer  --spec FILE ...   (a graph spec written by our code: same shapes)
  torch_peer.py infer  --model-file M.dnns ...   (our model file: same graph, same weights)
  torch_peer.py train  --device cuda [--tf32] ...   (the GPU peer of `bench train --device cuda`)
  torch_peer.py logits --model-file M.dnns --input X.bin --output Y.bin
                       (our model's weights in PyTorch: float32 images in, float32 logits out)
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


def read_archive(path):
    """A dnnshifter archive (docs/file-formats.md): (kind, meta dict, {name: tensor}). The
    checksum and end marker are checked, so a damaged file is refused here as by our reader."""
    import struct
    import zlib
    with open(path, 'rb') as f:
        buf = f.read()
    pos = 0

    def take(n, what):
        nonlocal pos
        if pos + n > len(buf):
            raise ValueError('%s: truncated in %s at offset %d' % (path, what, pos))
        pos += n
        return buf[pos - n:pos]

    def u32(what):
        return struct.unpack('<I', take(4, what))[0]

    def u64(what):
        return struct.unpack('<Q', take(8, what))[0]

    if take(8, 'magic') != b'DNNSHIFT':
        raise ValueError(path + ': not a dnnshifter archive')
    version, flags = u32('version'), u32('flags')
    if version not in (1, 2) or flags != 0:
        raise ValueError('%s: format version %d flags %d, expected 1 or 2 and 0' % (path, version, flags))

    def positions(coding, count, index, n, name):
        # docs/file-formats.md, sparse tensors: bitmap (1) or gap8 (2) -> the listed positions
        if coding == 1:
            bits = torch.frombuffer(bytearray(index), dtype=torch.uint8) if index else torch.zeros(0, dtype=torch.uint8)
            mask = ((bits.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)[:n].bool()
            pos_list = torch.nonzero(mask).reshape(-1)
        elif coding == 2:
            out, at = [], 0
            for b in index:
                if b == 255:
                    at += 255
                else:
                    at += b
                    out.append(at)
                    at += 1
            pos_list = torch.tensor(out, dtype=torch.int64)
        else:
            raise ValueError('%s: tensor %s: unknown index coding %d' % (path, name, coding))
        if len(pos_list) != count or (count and int(pos_list[-1]) >= n):
            raise ValueError('%s: tensor %s: index lists %d positions, %d stated' % (path, name, len(pos_list), count))
        return pos_list

    support = {}  # name -> positions of its sparse record (lent to a "ones at the support of" record)
    lent = []     # (name, the tensor whose support it is, dims, n)
    kind = take(u32('kind'), 'kind').decode()
    meta = {}
    for _ in range(u64('meta count')):
        key = take(u32('meta key'), 'meta key').decode()
        meta[key] = take(u64('meta value'), 'meta value').decode()
    tensors = {}
    for _ in range(u64('tensor count')):
        name = take(u32('tensor name'), 'tensor name').decode()
        dims = [struct.unpack('<q', take(8, 'tensor dims'))[0] for _ in range(u32('tensor rank'))]
        n = 1
        for d in dims:
            n *= d
        encoding = 0 if version == 1 else take(1, 'tensor encoding')[0]
        if encoding == 0:
            data = bytearray(take(4 * n, 'tensor ' + name))
            tensors[name] = torch.frombuffer(data, dtype=torch.float32).reshape(dims) if n else torch.zeros(dims)
        elif encoding in (1, 2):
            coding = take(1, 'index coding')[0]
            count, length = u64('count'), u64('index length')
            where = positions(coding, count, take(length, 'index of ' + name), n, name)
            flat = torch.zeros(n, dtype=torch.float32)
            if encoding == 1:
                values = bytearray(take(4 * count, 'values of ' + name))
                if count:
                    flat[where] = torch.frombuffer(values, dtype=torch.float32)
                support[name] = where
            else:
                flat[where] = 1.0
            tensors[name] = flat.reshape(dims)
        elif encoding == 3:  # resolved below: the tensor it names may come later in name order
            lent.append((name, take(u32('support name'), 'support name').decode(), dims, n))
        else:
            raise ValueError('%s: tensor %s: unknown encoding %d' % (path, name, encoding))
    for name, other, dims, n in lent:
        if other not in support or support[other].numel() and int(support[other][-1]) >= n:
            raise ValueError('%s: tensor %s: ones at the support of %s, which is not a sparse record of its size' % (path, name, other))
        flat = torch.zeros(n, dtype=torch.float32)
        flat[support[other]] = 1.0
        tensors[name] = flat.reshape(dims)
    crc = zlib.crc32(buf[:pos])
    if u32('checksum') != crc or take(8, 'end marker') != b'ENDSHIFT' or pos != len(buf):
        raise ValueError(path + ': checksum mismatch, missing end marker or trailing bytes')
    return kind, meta, tensors


def ints(text):
    return [int(v) for v in text.split(',')] if text else []


class SpecNet(nn.Module):
    """Runs a dnnshifter graph spec (as written by Model::spec) with PyTorch ops, computing what
    nn/layers.cpp computes for each node, compacted models included: a conv with no input
    channels outputs its bias, a conv's border table adds table[k, rows[p], cols[q]] at output
    (p, q), a mapped add sums each input into the stream channels its map names on top of its
    bias (docs/compaction.md). Random weights (timing only) unless load() is given a model's
    tensors."""

    def __init__(self, spec):
        super().__init__()
        self.nodes = []
        self.mods = nn.ModuleDict()
        self.extra = nn.ParameterDict()  # border tables and add biases, by key
        self.output = None
        lines = spec.splitlines()
        if not lines or lines[0].strip() != 'dnnshifter-graph 1':
            raise ValueError('not a dnnshifter graph spec (first line %r)' % (lines[0] if lines else ''))
        for line in lines[1:]:
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
                self.input_shape = ints(attrs['shape'])
                continue
            key = name.replace('.', '_')
            if kind == 'conv':
                cin, cout = int(attrs['in']), int(attrs['out'])
                if cin > 0 and cout > 0:
                    self.mods[key] = nn.Conv2d(cin, cout, (int(attrs['kh']), int(attrs['kw'])), int(attrs['stride']),
                                               int(attrs['pad']), bias=attrs['bias'] == '1')
                elif attrs['bias'] == '1':  # no input channel: the output is the bias
                    self.extra[key + '__bias'] = nn.Parameter(torch.randn(cout) * 0.1)
                pos_h = int(attrs.get('pos_h', '0'))
                if pos_h > 0:
                    pos_w = int(attrs['pos_w'])
                    rows = ints(attrs.get('pos_rows', '')) or list(range(pos_h))
                    cols = ints(attrs.get('pos_cols', '')) or list(range(pos_w))
                    attrs['_rows'], attrs['_cols'] = torch.tensor(rows), torch.tensor(cols)
                    self.extra[key + '__pos_bias'] = nn.Parameter(torch.randn(cout, max(rows) + 1, max(cols) + 1) * 0.1)
            elif kind == 'batchnorm':
                if int(attrs['channels']) > 0:
                    self.mods[key] = nn.BatchNorm2d(int(attrs['channels']), eps=float(attrs['eps']),
                                                    momentum=float(attrs['momentum']))
            elif kind == 'linear':
                if int(attrs['in']) > 0:
                    self.mods[key] = nn.Linear(int(attrs['in']), int(attrs['out']), bias=attrs['bias'] == '1')
                elif attrs['bias'] == '1':
                    self.extra[key + '__bias'] = nn.Parameter(torch.randn(int(attrs['out'])) * 0.1)
            elif kind == 'add' and 'channels' in attrs:
                attrs['_maps'] = [torch.tensor(ints(attrs[m])) if m in attrs else None for m in ('map0', 'map1')]
                if attrs.get('bias') == '1':
                    self.extra[key + '__bias'] = nn.Parameter(torch.randn(int(attrs['channels'])) * 0.1)
            self.nodes.append((kind, name, key, attrs.get('inputs', '').split(','), attrs))
        if self.output is None:
            raise ValueError('graph spec without an output line')

    def load(self, tensors):
        """Takes every parameter and buffer from a model archive's tensors (named
        `<node>.<local name>`, docs/file-formats.md); refuses a missing or misshapen one."""
        want = {}
        for key, m in self.mods.items():
            node = next(n for _, n, k, _, _ in self.nodes if k == key)
            for local, t in list(m.named_parameters()) + list(m.named_buffers()):
                if local != 'num_batches_tracked':
                    want[node + '.' + local] = t
        for key, t in self.extra.items():
            k, local = key.split('__')
            node = next(n for _, n, kk, _, _ in self.nodes if kk == k)
            want[node + '.' + local] = t
        with torch.no_grad():
            for name, t in want.items():
                if name not in tensors:
                    raise ValueError('model file lacks tensor ' + name)
                if tuple(tensors[name].shape) != tuple(t.shape):
                    raise ValueError('tensor %s: shape %s, the graph needs %s' % (name, tuple(tensors[name].shape),
                                                                                 tuple(t.shape)))
                t.copy_(tensors[name])

    def _conv(self, key, attrs, a):
        kh, kw, s, pad = int(attrs['kh']), int(attrs['kw']), int(attrs['stride']), int(attrs['pad'])
        cout = int(attrs['out'])
        if key in self.mods:
            y = self.mods[key](a)
        else:  # no input or no output channel left: the bias, or nothing
            p = (a.shape[2] + 2 * pad - kh) // s + 1
            q = (a.shape[3] + 2 * pad - kw) // s + 1
            y = a.new_zeros(a.shape[0], cout, p, q)
            if key + '__bias' in self.extra:
                y = y + self.extra[key + '__bias'].view(1, cout, 1, 1)
        if '_rows' in attrs:
            table = self.extra[key + '__pos_bias']  # (K, row classes, column classes)
            y = y + table[:, attrs['_rows'].to(y.device)][:, :, attrs['_cols'].to(y.device)]
        if attrs.get('relu') == '1':
            y = F.relu(y)
        return y

    def _mapped_add(self, key, attrs, xs):
        c = int(attrs['channels'])
        x0 = xs[0]
        y = x0.new_zeros(x0.shape[0], c, *x0.shape[2:])
        if key + '__bias' in self.extra:
            y = y + self.extra[key + '__bias'].view(1, c, *([1] * (x0.dim() - 2)))
        for x, m in zip(xs, attrs['_maps']):
            y = y + x if m is None else y.index_add(1, m.to(y.device), x)
        return y

    def forward(self, x):
        acts = {self.input_name: x}
        for kind, name, key, ins, attrs in self.nodes:
            a = acts[ins[0]]
            if kind == 'conv':
                y = self._conv(key, attrs, a)
            elif kind == 'batchnorm':
                y = self.mods[key](a) if key in self.mods else a
            elif kind == 'linear':
                if key in self.mods:
                    y = self.mods[key](a)
                else:
                    y = a.new_zeros(a.shape[0], int(attrs['out']))
                    if key + '__bias' in self.extra:
                        y = y + self.extra[key + '__bias']
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
                y = self._mapped_add(key, attrs, [a, acts[ins[1]]]) if '_maps' in attrs else a + acts[ins[1]]
            else:
                raise ValueError('unknown layer kind ' + kind)
            acts[name] = y
        return acts[self.output]


def logits_command(a):
    """Runs a model file (.dnns) on float32 (N, C, H, W) images read from --input and writes
    the float32 (N, classes) logits to --output: the peer's side of tests/test_torch_peer.cpp."""
    kind, meta, tensors = read_archive(a.model_file)
    if kind not in ('model', 'checkpoint') or 'graph' not in meta:
        raise ValueError(a.model_file + ': not a model archive (kind %r)' % kind)
    model = SpecNet(meta['graph'])
    model.load(tensors)
    model.eval()
    with open(a.input, 'rb') as f:
        data = bytearray(f.read())
    per = 1
    for d in model.input_shape:
        per *= d
    if len(data) == 0 or len(data) % (4 * per):
        raise ValueError('%s: %d bytes is not a whole number of %s float32 images' % (a.input, len(data),
                                                                                   model.input_shape))
    x = torch.frombuffer(data, dtype=torch.float32).reshape(-1, *model.input_shape)
    with torch.no_grad():
        y = model(x).contiguous()
    with open(a.output, 'wb') as f:
        f.write(y.numpy().tobytes())
    print(json.dumps({'peer': 'pytorch ' + torch.__version__, 'model': a.model_file, 'images': x.shape[0],
                      'logits': list(y.shape)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('command', choices=['train', 'infer', 'logits'])
    ap.add_argument('--model', default='resnet20')
    ap.add_argument('--spec', default='')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--steps', type=int, default=5)
    ap.add_argument('--runs', type=int, default=50)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--tf32', action='store_true', help='allow TF32 in matmuls and convolutions (cuda)')
    ap.add_argument('--model-file', default='', help='logits, infer: a dnnshifter model archive (.dnns)')
    ap.add_argument('--input', default='', help='logits: float32 (N, C, H, W) images, raw')
    ap.add_argument('--output', default='', help='logits: where the float32 (N, classes) logits go, raw')
    a = ap.parse_args()
    if a.command == 'logits':
        if not (a.model_file and a.input and a.output):
            ap.error('logits needs --model-file, --input and --output')
        torch.set_num_threads(a.threads)
        logits_command(a)
        return 0
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
    if a.model_file:  # our model file: its graph and its weights
        kind, meta, tensors = read_archive(a.model_file)
        model = SpecNet(meta['graph'])
        model.load(tensors)
        shape = model.input_shape
    elif a.spec:
        with open(a.spec) as f:
            model = SpecNet(f.read())
        shape = model.input_shape
    else:
        model = build(a.model)
        shape = [3, 32, 32]
    model = model.to(dev)
    x = torch.randn(a.batch, *shape).to(dev)
    out = {'peer': 'pytorch ' + torch.__version__, 'model': a.model_file or a.spec or a.model, 'batch': a.batch, 'threads': a.threads,
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
    try:
        sys.exit(main())
    except (OSError, ValueError) as e:  # a missing or damaged file: one line, not a traceback
        sys.exit('torch_peer.py: %s' % e)
