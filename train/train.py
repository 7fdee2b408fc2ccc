"""Train one routing variant of the KJV MoE and evaluate it the way epmoe
will (plain native top-2 routing, F16-rounded weights as exported).

Variants (same data order, shape and step count; --seed sets the initial
weights, the SSR draws and the SSR noise, --data-seed the data order):
  aux       softmax top-2 + Switch load-balancing loss
            L_aux = alpha * mean_layers( E * sum_e f_e * P_e ),
            f_e = share of the N*k assignments that go to expert e,
            P_e = mean router probability of e; alpha = 0.01
  ssr       Selective Sinkhorn Routing (routing.md section 5): for each
            (step, layer) a seeded draw with probability --ssr-p switches the
            layer to the Sinkhorn plan (model.py, mode 'sinkhorn': cost
            --ssr-cost, temperature --ssr-xi, up to --ssr-iters iterations
            to tolerance --ssr-tol, gradient through the plan or not,
            --ssr-grad); otherwise softmax top-2, with Gaussian noise of std
            --ssr-noise on the logits if > 0; no auxiliary loss
  lossfree  auxiliary-loss-free bias balancing (routing.md section 2.2):
            select top-2 of softmax(S) + b, weights from softmax(S); after
            each step b += u * sign(mean load - load) per layer; no aux loss.
            The bias is a training device only: it is not exported, and
            every evaluation below routes without it.
  topk      plain softmax top-2, no balancing at all (the control)

Evaluation protocol (identical to `epmoe perplexity --ctx CTX`): the whole
file is tokenized once (one space prefix at the start, no BOS), giving n
tokens; they are cut into consecutive windows of CTX-1 tokens (the last may
be shorter); each window is fed as BOS followed by its tokens; every token is
scored once, from BOS and the earlier tokens of its own window;
ppl = exp(sum NLL / n).  Routing: plain softmax top-2 with renormalisation.

Logs (JSON lines) to OUT/TAG/log.jsonl; the final checkpoint to
OUT/TAG/model.pt and the results to OUT/TAG/summary.json (TAG defaults to
the variant).  Resumable: every --ckpt-every steps the whole training state
goes to OUT/TAG/ckpt.pt (written atomically); a run started again with the
same arguments continues from there (the data order, SSR draws and noise
depend on the step number only, so it trains on what an uninterrupted run
would; the results agree up to the run-to-run noise of multi-threaded CPU
arithmetic, about 0.05% in perplexity).  A run whose summary.json exists is not run again.
Times: train_time_s is the wall time of the training steps (it includes
any time the process spent stopped), cpu_time_s their process CPU time.
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

from model import Config, MoELM, OTConfig
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


# Arguments that must match for a checkpoint to be resumed.
RESUME_KEYS = ('variant', 'steps', 'batch', 'ctx', 'd_model', 'n_layer', 'n_head',
               'n_kv_head', 'd_ff', 'n_expert', 'lr', 'warmup', 'wd', 'seed',
               'data_seed', 'aux_alpha', 'ssr_p', 'ssr_cost', 'ssr_xi', 'ssr_iters',
               'ssr_tol', 'ssr_noise', 'ssr_grad', 'bias_u', 'amp')


def parse_args():
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
    ap.add_argument('--seed', type=int, default=1234,
                    help='initial weights, SSR draws and SSR noise')
    ap.add_argument('--data-seed', type=int, default=1234,
                    help='data order (the same for every run of a study)')
    ap.add_argument('--aux-alpha', type=float, default=0.01)
    ap.add_argument('--ssr-p', type=float, default=0.01,
                    help='probability that a (step, layer) routes by OT')
    ap.add_argument('--ssr-cost', choices=['logits', 'softmax'], default='softmax')
    ap.add_argument('--ssr-xi', type=float, default=0.05, help='OT temperature')
    ap.add_argument('--ssr-iters', type=int, default=100, help='Sinkhorn iteration cap')
    ap.add_argument('--ssr-tol', type=float, default=1e-4,
                    help='stop when every column sum is within tol x its mass')
    ap.add_argument('--ssr-noise', type=float, default=0.0,
                    help='std of the Gaussian noise on the logits of the non-OT '
                         'branch (training only; 0 = none)')
    ap.add_argument('--ssr-grad', choices=['none', 'plan'], default='none',
                    help='none: the OT weights are constants; plan: gradient '
                         'through the plan with the duals held fixed')
    ap.add_argument('--bias-u', type=float, default=0.001)
    ap.add_argument('--eval-every', type=int, default=100)
    ap.add_argument('--ckpt-every', type=int, default=100)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--amp', type=int, default=1, help='bf16 autocast in training')
    ap.add_argument('--tag', default=None,
                    help='output subfolder of --out (default: the variant)')
    return ap.parse_args()


def save_atomic(obj, path):
    tmp = path + '.tmp'
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    outdir = os.path.join(args.out, args.tag or args.variant)
    if os.path.exists(os.path.join(outdir, 'summary.json')):
        print('train.py: %s already finished (%s/summary.json); not run again'
              % (args.tag or args.variant, outdir), flush=True)
        return
    os.makedirs(outdir, exist_ok=True)
    tok = Tokenizer.load(os.path.join(args.data, 'tokenizer.json'))
    train_ids = load_ids(tok, os.path.join(args.data, 'train.txt'))
    valid_ids = load_ids(tok, os.path.join(args.data, 'valid.txt'))
    test_ids = load_ids(tok, os.path.join(args.data, 'test.txt'))
    cfg = Config(vocab_size=len(tok), d_model=args.d_model, n_layer=args.n_layer,
                 n_head=args.n_head, n_kv_head=args.n_kv_head, d_ff=args.d_ff,
                 n_expert=args.n_expert, ctx=args.ctx)
    ot = OTConfig(cost=args.ssr_cost, xi=args.ssr_xi, max_iter=args.ssr_iters,
                  tol=args.ssr_tol, grad=args.ssr_grad)

    model = MoELM(cfg)
    model.init_weights(args.seed)
    L, E, k = cfg.n_layer, cfg.n_expert, cfg.top_k
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': args.wd},
                             {'params': no_decay, 'weight_decay': 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    # Data order: fixed by --data-seed, identical for every variant and
    # seed.  SSR draws and noise: fixed by --seed and the step number.
    g = torch.Generator().manual_seed(args.data_seed)
    offsets = torch.randint(0, len(train_ids) - args.ctx, (args.steps, args.batch),
                            generator=g)
    ssr_draw = np.random.default_rng(args.seed + 1).random((args.steps, L)) < args.ssr_p
    ar = torch.arange(args.ctx)
    if args.variant == 'ssr':
        for b in model.blocks:
            b.moe.sinkhorn_log = []

    # State that a checkpoint carries besides the model and the optimiser.
    st = {'step': 0, 'train_time': 0.0, 'cpu_time': 0.0, 'wall': 0.0,
          'run_loss': 0.0, 'run_n': 0, 'ssr_events': 0, 'resumes': 0,
          'train_loads': torch.zeros(L, E, dtype=torch.long)}
    ckpt_path = os.path.join(outdir, 'ckpt.pt')
    log_path = os.path.join(outdir, 'log.jsonl')
    resumed = False
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        mism = [key for key in RESUME_KEYS if ck['args'].get(key) != vars(args)[key]]
        if mism:
            raise SystemExit('train.py: %s was written with other settings (%s); '
                             'delete it to start again' % (ckpt_path, ', '.join(mism)))
        model.load_state_dict(ck['model'])
        opt.load_state_dict(ck['opt'])
        st = ck['state']
        st['resumes'] += 1
        resumed = True
        # keep the log up to the checkpoint
        keep = []
        if os.path.exists(log_path):
            with open(log_path) as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        break  # a line cut by the interruption
                    if r.get('step', 0) <= st['step']:
                        keep.append(line if line.endswith('\n') else line + '\n')
        with open(log_path, 'w') as f:
            f.writelines(keep)

    print('train.py: %s: %d parameters (%d active per token), %d train tokens, '
          '%d steps x %d x %d tokens, tokens seen %.2f epochs%s'
          % (args.tag or args.variant, model.n_params(),
             model.n_params() - L * (E - k) * 3 * cfg.d_model * cfg.d_ff,
             len(train_ids), args.steps, args.batch, args.ctx,
             args.steps * args.batch * args.ctx / len(train_ids),
             ', resumed at step %d' % st['step'] if resumed else ''), flush=True)
    log = open(log_path, 'a')

    def emit(rec):
        log.write(json.dumps(rec) + '\n')
        log.flush()

    if resumed:
        emit({'type': 'resume', 'step': st['step']})
    else:
        emit({'type': 'config', 'args': vars(args), 'config': cfg.to_dict(),
              'n_params': model.n_params()})
    t_start = time.time() - st['wall']

    def do_eval(step):
        te = time.time()
        vl, n, loads = evaluate(model, valid_ids, args.ctx, amp=bool(args.amp))
        tl = st['train_loads']
        rec = {'type': 'eval', 'step': step, 'val_loss': vl, 'val_ppl': math.exp(vl),
               'maxvio': maxvio(loads), 'train_loss': st['run_loss'] / max(1, st['run_n']),
               'train_maxvio': maxvio(tl) if tl.sum() else None,
               'wall': time.time() - t_start, 'train_time': st['train_time'],
               'cpu_time': st['cpu_time'],
               'tok_per_s': step * args.batch * args.ctx / max(1e-9, st['train_time']),
               'ssr_events': st['ssr_events']}
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

    if st['step'] == 0:
        do_eval(0)
    for step in range(st['step'], args.steps):
        ts, cs = time.time(), time.process_time()
        for gr in opt.param_groups:
            gr['lr'] = lr_at(step, args.steps, args.lr, args.warmup)
        off = offsets[step]
        tgt = train_ids[off[:, None] + ar[None, :]]                  # [B, ctx]
        inp = torch.cat([torch.full((args.batch, 1), BOS), tgt[:, :-1]], 1)
        noise, gen = 0.0, None
        if args.variant == 'ssr':
            modes = ['sinkhorn' if ssr_draw[step, li] else 'topk' for li in range(L)]
            st['ssr_events'] += int(ssr_draw[step].sum())
            if args.ssr_noise > 0.0:
                noise = args.ssr_noise
                gen = torch.Generator().manual_seed(args.seed * 1000003 + step)
        elif args.variant == 'lossfree':
            modes = 'bias'
        else:
            modes = 'topk'
        stats = []
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bool(args.amp)):
            logits = model(inp, modes=modes, stats=stats, ot=ot, noise=noise, gen=gen)
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
                st['train_loads'][li] += s['counts']
                if args.variant == 'lossfree':
                    c = s['counts'].float()
                    model.blocks[li].moe.bias += args.bias_u * torch.sign(c.mean() - c)
        st['train_time'] += time.time() - ts
        st['cpu_time'] += time.process_time() - cs
        if args.variant == 'ssr':
            for li, b in enumerate(model.blocks):
                for ev in b.moe.sinkhorn_log:
                    c0 = torch.tensor(ev['counts_plain'])
                    c1 = torch.tensor(ev['counts_plan'])
                    emit({'type': 'ssr', 'step': step + 1, 'layer': li,
                          'colerr': ev['colerr'], 'iters': ev['iters'],
                          'maxvio_plain': maxvio(c0[None])[0],
                          'maxvio_plan': maxvio(c1[None])[0]})
                b.moe.sinkhorn_log.clear()
        st['run_loss'] += loss.item()
        st['run_n'] += 1
        st['step'] = step + 1
        if (step + 1) % 10 == 0:
            emit({'type': 'train', 'step': step + 1, 'loss': loss.item(),
                  'lr': opt.param_groups[0]['lr'], 'wall': time.time() - t_start})
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            do_eval(step + 1)
            st['run_loss'], st['run_n'] = 0.0, 0
            st['train_loads'].zero_()
        if (step + 1) % args.ckpt_every == 0 and step + 1 < args.steps:
            st['wall'] = time.time() - t_start
            save_atomic({'args': vars(args), 'model': model.state_dict(),
                         'opt': opt.state_dict(), 'state': st}, ckpt_path)

    # Final: the model as exported (F16 matrices), native top-2 routing.
    mf = f16_copy(model)
    vl, vn, vloads = evaluate(mf, valid_ids, args.ctx)
    tl, tn, tloads = evaluate(mf, test_ids, args.ctx)
    vl32, _, _ = evaluate(model, valid_ids, args.ctx)
    summary = {
        'variant': args.variant, 'tag': args.tag or args.variant,
        'seed': args.seed, 'steps': args.steps, 'batch': args.batch,
        'ctx': args.ctx, 'config': cfg.to_dict(), 'n_params': model.n_params(),
        'val_loss': vl, 'val_ppl': math.exp(vl), 'val_tokens': vn,
        'val_ppl_f32': math.exp(vl32),
        'test_loss': tl, 'test_ppl': math.exp(tl), 'test_tokens': tn,
        'test_nll_sum': tl * tn,
        'val_maxvio': maxvio(vloads), 'test_maxvio': maxvio(tloads),
        'train_time_s': st['train_time'], 'cpu_time_s': st['cpu_time'],
        'wall_s': time.time() - t_start, 'resumes': st['resumes'],
        'tok_per_s': args.steps * args.batch * args.ctx / st['train_time'],
        'ssr_events': st['ssr_events'], 'args': vars(args),
    }
    if args.variant == 'lossfree':
        vb, _, vbl = evaluate(mf, valid_ids, args.ctx, modes='bias')
        summary['val_ppl_with_bias'] = math.exp(vb)
        summary['val_maxvio_with_bias'] = maxvio(vbl)
    emit(dict(summary, type='final'))
    name = 'kjv-moe-' + args.variant
    sd = {k2: v.detach().clone() for k2, v in model.state_dict().items()}
    save_atomic({'config': cfg.to_dict(), 'model': sd, 'name': name,
                 'tokenizer': {'tokens': tok.tokens, 'scores': tok.scores,
                               'token_type': tok.types},
                 'variant': args.variant}, os.path.join(outdir, 'model.pt'))
    # summary.json last: its presence means the run is complete
    with open(os.path.join(outdir, 'summary.json.tmp'), 'w') as f:
        json.dump(summary, f, indent=1)
    os.replace(os.path.join(outdir, 'summary.json.tmp'),
               os.path.join(outdir, 'summary.json'))
    if os.path.exists(ckpt_path):
        os.remove(ckpt_path)
    print('train.py: %s done: val ppl %.3f, test ppl %.3f (F16 weights, native '
          'top-2), %.0f s training (%.0f s CPU), %.0f tok/s'
          % (args.tag or args.variant, summary['val_ppl'], summary['test_ppl'],
             st['train_time'], st['cpu_time'], summary['tok_per_s']), flush=True)


if __name__ == '__main__':
    main()
