"""The routing study's tables: for each variant, the mean and spread over its
seeds of validation and test perplexity (trainer, F16 weights, native
top-2), test perplexity on the corrupted books (epmoe, out/perplexity.jsonl),
MaxVio on the validation split, training time; then the perplexity of each
variant under every serving policy on clean and corrupted text, and the
OT statistics of the SSR runs.  Spread = half the range over the seeds
(with two seeds: mean +- spread are the two values).

Usage: study.py [--out OUT] [--runs runs] [--write FILE] VARIANT...
       study.py [--out OUT] --install MODELS NAME.SEED...
           copy those runs' GGUFs to MODELS/kjv-moe-NAME.gguf and point
           MODELS/kjv-moe-best.gguf at the one with the lowest validation
           perplexity (make run's default model)
"""
import argparse
import glob
import json
import os
import re
import shutil
import statistics

TEXTS = [('test.txt', 'clean'), ('test-c5.txt', '5%'), ('test-c10.txt', '10%')]


def run_dirs(out, runs, variant):
    """The directories of a variant: RUNS/VARIANT or RUNS/VARIANT.SEED."""
    base = os.path.join(out, runs)
    found = []
    for d in sorted(glob.glob(os.path.join(base, variant + '*'))):
        name = os.path.basename(d)
        if (name == variant or re.fullmatch(re.escape(variant) + r'\.\d+', name)) \
                and os.path.exists(os.path.join(d, 'summary.json')):
            found.append(d)
    return found


def load_run(d):
    with open(os.path.join(d, 'summary.json')) as f:
        s = json.load(f)
    s['dir'] = d
    s['name'] = os.path.basename(d)
    ssr = []
    with open(os.path.join(d, 'log.jsonl')) as f:
        for line in f:
            r = json.loads(line)
            if r.get('type') == 'ssr':
                ssr.append(r)
    s['ssr_log'] = ssr
    return s


def load_ppl(out):
    res = {}
    p = os.path.join(out, 'perplexity.jsonl')
    if os.path.exists(p):
        with open(p) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                res[(r['run'], r['text'], r['policy'])] = r
    return res


