"""Train one routing variant of the KJV MoE and evaluate it the way epmoe
will (plain native top-2 routing, F16-rounded weights as exported).

Variants (same seed, initial weights, data order, shape and step count):
  aux       softmax top-2 + Switch load-balancing loss
            L_aux = alpha * mean_layers( E * sum_e f_e * P_e ),
            f_e = share of the N*k assignments that go to expert e,
            P_e = mean router probability of e; alpha = 0.01
  ssr       Selective Sinkhorn Routing (routing.md section 5): for each
            (step, layer) a seeded draw with probability --ssr-p switches the
            layer to the Sinkhorn plan (model.py, mode 'sinkhorn'); otherwise
            plain softmax top-2; no auxiliary loss
  lossfree  auxiliary-loss-free bias balancing (routing.md section 2.2):
            select top-2 of softmax(S) + b, weights from softmax(S); after
            each step b += u * sign(mean load - load) per layer; no aux loss.
            The bias is a training device only: it is not exported, and
            every evaluation below routes without it.
  topk      plain softmax top-2, no balancing at all (control; optional)

Evaluation protocol (identical to `epmoe perplexity --ctx CTX`): the whole
file is tokenized once (one space prefix at the start, no BOS), giving n
tokens; they are cut into consecutive windows of CTX-1 tokens (the last may
be shorter); each window is fed as BOS followed by its tokens; every token is
scored once, from BOS and the earlier tokens of its own window;
ppl = exp(sum NLL / n).  Routing: plain softmax top-2 with renormalisation.

Logs (JSON lines) to OUT/VARIANT/log.jsonl; the final checkpoint to
OUT/VARIANT/model.pt and the results to OUT/VARIANT/summary.json.
"""
import argparse
import copy
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from model import Config, MoELM
from tokenizer import BOS, Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def load_ids(tok, path):
    with open(path, encoding='utf-8') as f:
        return torch.tensor(tok.encode(f.read(), add_bos=False), dtype=torch.long)


def windows(ids, ctx):
    """The evaluation windows: list of (input [<=ctx-1], target) tensors."""
    w = ctx - 1
    out = []
    for i in range(0, len(ids), w):
        chunk = ids[i:i + w]
        inp = torch.cat([torch.tensor([BOS]), chunk[:-1]])
        out.append((inp, chunk))
    return out


@torch.no_grad()
def evaluate(model, ids, ctx, batch=16, modes='topk', amp=False):
    """Return (mean NLL, n tokens, loads [L, E]) under the protocol above.
    amp: bf16 autocast (only for the cheap evaluations during training; the
    final numbers are float32)."""
    model.eval()
    ws = windows(ids, ctx)
    L, E = model.cfg.n_layer, model.cfg.n_expert
    nll, n = 0.0, 0
    loads = torch.zeros(L, E, dtype=torch.long)
    # full windows in batches, then the short tail window on its own
    full = [w for w in ws if len(w[1]) == ctx - 1]
    groups = [full[i:i + batch] for i in range(0, len(full), batch)]
    groups += [[w] for w in ws if len(w[1]) != ctx - 1]
    for g in groups:
        inp = torch.stack([w[0] for w in g])
        tgt = torch.stack([w[1] for w in g])
        stats = []
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            logits = model(inp, modes=modes, stats=stats)
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                               tgt.reshape(-1), reduction='sum').item()
        n += tgt.numel()
        for li, s in enumerate(stats):
            loads[li] += s['counts']
    model.train()
    return nll / n, n, loads


def maxvio(loads):
    """Per layer (max load - mean load) / mean load."""
    loads = loads.double()
    mean = loads.mean(-1)
    return ((loads.max(-1).values - mean) / mean).tolist()


