"""Generate text from a GGUF model with the PyTorch forward pass (a quick
look at what `make run` will answer, and reference continuations for the
engine's tests).

Usage: generate.py MODEL.gguf [--prompt TEXT] [-n 64] [--temp 0]
                   [--top-k 40] [--seed 1] [--ids]
--temp 0 is greedy.  --ids also prints, for every generated token, its id,
its piece and the gap between the two best logits (a greedy token is a safe
test vector only where that gap exceeds the engine's numeric tolerance).
"""
import argparse

import torch

from export_gguf import model_from_gguf
from tokenizer import EOS, Tokenizer


@torch.no_grad()
def generate(model, ids, n, temp=0.0, top_k=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = list(ids)
    out, gaps = [], []
    for _ in range(n):
        ctx = ids[-model.cfg.ctx:]
        logits = model(torch.tensor([ctx]))[0, -1].float()
        top2 = torch.topk(logits, 2).values
        gaps.append((top2[0] - top2[1]).item())
        if temp <= 0:
            nxt = int(torch.argmax(logits))
        else:
            v, i = torch.topk(logits / temp, min(top_k, logits.numel()))
            nxt = int(i[torch.multinomial(torch.softmax(v, -1), 1, generator=g)])
        ids.append(nxt)
        out.append(nxt)
        if nxt == EOS:
            break
    return out, gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('model')
    ap.add_argument('--prompt', default='And God said')
    ap.add_argument('-n', type=int, default=64)
    ap.add_argument('--temp', type=float, default=0.0)
    ap.add_argument('--top-k', type=int, default=40)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--ids', action='store_true')
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m, kv = model_from_gguf(args.model)
    m.eval()
    tok = Tokenizer(kv['tokenizer.ggml.tokens'], kv['tokenizer.ggml.scores'],
                    kv['tokenizer.ggml.token_type'])
    prompt = tok.encode(args.prompt)
    out, gaps = generate(m, prompt, args.n, args.temp, args.top_k, args.seed)
    print(args.prompt + tok.decode(out, strip_prefix=False))
    if args.ids:
        print('prompt ids:', ','.join(map(str, prompt)))
        print('generated ids:', ','.join(map(str, out)))
        for i, gap in zip(out, gaps):
            print('  %5d %-16r top-2 logit gap %.3f' % (i, tok.tokens[i], gap))


if __name__ == '__main__':
    main()
