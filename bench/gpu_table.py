#!/usr/bin/env python3
"""The table of scripts/gpu_check.sh: its results.jsonl (one {"case", "side", "result"} per
line, side "ours" or "pytorch") as Markdown, each of our figures beside PyTorch's on the same
GPU with the ratio (> 1: we are faster). Standard library only (runs on the bare GPU machine).

  bench/gpu_table.py OUTDIR/results.jsonl
"""
import json
import sys

# (result key, unit, higher is better)
METRICS = {'train': ('images_per_sec', 'img/s', True), 'infer': ('p50_ms', 'ms p50', False),
           'compact': ('ms_median', 'ms', False)}


def metric(case, result):
    if 'images_per_sec' in result and ('epoch' in result or 'label' in result):
        return result['images_per_sec'], 'img/s, last epoch', True
    kind = result.get('bench') or case.split()[0]
    if kind in METRICS and METRICS[kind][0] in result:
        key, unit, up = METRICS[kind]
        return result[key], unit, up
    return None, '', True


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: gpu_table.py RESULTS.jsonl')
    cases, order, device = {}, [], ''
    with open(sys.argv[1]) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit('%s:%d: not JSON (%s)' % (sys.argv[1], n, e))
            if r['case'] not in cases:
                cases[r['case']] = {}
                order.append(r['case'])
            cases[r['case']][r['side']] = r.get('result', {'error': r.get('error', '?')})
            res = r.get('result', {})
            if isinstance(res, dict) and r['side'] == 'pytorch' and res.get('device', 'cpu') != 'cpu':
                device = res['device']
    print('GPU: %s' % (device or 'not seen by PyTorch'))
    print()
    print('| case | dnnshifter | PyTorch | unit | ratio (>1: ours faster) | notes |')
    print('|---|---:|---:|---|---:|---|')
    for case in order:
        sides = cases[case]
        o, p = sides.get('ours', {}), sides.get('pytorch', {})
        vo, unit, up = metric(case, o)
        vp, unit_p, _ = metric(case, p)
        unit = unit or unit_p
        notes = []
        for side, r in (('ours', o), ('pytorch', p)):
            if 'error' in r:
                notes.append('%s: %s' % (side, r['error']))
            if 'test_accuracy' in r:
                notes.append('%s test acc %.2f%%' % (side, 100 * r['test_accuracy']))
        if 'exit_status' in o:
            notes.append('exit status %s%s' % (o['exit_status'], '' if o.get('gpu') else ' (no GPU: skipped)'))
        ratio = ''
        if vo and vp:
            ratio = '%.2fx' % ((vo / vp) if up else (vp / vo))
        fmt = lambda v: '-' if v is None else '%.4g' % v
        print('| %s | %s | %s | %s | %s | %s |' % (case, fmt(vo), fmt(vp), unit, ratio, '; '.join(notes)))


if __name__ == '__main__':
    main()
