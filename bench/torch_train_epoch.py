#!/usr/bin/python3
"""The PyTorch peer of `cifar_prune train` for one epoch on an image-folder CIFAR-10 (the JPEG
copy): open_lth's ResNet-20 and settings (SGD lr 0.1, momentum 0.9, weight decay 1e-4,
batch 128, pad-4 random crop + flip, per-channel normalisation), then test accuracy.
Decoding happens before the clock starts, as our cached loader does.

  bench/torch_train_epoch.py DATA_DIR [--threads 2] [--epochs 1] [--model resnet20] [--device cuda]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_peer import build  # noqa: E402


def load_folder(root):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    xs, ys = [], []
    for label, c in enumerate(classes):
        for name in sorted(os.listdir(os.path.join(root, c))):
            img = Image.open(os.path.join(root, c, name)).convert('RGB').resize((32, 32))
            xs.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
            ys.append(label)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('data')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--epochs', type=int, default=1)
    ap.add_argument('--model', default='resnet20')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    a = ap.parse_args()
    if a.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('torch_train_epoch.py: --device cuda but torch sees no CUDA device')
    dev = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.time()
    xtr, ytr = load_folder(os.path.join(a.data, 'train'))
    xte, yte = load_folder(os.path.join(a.data, 'test'))
    decode_s = time.time() - t0
    xtr_f = torch.from_numpy(xtr).float() / 255
    mean = xtr_f.mean((0, 2, 3), keepdim=True)
    std = xtr_f.std((0, 2, 3), keepdim=True)
    xtr_f = (xtr_f - mean) / std
    xte_f = (torch.from_numpy(xte).float() / 255 - mean) / std
    ytr_t, yte_t = torch.from_numpy(ytr), torch.from_numpy(yte)
    pad_value = (-mean / std)  # raw black after normalisation, as torchvision pads the image

    model = build(a.model)
    for m in model.modules():  # open_lth's initialisation
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape)
            m.bias.data.zero_()
    model = model.to(dev)
    xtr_f, xte_f, ytr_t, yte_t, pad_value = (t.to(dev) for t in (xtr_f, xte_f, ytr_t, yte_t, pad_value))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    n = xtr_f.shape[0]
    results = []
    for epoch in range(a.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(n, device=dev)
        seen, correct, loss_sum = 0, 0, 0.0
        for i in range(0, n, 128):
            idx = perm[i:i + 128]
            xb = xtr_f[idx]
            b = xb.shape[0]
            padded = pad_value.expand(b, 3, 40, 40).clone()
            padded[:, :, 4:36, 4:36] = xb
            dy = torch.randint(0, 9, (b,)).tolist()
            dx = torch.randint(0, 9, (b,)).tolist()
            flip = (torch.rand(b) < 0.5).to(dev)
            crops = torch.stack([padded[k, :, dy[k]:dy[k] + 32, dx[k]:dx[k] + 32] for k in range(b)])
            crops[flip] = crops[flip].flip(3)
            opt.zero_grad()
            out = model(crops)
            loss = F.cross_entropy(out, ytr_t[idx])
            loss.backward()
            opt.step()
            seen += b
            correct += (out.argmax(1) == ytr_t[idx]).sum().item()
            loss_sum += loss.item() * b
        if a.device == 'cuda':
            torch.cuda.synchronize()
        train_s = time.time() - t0
        model.eval()
        with torch.no_grad():
            acc = sum((model(xte_f[i:i + 500]).argmax(1) == yte_t[i:i + 500]).sum().item()
                      for i in range(0, xte_f.shape[0], 500)) / xte_f.shape[0]
        results.append({'peer': 'pytorch ' + torch.__version__, 'model': a.model, 'epoch': epoch + 1,
                        'device': torch.cuda.get_device_name(0) if a.device == 'cuda' else 'cpu',
                        'threads': a.threads, 'train_seconds': train_s, 'images_per_sec': n / train_s,
                        'train_loss': loss_sum / seen, 'train_accuracy': correct / seen,
                        'test_accuracy': acc, 'decode_seconds': decode_s})
        print(json.dumps(results[-1]), flush=True)


if __name__ == '__main__':
    sys.exit(main())