def ms(xs, fmt='%.2f'):
    """'mean +- half range' of a list ('' if empty)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return ''
    m = statistics.mean(xs)
    if len(xs) == 1:
        return fmt % m
    return (fmt + ' ± ' + fmt) % (m, (max(xs) - min(xs)) / 2)


def settings(s):
    a = s['args']
    v = s['variant']
    if v == 'topk':
        return 'plain top-2, no balancing'
    if v == 'aux':
        return 'Switch aux loss %g' % a['aux_alpha']
    if v == 'lossfree':
        return 'loss-free bias, u %g' % a['bias_u']
    return ('SSR p %g, cost %s, xi %g, %d it. / tol %g, noise %g, grad %s'
            % (a['ssr_p'], a['ssr_cost'], a['ssr_xi'], a['ssr_iters'], a['ssr_tol'],
               a['ssr_noise'], a['ssr_grad']))


def pct(a, b):
    return 100.0 * (a / b - 1.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(os.path.dirname(
        os.path.abspath(__file__)), 'out'))
    ap.add_argument('--runs', default='runs')
    ap.add_argument('--write', default=None)
    ap.add_argument('--install', default=None, metavar='MODELS')
    ap.add_argument('--seeds', default=None, help='ignored (compatibility)')
    ap.add_argument('names', nargs='+')
    args = ap.parse_args()

    if args.install:
        best = None
        for name in args.names:
            d = os.path.join(args.out, args.runs, name)
            s = load_run(d)
            dst = os.path.join(args.install, 'kjv-moe-%s.gguf' % name.split('.')[0])
            shutil.copyfile(os.path.join(d, 'model.gguf'), dst)
            print('study.py: %s -> %s (val ppl %.2f, test ppl %.2f)'
                  % (name, dst, s['val_ppl'], s['test_ppl']))
            if best is None or s['val_ppl'] < best[0]:
                best = (s['val_ppl'], os.path.basename(dst))
        link = os.path.join(args.install, 'kjv-moe-best.gguf')
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(best[1], link)
        print('study.py: %s -> %s' % (link, best[1]))
        return

    ppl = load_ppl(args.out)
    groups = {}
    for v in args.names:
        runs = [load_run(d) for d in run_dirs(args.out, args.runs, v)]
        if runs:
            groups[v] = runs
    if not groups:
        raise SystemExit('study.py: no finished runs under %s/%s'
                         % (args.out, args.runs))
    lines = []
    p = lines.append
    first = next(iter(groups.values()))[0]
    c = first['config']
    p('Shape: d_model %d, %d layers, %d experts top-%d, expert ff %d, vocab %d; '
      '%d parameters; %d steps x %d x %d tokens; data order seed %d.'
      % (c['d_model'], c['n_layer'], c['n_expert'], c['top_k'], c['d_ff'],
         c['vocab_size'], first['n_params'], first['steps'], first['batch'],
         first['ctx'], first['args'].get('data_seed', 1234)))
    p('')
    p('| variant | settings | seeds | val ppl | test ppl | test, 5% chars corrupted '
      '| test, 10% corrupted | MaxVio mean (val) | MaxVio worst layer | '
      'train wall time (min) | train CPU time (min) |')
    p('|---|---|---|---|---|---|---|---|---|---|---|')
    means = {}
    for v, runs in groups.items():
        cor = {}
        for t, _ in TEXTS[1:]:
            cor[t] = [ppl.get((s['name'], t, 'native'), {}).get('perplexity')
                      for s in runs]
        mv = [statistics.mean(s['val_maxvio']) for s in runs]
        worst = [max(s['val_maxvio']) for s in runs]
        p('| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |'
          % (v, settings(runs[0]), ' '.join(str(s['seed']) for s in runs),
             ms([s['val_ppl'] for s in runs]), ms([s['test_ppl'] for s in runs]),
             ms(cor['test-c5.txt']), ms(cor['test-c10.txt']), ms(mv), ms(worst),
             ms([s['train_time_s'] / 60 for s in runs], '%.1f'),
             ms([s.get('cpu_time_s', 0) / 60 for s in runs], '%.1f')))
        means[v] = {'val': statistics.mean(s['val_ppl'] for s in runs),
                    'test': statistics.mean(s['test_ppl'] for s in runs),
                    'val_all': [s['val_ppl'] for s in runs],
                    'c10': [x for x in cor['test-c10.txt'] if x is not None]}
    p('')
    # Plain comparisons of each SSR variant with aux and the control.
    for v in groups:
        if not v.startswith('ssr'):
            continue
        for ref in ('aux', 'control', 'lossfree'):
            if ref not in means:
                continue
            a, b = means[v], means[ref]
            if min(len(a['val_all']), len(b['val_all'])) < 2:
                spread = 'one seed, no spread to compare with'
            elif max(a['val_all']) < min(b['val_all']) or \
                    min(a['val_all']) > max(b['val_all']):
                spread = 'the seeds\' validation ranges do not overlap'
            else:
                spread = 'the seeds\' validation ranges overlap'
            p('- %s vs %s: validation %+.2f%% (%.2f vs %.2f), test %+.2f%%; %s.'
              % (v, ref, pct(a['val'], b['val']), a['val'], b['val'],
                 pct(a['test'], b['test']), spread))
    p('')
    # Policies x variants on clean / 5% / 10% text (means over seeds).
    pols = []
    for (run, t, pol) in ppl:
        if pol not in pols:
            pols.append(pol)
    if pols:
        p('Perplexity under each serving policy, clean / 5% / 10% corrupted test '
          'text (mean over seeds; epmoe perplexity, windows of 256):')
        p('')
        p('| policy | ' + ' | '.join(groups) + ' |')
        p('|---|' + '---|' * len(groups))
        for pol in pols:
            cells = []
            for v, runs in groups.items():
                vals = []
                for t, _ in TEXTS:
                    xs = [ppl.get((s['name'], t, pol), {}).get('perplexity') for s in runs]
                    xs = [x for x in xs if x is not None]
                    vals.append('%.2f' % statistics.mean(xs) if xs else '-')
                cells.append(' / '.join(vals))
            p('| `%s` | %s |' % (pol, ' | '.join(cells)))
        p('')
    # OT statistics of the SSR runs.
    for v, runs in groups.items():
        ev = [e for s in runs for e in s['ssr_log']]
        if not ev:
            continue
        conv = sum(e['colerr'] < runs[0]['args']['ssr_tol'] for e in ev if 'iters' in e)
        its = [e['iters'] for e in ev if 'iters' in e]
        p('- %s: %d OT layer-steps over %d runs (%.1f%%); Sinkhorn iterations '
          'median %s, converged to tol in %d of %d; MaxVio of the step\'s '
          'top-2: plan %.2f, plain %.2f (means).'
          % (v, len(ev), len(runs),
             100.0 * len(ev) / (len(runs) * runs[0]['steps'] * runs[0]['config']['n_layer']),
             statistics.median(its) if its else '-', conv, len(its),
             statistics.mean(e['maxvio_plan'] for e in ev),
             statistics.mean(e['maxvio_plain'] for e in ev)))
    text = '\n'.join(lines) + '\n'
    print(text, end='')
    if args.write:
        with open(args.write, 'w') as f:
            f.write(text)


if __name__ == '__main__':
    main()
