"""Perplexity of every study run on the clean and corrupted test books under
its native routing and each serving-time policy, measured by the epmoe CLI
(`epmoe perplexity --routing P --json`, windows of 256 tokens).

Appends one JSON record per (run, text, policy) to OUT/perplexity.jsonl and
skips the triples already there, so an interrupted measurement continues
where it stopped.  Checks on the way that epmoe's native perplexity of the
clean test text equals the trainer's (summary.json) within 0.1%: the
export and the engine are faithful to the trained model.

Usage: perplexities.py --epmoe BIN --out OUT --texts T... --runs NAME.SEED...
"""
import argparse
import json
import os
import subprocess

# The serving policies of the README's routing table.
POLICIES = ['native', 'topk:k=1', 'capacity:factor=1.25', 'expert_choice:c=2',
            'sinkhorn', 'sinkhorn:kernel=capped', 'ssr:p=0.01', 'ssr:lambda=1.3',
            'usmoe', 'usmoe:budget=0.75', 'lossfree:u=0.001']


def measure(epmoe, model, text, policy, threads):
    cmd = [epmoe, 'perplexity', '--model', model, '--file', text, '--ctx', '256',
           '--routing', policy, '--workers', '4', '--threads', str(threads), '--json']
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit('perplexities.py: %s failed (%d): %s'
                         % (' '.join(cmd), r.returncode, r.stderr.strip()))
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--epmoe', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--texts', nargs='+', required=True)
    ap.add_argument('--runs', nargs='+', required=True)
    ap.add_argument('--policies', nargs='+', default=POLICIES)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    if not os.access(args.epmoe, os.X_OK):
        raise SystemExit('perplexities.py: no epmoe CLI at %s (make at the top '
                         'level builds it)' % args.epmoe)
    path = os.path.join(args.out, 'perplexity.jsonl')
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut by an interruption
                done.add((r['run'], r['text'], r['policy']))
    todo = [(run, t, p) for run in args.runs for t in args.texts
            for p in args.policies
            if (run, os.path.basename(t), p) not in done]
    print('perplexities.py: %d measured, %d to go' % (len(done), len(todo)), flush=True)
    with open(path, 'a') as out:
        for i, (run, text, policy) in enumerate(todo):
            model = os.path.join(args.out, 'runs', run, 'model.gguf')
            r = measure(args.epmoe, model, text, policy, args.threads)
            rec = {'run': run, 'text': os.path.basename(text), 'policy': policy,
                   'perplexity': r['perplexity'], 'tokens': r['tokens'],
                   'maxvio': r['maxvio'], 'worker_max_over_mean': r['worker_max_over_mean'],
                   'experts_per_token': r['experts_per_token'],
                   'tokens_per_s': r['tokens_per_s']}
            if policy == 'native' and os.path.basename(text) == 'test.txt':
                with open(os.path.join(args.out, 'runs', run, 'summary.json')) as f:
                    want = json.load(f)['test_ppl']
                if abs(r['perplexity'] / want - 1.0) > 1e-3:
                    raise SystemExit('perplexities.py: %s: epmoe %.4f, trainer %.4f: '
                                     'the export or the engine is not faithful'
                                     % (run, r['perplexity'], want))
            out.write(json.dumps(rec) + '\n')
            out.flush()
            print('  [%d/%d] %-14s %-10s %-22s ppl %8.3f' % (i + 1, len(todo), run,
                  rec['text'], policy, rec['perplexity']), flush=True)


if __name__ == '__main__':
    main()
