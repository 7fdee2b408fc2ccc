"""Mixtral-style MoE decoder in PyTorch: exactly what llama.cpp's `llama`
architecture with experts computes, so the exported GGUF runs unchanged in
epmoe and llama.cpp.

Forward pass (no biases anywhere):
  h = token_embd[ids]                                         [B, T, d]
  per layer:
    a = rmsnorm(h) * attn_norm                  (eps 1e-5)
    q, k, v = a Wq^T, a Wk^T, a Wv^T            [B, T, H|Hkv, hd]
    RoPE on q and k, ADJACENT pairs: for each head, (x[2i], x[2i+1]) is
      rotated by angle pos * base^(-2i/hd), base 10000 (GPT-J / llama.cpp
      "normal" rope).  Convention: we train with adjacent pairs directly, so
      the GGUF gets Wq / Wk as-is; the permutation llama.cpp's converter
      applies to HF (half-split) checkpoints is not needed and not applied.
    grouped-query causal attention, scale 1/sqrt(hd); h += o Wo^T
    m = rmsnorm(h) * ffn_norm
    router logits S = m Wg^T                    [N, E]
    inference routing ("native"): top-2 of S, weights = softmax over the two
      selected logits (= renormalised softmax probabilities)
    expert e: down_e(silu(gate_e(m)) * up_e(m)); h += sum_k w_k expert_k(m)
  logits = (rmsnorm(h) * output_norm) W_out^T  (W_out tied to token_embd)

Parameter layout equals the GGUF layout (a PyTorch [out, in] matrix is a GGUF
tensor with ne = {in, out}); expert weights are stacked: gate/up
[E, ff, d], down [E, d, ff].

Training-time routing modes (the `mode` of MoE.forward, one per layer):
  'topk'     plain softmax top-2 (also used for every evaluation); with a
             `noise` std > 0 (training only), Gaussian noise of that std is
             added to the logits before the top-2 and the weights are the
             softmax of the two noisy logits (fixed-scale noisy top-k
             gating, Shazeer et al. 2017 without the trainable noise);
  'bias'     loss-free balancing (Wang et al. 2024, arXiv 2408.15664):
             select top-2 of softmax(S) + b, weights from the unbiased
             scores renormalised; b is a buffer updated outside (train.py);
  'sinkhorn' the OT step of Selective Sinkhorn Routing (routing.md section
             5): entropic OT plan with a = 1, b = N/E, cost C = S or
             softmax(S), temperature xi, log-domain Sinkhorn until every
             column is within tol of its mass or max_iter iterations; select
             top-2 of the plan, weights = plan renormalised over the two.
             The duals f, g come out of no_grad iterations, and
             plan[t, e] = exp(f_t + C[t, e]/xi + g_e), so the renormalised
             weight is softmax_sel(C/xi + g).  grad='plan': gradient reaches
             the router through C with the duals held fixed; grad='none': the
             plan is a constant (the router gets no gradient from this layer
             on this step, the experts still do).
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 4096
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4
    d_ff: int = 384          # per expert
    n_expert: int = 8
    top_k: int = 2
    ctx: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self):
        return self.d_model // self.n_head

    def to_dict(self):
        return asdict(self)


def rmsnorm(x, w, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope_tables(T, hd, base, device=None):
    """cos, sin of shape [T, hd/2] for adjacent-pair RoPE."""
    inv = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float().to(device), ang.sin().float().to(device)


def apply_rope(x, cos, sin):
    """x [B, T, H, hd]; rotates (x[2i], x[2i+1]) by the angle of pair i."""
    B, T, H, hd = x.shape
    xp = x.reshape(B, T, H, hd // 2, 2)
    x0, x1 = xp[..., 0], xp[..., 1]
    c, s = cos[None, :T, None, :], sin[None, :T, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).reshape(B, T, H, hd)


@dataclass
class OTConfig:
    """Settings of the 'sinkhorn' mode (train.py --ssr-*)."""
    cost: str = 'logits'     # 'logits' or 'softmax'
    xi: float = 1.0
    max_iter: int = 100
    tol: float = 1e-4        # relative column residual
    grad: str = 'plan'       # 'plan' or 'none'


def ot_cost(S, cost):
    if cost == 'logits':
        return S
    if cost == 'softmax':
        return torch.softmax(S, dim=-1)
    raise ValueError(cost)


def sinkhorn_duals(C, xi, max_iter, tol):
    """Log-domain Sinkhorn (routing.md section 0.1) for a = 1 per token and
    b = N/E per expert.  C [N, E] (no grad).  Stops after the first
    iteration whose column sums are all within tol x N/E (rows are exact
    after each row step).  Returns (f [N], g [E], iterations, max relative
    column error)."""
    N, E = C.shape
    Cx = C.float() / xi
    log_b = math.log(N / E)
    f = torch.zeros(N)
    g = torch.zeros(E)
    err = float('inf')
    it = 0
    while it < max_iter:
        it += 1
        g = log_b - torch.logsumexp(Cx + f[:, None], dim=0)
        f = -torch.logsumexp(Cx + g[None, :], dim=1)
        col = torch.exp(torch.logsumexp(Cx + f[:, None], dim=0) + g)
        err = (col / (N / E) - 1).abs().max().item()
        if err < tol:
            break
    return f, g, it, err


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.d_model, cfg.head_dim
        self.wq = nn.Parameter(torch.empty(cfg.n_head * hd, d))
        self.wk = nn.Parameter(torch.empty(cfg.n_kv_head * hd, d))
        self.wv = nn.Parameter(torch.empty(cfg.n_kv_head * hd, d))
        self.wo = nn.Parameter(torch.empty(d, cfg.n_head * hd))

    def forward(self, x, cos, sin, mask):
        cfg = self.cfg
        B, T, _ = x.shape
        hd = cfg.head_dim
        q = (x @ self.wq.t()).view(B, T, cfg.n_head, hd)
        k = (x @ self.wk.t()).view(B, T, cfg.n_kv_head, hd)
        v = (x @ self.wv.t()).view(B, T, cfg.n_kv_head, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = cfg.n_head // cfg.n_kv_head
        if rep > 1:  # kv head j serves query heads j*rep .. j*rep+rep-1
            k = k.repeat_interleave(rep, dim=2)
            v = v.repeat_interleave(rep, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))          # [B, H, T, hd]
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(mask[:T, :T], float('-inf'))
        att = torch.softmax(att.float(), dim=-1).to(v.dtype)
        o = (att @ v).transpose(1, 2).reshape(B, T, cfg.n_head * hd)
        return o @ self.wo.t()


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        E, d, ff = cfg.n_expert, cfg.d_model, cfg.d_ff
        self.gate_inp = nn.Parameter(torch.empty(E, d))
        self.gate_exps = nn.Parameter(torch.empty(E, ff, d))
        self.up_exps = nn.Parameter(torch.empty(E, ff, d))
        self.down_exps = nn.Parameter(torch.empty(E, d, ff))
        self.register_buffer('bias', torch.zeros(E), persistent=True)
        self.sinkhorn_log = None

    def route(self, S, mode, ot=None, noise=0.0, gen=None):
        """S [N, E] float32 logits -> (sel [N, k] long, w [N, k])."""
        k = self.cfg.top_k
        if mode == 'topk':
            if noise > 0.0:
                S = S + noise * torch.randn(S.shape, generator=gen)
            val, sel = torch.topk(S, k, dim=-1)
            return sel, torch.softmax(val, dim=-1)
        if mode == 'bias':
            with torch.no_grad():
                sel = torch.topk(torch.softmax(S, dim=-1) + self.bias, k, dim=-1).indices
            return sel, torch.softmax(S.gather(1, sel), dim=-1)
        if mode == 'sinkhorn':
            with torch.no_grad():
                C = ot_cost(S.detach(), ot.cost)
                f, g, it, err = sinkhorn_duals(C, ot.xi, ot.max_iter, ot.tol)
                sel = torch.topk(C / ot.xi + g, k, dim=-1).indices
                if self.sinkhorn_log is not None:  # diagnostics for train.py
                    plain = torch.topk(S.detach(), k, dim=-1).indices
                    self.sinkhorn_log.append({
                        'colerr': err, 'iters': it,
                        'counts_plan': torch.bincount(sel.reshape(-1), minlength=S.shape[1]).tolist(),
                        'counts_plain': torch.bincount(plain.reshape(-1), minlength=S.shape[1]).tolist()})
            if ot.grad == 'none':
                with torch.no_grad():
                    z = C / ot.xi + g
                    return sel, torch.softmax(z.gather(1, sel), dim=-1)
            z = ot_cost(S, ot.cost) / ot.xi + g
            return sel, torch.softmax(z.gather(1, sel), dim=-1)
        raise ValueError(mode)

    def forward(self, x, mode='topk', stats=None, ot=None, noise=0.0, gen=None):
        cfg = self.cfg
        shape = x.shape
        x = x.reshape(-1, cfg.d_model)
        N, E, k = x.shape[0], cfg.n_expert, cfg.top_k
        S = (x @ self.gate_inp.t()).float()                       # [N, E]
        sel, w = self.route(S, mode, ot, noise, gen)
        flat = sel.reshape(-1)
        counts = torch.bincount(flat, minlength=E)
        if stats is not None:
            stats.append({'logits': S, 'sel': sel, 'counts': counts})
        order = torch.argsort(flat, stable=True)
        tok = order // k
        wsorted = w.reshape(-1)[order].to(x.dtype)
        y = torch.zeros_like(x)
        start = 0
        for e, c in enumerate(counts.tolist()):
            if c == 0:
                continue
            idx = tok[start:start + c]
            xe = x.index_select(0, idx)
            he = F.silu(xe @ self.gate_exps[e].t()) * (xe @ self.up_exps[e].t())
            ye = (he @ self.down_exps[e].t()) * wsorted[start:start + c, None]
            y.index_add_(0, idx, ye)
            start += c
        return y.reshape(shape)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.attn_norm = nn.Parameter(torch.ones(cfg.d_model))
        self.attn = Attention(cfg)
        self.ffn_norm = nn.Parameter(torch.ones(cfg.d_model))
        self.moe = MoE(cfg)

    def forward(self, h, cos, sin, mask, mode, stats, ot, noise, gen):
        eps = self.cfg.norm_eps
        h = h + self.attn(rmsnorm(h, self.attn_norm, eps), cos, sin, mask)
        return h + self.moe(rmsnorm(h, self.ffn_norm, eps), mode, stats, ot, noise, gen)


class MoELM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_embd = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.output_norm = nn.Parameter(torch.ones(cfg.d_model))
        self.output = None  # tied to tok_embd unless a loaded GGUF has its own
        cos, sin = rope_tables(cfg.ctx, cfg.head_dim, cfg.rope_base)
        self.register_buffer('cos', cos, persistent=False)
        self.register_buffer('sin', sin, persistent=False)
        mask = torch.triu(torch.ones(cfg.ctx, cfg.ctx, dtype=torch.bool), 1)
        self.register_buffer('mask', mask, persistent=False)

    def init_weights(self, seed):
        """GPT-2 style: N(0, 0.02), output projections of the residual
        branches scaled by 1/sqrt(2 n_layer)."""
        g = torch.Generator().manual_seed(seed)
        std = 0.02
        res = std / math.sqrt(2 * self.cfg.n_layer)
        with torch.no_grad():
            self.tok_embd.normal_(0, std, generator=g)
            for b in self.blocks:
                for p in (b.attn.wq, b.attn.wk, b.attn.wv, b.moe.gate_inp,
                          b.moe.gate_exps, b.moe.up_exps):
                    p.normal_(0, std, generator=g)
                for p in (b.attn.wo, b.moe.down_exps):
                    p.normal_(0, res, generator=g)

    def n_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids, modes='topk', stats=None, ot=None, noise=0.0, gen=None):
        """ids [B, T] -> logits [B, T, V].  modes: one routing mode for
        every layer or a list with one per layer; stats: a list that gets
        one dict per layer (logits, sel, counts); ot: OTConfig of the
        'sinkhorn' layers; noise, gen: std and generator of the noise of
        'topk' layers (0 = none)."""
        if isinstance(modes, str):
            modes = [modes] * self.cfg.n_layer
        h = self.tok_embd[ids]
        for b, mode in zip(self.blocks, modes):
            h = b(h, self.cos, self.sin, self.mask, mode, stats, ot, noise, gen)
        h = rmsnorm(h, self.output_norm, self.cfg.norm_eps)
        w_out = self.tok_embd if self.output is None else self.output
        return h @ w_out.t()
