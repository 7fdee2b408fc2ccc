"""Perplexity of a GGUF model on a text file, computed from the GGUF alone
(its own vocabulary and F16 weights) with the protocol of train.py, i.e. what
`epmoe perplexity --model M --file F --ctx CTX` must print.  Checks that the
export is faithful: the result must equal the trainer's test perplexity.

Usage: eval_gguf.py MODEL.gguf TEXT.txt [--ctx 256] [--expect PPL]
"""
import argparse
import json
import math
import os
import sys

import torch

from export_gguf import model_from_gguf
from tokenizer import Tokenizer
from train import evaluate, maxvio


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('model')
    ap.add_argument('text')
    ap.add_argument('--ctx', type=int, default=None,
                    help='window length in tokens, BOS included (default: '
                         'the model context length)')
    ap.add_argument('--expect', type=float, default=None,
                    help='fail unless the perplexity is within 0.1%% of this')
    ap.add_argument('--summary', default=None,
                    help="train.py's summary.json: expect its test_ppl and "
                         'write the result next to it as gguf_eval.json')
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m, kv = model_from_gguf(args.model)
    ctx = args.ctx or m.cfg.ctx
    tok = Tokenizer(kv['tokenizer.ggml.tokens'], kv['tokenizer.ggml.scores'],
                    kv['tokenizer.ggml.token_type'])
    with open(args.text, encoding='utf-8') as f:
        ids = torch.tensor(tok.encode(f.read(), add_bos=False))
    nll, n, loads = evaluate(m, ids, ctx)
    ppl = math.exp(nll)
    print('eval_gguf.py: %s on %s: %d tokens, ctx %d, nll/token %.6f, ppl %.4f, '
          'MaxVio per layer %s' % (args.model, args.text, n, ctx, nll, ppl,
                                   ' '.join('%.3f' % x for x in maxvio(loads))))
    if args.summary:
        with open(args.summary) as f:
            summ = json.load(f)
        args.expect = summ['test_ppl']
        res = {'model': args.model, 'text': args.text, 'ctx': ctx, 'tokens': n,
               'nll_per_token': nll, 'ppl': ppl, 'trainer_test_ppl': args.expect,
               'maxvio': maxvio(loads)}
        with open(os.path.join(os.path.dirname(args.summary), 'gguf_eval.json'), 'w') as f:
            json.dump(res, f, indent=1)
    if args.expect is not None and abs(ppl / args.expect - 1) > 1e-3:
        sys.exit('eval_gguf.py: perplexity %.4f differs from expected %.4f'
                 % (ppl, args.expect))


if __name__ == '__main__':
    main()
