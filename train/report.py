"""Print the comparison of the trained routing variants (and write it to
OUT/report.md): final validation / test perplexity (F16 weights, native
top-2, the protocol of train.py), the GGUF re-check, MaxVio per layer,
throughput and time, and the validation curve over steps.

Usage: report.py [--out OUT] VARIANT...
"""
import argparse
import json
import os


def load(outdir, v):
    d = os.path.join(outdir, v)
    with open(os.path.join(d, 'summary.json')) as f:
        s = json.load(f)
    evals, ssr = [], []
    with open(os.path.join(d, 'log.jsonl')) as f:
        for line in f:
            r = json.loads(line)
            if r.get('type') == 'eval':
                evals.append(r)
            elif r.get('type') == 'ssr':
                ssr.append(r)
    s['ssr_log'] = ssr
    g = None
    p = os.path.join(d, 'gguf_eval.json')
    if os.path.exists(p):
        with open(p) as f:
            g = json.load(f)
    return s, evals, g


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.path.join(os.path.dirname(
        os.path.abspath(__file__)), 'out'))
    ap.add_argument('--best-link', default=None,
                    help='make this path a symlink to MODELS/kjv-moe-BEST.gguf, '
                         'BEST being the variant with the lowest validation '
                         'perplexity (the default model of `make run`)')
    ap.add_argument('variants', nargs='+')
    args = ap.parse_args()
    rows = {v: load(args.out, v) for v in args.variants
            if os.path.exists(os.path.join(args.out, v, 'summary.json'))}
    if not rows:
        raise SystemExit('report.py: no summaries under %s' % args.out)
    lines = []
    p = lines.append
    first = next(iter(rows.values()))[0]
    c = first['config']
    p('Shape: d_model %d, %d layers, %d heads (%d kv), %d experts top-%d, expert ff %d, '
      'vocab %d, ctx %d; %d parameters; %d steps x %d x %d tokens.'
      % (c['d_model'], c['n_layer'], c['n_head'], c['n_kv_head'], c['n_expert'],
         c['top_k'], c['d_ff'], c['vocab_size'], c['ctx'], first['n_params'],
         first['steps'], first['batch'], first['ctx']))
    p('')
    p('| variant | val ppl | test ppl | test ppl from GGUF | MaxVio mean | MaxVio worst (layer) '
      '| MaxVio per layer | train tok/s | train time | wall time |')
    p('|---|---|---|---|---|---|---|---|---|---|')
    for v, (s, ev, g) in rows.items():
        mv = s['val_maxvio']
        worst = max(range(len(mv)), key=lambda i: mv[i])
        p('| %s | %.2f | %.2f | %s | %.2f | %.2f (%d) | %s | %.0f | %.1f min | %.1f min |'
          % (v, s['val_ppl'], s['test_ppl'], '%.2f' % g['ppl'] if g else 'n/a',
             sum(mv) / len(mv), mv[worst], worst, ' '.join('%.2f' % x for x in mv),
             s['tok_per_s'], s['train_time_s'] / 60, s['wall_s'] / 60))
    p('')
    p('Perplexities: F16 weights as exported, plain softmax top-2 routing; MaxVio '
      'on the validation split, plain top-2.  Throughput and times depend on the '
      'load other jobs put on the machine, not on the routing variant.')
    for v, (s, ev, g) in rows.items():
        if 'val_ppl_with_bias' in s:
            p('%s with its training bias (not exported): val ppl %.2f, MaxVio per layer %s.'
              % (v, s['val_ppl_with_bias'],
                 ' '.join('%.2f' % x for x in s['val_maxvio_with_bias'])))
        if s.get('ssr_events'):
            ev = s['ssr_log']
            p('%s: %d Sinkhorn (step, layer) events out of %d; on those batches '
              'MaxVio of plain top-2 %.2f, of the plan\'s top-2 %.2f (means); '
              'largest relative column-marginal error after the iterations %.1e.'
              % (v, s['ssr_events'], s['steps'] * s['config']['n_layer'],
                 sum(e['maxvio_plain'] for e in ev) / max(1, len(ev)),
                 sum(e['maxvio_plan'] for e in ev) / max(1, len(ev)),
                 max([e['colerr'] for e in ev] or [0])))
    p('')
    steps = sorted({e['step'] for _, ev, _ in rows.values() for e in ev})
    p('Validation perplexity over steps (bf16 evaluation during training):')
    p('')
    p('| step | ' + ' | '.join(rows) + ' |')
    p('|---|' + '---|' * len(rows))
    for st in steps:
        cells = []
        for v, (s, ev, g) in rows.items():
            e = [x for x in ev if x['step'] == st]
            cells.append('%.2f' % e[0]['val_ppl'] if e else '')
        p('| %d | %s |' % (st, ' | '.join(cells)))
    p('')
    p('MaxVio (mean over layers) over steps:')
    p('')
    p('| step | ' + ' | '.join(rows) + ' |')
    p('|---|' + '---|' * len(rows))
    for st in steps:
        cells = []
        for v, (s, ev, g) in rows.items():
            e = [x for x in ev if x['step'] == st]
            cells.append('%.2f' % (sum(e[0]['maxvio']) / len(e[0]['maxvio'])) if e else '')
        p('| %d | %s |' % (st, ' | '.join(cells)))
    best = min(rows, key=lambda v: rows[v][0]['val_ppl'])
    p('')
    p('Best by validation perplexity: %s.' % best)
    if args.best_link:
        target = 'kjv-moe-%s.gguf' % best
        if not os.path.exists(os.path.join(os.path.dirname(args.best_link), target)):
            raise SystemExit('report.py: %s missing next to %s' % (target, args.best_link))
        if os.path.lexists(args.best_link):
            os.remove(args.best_link)
        os.symlink(target, args.best_link)
        p('%s -> %s' % (args.best_link, target))
    text = '\n'.join(lines)
    print(text)
    with open(os.path.join(args.out, 'report.md'), 'w') as f:
        f.write(text + '\n')


if __name__ == '__main__':
    main()