def f16_copy(model):
    """The model as epmoe sees the exported GGUF: matrices rounded to F16,
    norms and the router F32 (the tensor types export_gguf.py writes)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2 and not name.endswith('gate_inp'):
                p.copy_(p.half().float())
    return m


def lr_at(step, steps, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def main():
    ap = argparse.ArgumentParser(description='train one MoE routing variant')
    ap.add_argument('--variant', required=True,
                    choices=['aux', 'ssr', 'lossfree', 'topk'])
    ap.add_argument('--data', default=os.path.join(HERE, 'out'))
    ap.add_argument('--out', default=os.path.join(HERE, 'out'))
    ap.add_argument('--steps', type=int, default=1000)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--ctx', type=int, default=256)
    ap.add_argument('--d-model', type=int, default=256)
    ap.add_argument('--n-layer', type=int, default=4)
    ap.add_argument('--n-head', type=int, default=4)
    ap.add_argument('--n-kv-head', type=int, default=4)
    ap.add_argument('--d-ff', type=int, default=384)
    ap.add_argument('--n-expert', type=int, default=8)
    ap.add_argument('--lr', type=float, default=3e-3)
    ap.add_argument('--warmup', type=int, default=50)
    ap.add_argument('--wd', type=float, default=0.1)
    ap.add_argument('--seed', type=int, default=1234)
    ap.add_argument('--aux-alpha', type=float, default=0.01)
    ap.add_argument('--ssr-p', type=float, default=0.05)
    ap.add_argument('--ssr-xi', type=float, default=1.0)
    ap.add_argument('--ssr-iters', type=int, default=10)
    ap.add_argument('--bias-u', type=float, default=0.001)
    ap.add_argument('--eval-every', type=int, default=100)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--amp', type=int, default=1, help='bf16 autocast in training')
    ap.add_argument('--tag', default=None, help='output subfolder (default: variant)')
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    tok = Tokenizer.load(os.path.join(args.data, 'tokenizer.json'))
    train_ids = load_ids(tok, os.path.join(args.data, 'train.txt'))
    valid_ids = load_ids(tok, os.path.join(args.data, 'valid.txt'))
    test_ids = load_ids(tok, os.path.join(args.data, 'test.txt'))
    cfg = Config(vocab_size=len(tok), d_model=args.d_model, n_layer=args.n_layer,
                 n_head=args.n_head, n_kv_head=args.n_kv_head, d_ff=args.d_ff,
                 n_expert=args.n_expert, ctx=args.ctx)
    outdir = os.path.join(args.out, args.tag or args.variant)
    os.makedirs(outdir, exist_ok=True)

    model = MoELM(cfg)
    model.init_weights(args.seed)
    L, E, k = cfg.n_layer, cfg.n_expert, cfg.top_k
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': args.wd},
                             {'params': no_decay, 'weight_decay': 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    # Data order and SSR draws: fixed by the seed, identical for every variant.
    g = torch.Generator().manual_seed(args.seed)
    offsets = torch.randint(0, len(train_ids) - args.ctx, (args.steps, args.batch),
                            generator=g)
    ssr_draw = np.random.default_rng(args.seed + 1).random((args.steps, L)) < args.ssr_p
    ar = torch.arange(args.ctx)
    if args.variant == 'ssr':
        for b in model.blocks:
            b.moe.sinkhorn_log = []

    print('train.py: %s: %d parameters (%d active per token), %d train tokens, '
          '%d steps x %d x %d tokens, tokens seen %.2f epochs'
          % (args.variant, model.n_params(),
             model.n_params() - L * (E - k) * 3 * cfg.d_model * cfg.d_ff,
             len(train_ids), args.steps, args.batch, args.ctx,
             args.steps * args.batch * args.ctx / len(train_ids)), flush=True)
    log = open(os.path.join(outdir, 'log.jsonl'), 'w')

    def emit(rec):
        log.write(json.dumps(rec) + '\n')
        log.flush()

    emit({'type': 'config', 'args': vars(args), 'config': cfg.to_dict(),
          'n_params': model.n_params()})
    t0 = time.time()
    train_time = 0.0
    run_loss, run_n, ssr_events = 0.0, 0, 0
    train_loads = torch.zeros(L, E, dtype=torch.long)

    def do_eval(step):
        nonlocal t0
        te = time.time()
        vl, n, loads = evaluate(model, valid_ids, args.ctx, amp=bool(args.amp))
        rec = {'type': 'eval', 'step': step, 'val_loss': vl, 'val_ppl': math.exp(vl),
               'maxvio': maxvio(loads), 'train_loss': run_loss / max(1, run_n),
               'train_maxvio': maxvio(train_loads) if train_loads.sum() else None,
               'wall': time.time() - t_start, 'train_time': train_time,
               'tok_per_s': step * args.batch * args.ctx / max(1e-9, train_time),
               'ssr_events': ssr_events}
        if args.variant == 'lossfree':
            vlb, _, loadsb = evaluate(model, valid_ids, args.ctx, modes='bias',
                                      amp=bool(args.amp))
            rec['val_loss_bias'] = vlb
            rec['maxvio_bias'] = maxvio(loadsb)
            rec['bias'] = [b.moe.bias.tolist() for b in model.blocks]
        emit(rec)
        print('step %5d  train %.3f  val %.3f (ppl %.2f)  maxvio %s  %.0f tok/s  '
              '%.0fs (eval %.1fs)' % (step, rec['train_loss'], vl, rec['val_ppl'],
                                      ' '.join('%.2f' % x for x in rec['maxvio']),
                                      rec['tok_per_s'], rec['wall'], time.time() - te),
              flush=True)

    t_start = time.time()
    do_eval(0)
    for step in range(args.steps):
        ts = time.time()
        for gr in opt.param_groups:
            gr['lr'] = lr_at(step, args.steps, args.lr, args.warmup)
        off = offsets[step]
        tgt = train_ids[off[:, None] + ar[None, :]]                  # [B, ctx]
        inp = torch.cat([torch.full((args.batch, 1), BOS), tgt[:, :-1]], 1)
        if args.variant == 'ssr':
            modes = ['sinkhorn' if ssr_draw[step, li] else 'topk' for li in range(L)]
            ssr_events += int(ssr_draw[step].sum())
        elif args.variant == 'lossfree':
            modes = 'bias'
        else:
            modes = 'topk'
        stats = []
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bool(args.amp)):
            logits = model(inp, modes=modes, stats=stats,
                           xi=args.ssr_xi, n_iter=args.ssr_iters)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size).float(),
                               tgt.reshape(-1))
        total = loss
        if args.variant == 'aux':
            aux = 0.0
            for s in stats:
                f = s['counts'].float() / (s['sel'].numel())
                P = torch.softmax(s['logits'], dim=-1).mean(0)
                aux = aux + E * (f * P).sum()
            total = loss + args.aux_alpha * aux / L
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for li, s in enumerate(stats):
                train_loads[li] += s['counts']
                if args.variant == 'lossfree':
                    c = s['counts'].float()
                    model.blocks[li].moe.bias += args.bias_u * torch.sign(c.mean() - c)
        train_time += time.time() - ts
        if args.variant == 'ssr':
            for li, b in enumerate(model.blocks):
                for ev in b.moe.sinkhorn_log:
                    c0 = torch.tensor(ev['counts_plain'])
                    c1 = torch.tensor(ev['counts_plan'])
                    emit({'type': 'ssr', 'step': step, 'layer': li,
                          'colerr': ev['colerr'], 'maxvio_plain': maxvio(c0[None])[0],
                          'maxvio_plan': maxvio(c1[None])[0]})
                b.moe.sinkhorn_log.clear()
        run_loss += loss.item()
        run_n += 1
        if (step + 1) % 10 == 0:
            emit({'type': 'train', 'step': step + 1, 'loss': loss.item(),
                  'lr': opt.param_groups[0]['lr'], 'wall': time.time() - t_start})
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            do_eval(step + 1)
            run_loss, run_n = 0.0, 0
            train_loads.zero_()

    # Final: the model as exported (F16 matrices), native top-2 routing.
    mf = f16_copy(model)
    vl, vn, vloads = evaluate(mf, valid_ids, args.ctx)
    tl, tn, tloads = evaluate(mf, test_ids, args.ctx)
    vl32, _, _ = evaluate(model, valid_ids, args.ctx)
    summary = {
        'variant': args.variant, 'steps': args.steps, 'batch': args.batch,
        'ctx': args.ctx, 'config': cfg.to_dict(), 'n_params': model.n_params(),
        'val_loss': vl, 'val_ppl': math.exp(vl), 'val_tokens': vn,
        'val_ppl_f32': math.exp(vl32),
        'test_loss': tl, 'test_ppl': math.exp(tl), 'test_tokens': tn,
        'test_nll_sum': tl * tn,
        'val_maxvio': maxvio(vloads), 'test_maxvio': maxvio(tloads),
        'train_time_s': train_time, 'wall_s': time.time() - t_start,
        'tok_per_s': args.steps * args.batch * args.ctx / train_time,
        'ssr_events': ssr_events, 'args': vars(args),
    }
    if args.variant == 'lossfree':
        vb, _, vbl = evaluate(mf, valid_ids, args.ctx, modes='bias')
        summary['val_ppl_with_bias'] = math.exp(vb)
        summary['val_maxvio_with_bias'] = maxvio(vbl)
    emit(dict(summary, type='final'))
    with open(os.path.join(outdir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    sd = {k2: v.detach().clone() for k2, v in model.state_dict().items()}
    torch.save({'config': cfg.to_dict(), 'model': sd, 'name': 'kjv-moe-' + args.variant,
                'tokenizer': {'tokens': tok.tokens, 'scores': tok.scores,
                              'token_type': tok.types},
                'variant': args.variant}, os.path.join(outdir, 'model.pt'))
    print('train.py: %s done: val ppl %.3f, test ppl %.3f (F16 weights, native '
          'top-2), %.0f s training, %.0f tok/s' % (args.variant, summary['val_ppl'],
                                                  summary['test_ppl'], train_time,
                                                  summary['tok_per_s']), flush=True)


if __name__ == '__main__':
    main()
