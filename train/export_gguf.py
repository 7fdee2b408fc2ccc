"""A small GGUF v3 writer and reader (standard library + numpy), and the
exporter from a trainer checkpoint to a llama.cpp-compatible Mixtral GGUF.

File layout written (GGUF v3, little-endian, alignment 32):
  "GGUF", u32 version 3, u64 n_tensors, u64 n_kv,
  n_kv x (string key, u32 type, value), n_tensors x (string name,
  u32 n_dims, u64 ne[n_dims] innermost first, u32 ggml type, u64 offset),
  zero padding to 32, tensor data (each tensor at a multiple of 32).
Keys and tensor names/shapes follow shared/testdata/mixtral-tiny-f32.gguf.
Norm weights and the router (ffn_gate_inp, tiny, and routing decisions are
sensitive to it; llama.cpp's converters keep it F32 too) are F32, the other
matrices F16 (general.file_type 1 = MOSTLY_F16).
The LM head is tied in training; output.weight is still written (a copy of
token_embd.weight) so that loaders that require it work.

Usage: export_gguf.py CHECKPOINT.pt OUT.gguf [--name NAME]
"""
import argparse
import struct
import sys

import numpy as np

GGUF_MAGIC = b'GGUF'
ALIGN = 32
# GGUF metadata value types
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, \
    T_U64, T_I64, T_F64 = range(13)
SCALAR_FMT = {T_U8: 'B', T_I8: 'b', T_U16: 'H', T_I16: 'h', T_U32: 'I',
              T_I32: 'i', T_F32: 'f', T_BOOL: '?', T_U64: 'Q', T_I64: 'q',
              T_F64: 'd'}
# ggml tensor types
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8


def _str(s):
    b = s.encode('utf-8')
    return struct.pack('<Q', len(b)) + b


def _value(vtype, v):
    if vtype == T_STR:
        return _str(v)
    if vtype == T_ARR:
        atype, items = v
        out = [struct.pack('<IQ', atype, len(items))]
        out += [_value(atype, x) for x in items]
        return b''.join(out)
    return struct.pack('<' + SCALAR_FMT[vtype], v)


def write_gguf(path, kvs, tensors):
    """kvs: list of (key, type, value); arrays as (T_ARR, (elem_type, list)).
    tensors: list of (name, numpy array, ggml type).  The numpy array's
    shape is outermost first, so ne = reversed(shape)."""
    head = [GGUF_MAGIC, struct.pack('<IQQ', 3, len(tensors), len(kvs))]
    for key, vtype, v in kvs:
        head.append(_str(key) + struct.pack('<I', vtype) + _value(vtype, v))
    blobs, offset = [], 0
    for name, arr, gtype in tensors:
        if gtype == GGML_F32:
            data = np.ascontiguousarray(arr, dtype='<f4').tobytes()
        elif gtype == GGML_F16:
            data = np.ascontiguousarray(arr, dtype='<f2').tobytes()
        else:
            raise ValueError('unsupported ggml type %d' % gtype)
        ne = list(reversed(arr.shape))
        head.append(_str(name) + struct.pack('<I', len(ne)) +
                    b''.join(struct.pack('<Q', n) for n in ne) +
                    struct.pack('<IQ', gtype, offset))
        pad = (-len(data)) % ALIGN
        blobs.append(data + b'\0' * pad)
        offset += len(data) + pad
    h = b''.join(head)
    h += b'\0' * ((-len(h)) % ALIGN)
    with open(path, 'wb') as f:
        f.write(h)
        for b in blobs:
            f.write(b)


def read_gguf(path):
    """Return (kv dict, {name: numpy array}) with arrays shaped outermost
    first (F32 and F16 tensors; F16 is returned as float16)."""
    with open(path, 'rb') as f:
        d = f.read()
    pos = 0

    def rd(fmt):
        nonlocal pos
        v = struct.unpack_from('<' + fmt, d, pos)
        pos += struct.calcsize('<' + fmt)
        return v[0]

    def rstr():
        nonlocal pos
        n = rd('Q')
        s = d[pos:pos + n].decode('utf-8')
        pos += n
        return s

    def rval(t):
        if t == T_STR:
            return rstr()
        if t == T_ARR:
            at, n = rd('I'), rd('Q')
            return [rval(at) for _ in range(n)]
        return rd(SCALAR_FMT[t])

    if d[:4] != GGUF_MAGIC:
        raise ValueError('%s: not a GGUF file' % path)
    pos = 4
    version, n_t, n_kv = rd('I'), rd('Q'), rd('Q')
    if version != 3:
        raise ValueError('%s: GGUF version %d' % (path, version))
    kv = {}
    for _ in range(n_kv):
        k = rstr()
        kv[k] = rval(rd('I'))
    infos = []
    for _ in range(n_t):
        name = rstr()
        nd = rd('I')
        ne = [rd('Q') for _ in range(nd)]
        infos.append((name, ne, rd('I'), rd('Q')))
    align = kv.get('general.alignment', ALIGN)
    base = pos + (-pos) % align
    tensors = {}
    for name, ne, gtype, off in infos:
        n = int(np.prod(ne))
        shape = tuple(reversed(ne))
        if gtype == GGML_F32:
            a = np.frombuffer(d, '<f4', n, base + off)
        elif gtype == GGML_F16:
            a = np.frombuffer(d, '<f2', n, base + off)
        else:
            raise ValueError('%s: tensor %s has unsupported type %d'
                             % (path, name, gtype))
        tensors[name] = a.reshape(shape)
    return kv, tensors


def model_from_gguf(path):
    """Build a model.MoELM (float32) from a llama/Mixtral GGUF."""
    import torch
    from model import Config, MoELM
    kv, t = read_gguf(path)
    if kv['general.architecture'] != 'llama':
        raise ValueError('%s: architecture %s' % (path, kv['general.architecture']))
    p = 'llama.'
    cfg = Config(vocab_size=len(kv['tokenizer.ggml.tokens']),
                 d_model=kv[p + 'embedding_length'], n_layer=kv[p + 'block_count'],
                 n_head=kv[p + 'attention.head_count'],
                 n_kv_head=kv[p + 'attention.head_count_kv'],
                 d_ff=kv[p + 'feed_forward_length'], n_expert=kv[p + 'expert_count'],
                 top_k=kv[p + 'expert_used_count'],
                 ctx=min(kv[p + 'context_length'], 1024),
                 rope_base=kv[p + 'rope.freq_base'],
                 norm_eps=kv[p + 'attention.layer_norm_rms_epsilon'])
    m = MoELM(cfg)

    def T(name):
        return torch.from_numpy(np.array(t[name], dtype=np.float32))
    with torch.no_grad():
        m.tok_embd.copy_(T('token_embd.weight'))
        m.output_norm.copy_(T('output_norm.weight'))
        if 'output.weight' in t:
            m.output = torch.nn.Parameter(T('output.weight'))
        for i, b in enumerate(m.blocks):
            pre = 'blk.%d.' % i
            b.attn_norm.copy_(T(pre + 'attn_norm.weight'))
            b.attn.wq.copy_(T(pre + 'attn_q.weight'))
            b.attn.wk.copy_(T(pre + 'attn_k.weight'))
            b.attn.wv.copy_(T(pre + 'attn_v.weight'))
            b.attn.wo.copy_(T(pre + 'attn_output.weight'))
            b.ffn_norm.copy_(T(pre + 'ffn_norm.weight'))
            b.moe.gate_inp.copy_(T(pre + 'ffn_gate_inp.weight'))
            b.moe.gate_exps.copy_(T(pre + 'ffn_gate_exps.weight'))
            b.moe.up_exps.copy_(T(pre + 'ffn_up_exps.weight'))
            b.moe.down_exps.copy_(T(pre + 'ffn_down_exps.weight'))
    return m, kv


def export(ckpt_path, out_path, name=None):
    import torch
    ck = torch.load(ckpt_path, map_location='cpu')
    cfg, sd, tok = ck['config'], ck['model'], ck['tokenizer']
    name = name or ck.get('name', 'kjv-moe')

    def M(key):  # matrices: F16
        return (sd[key].float().numpy().astype(np.float16), GGML_F16)

    def V(key):  # norms and the router: F32
        return (sd[key].float().numpy(), GGML_F32)

    tensors = [('token_embd.weight',) + M('tok_embd')]
    for i in range(cfg['n_layer']):
        s, pre = 'blocks.%d.' % i, 'blk.%d.' % i
        tensors += [
            (pre + 'attn_norm.weight',) + V(s + 'attn_norm'),
            (pre + 'attn_q.weight',) + M(s + 'attn.wq'),
            (pre + 'attn_k.weight',) + M(s + 'attn.wk'),
            (pre + 'attn_v.weight',) + M(s + 'attn.wv'),
            (pre + 'attn_output.weight',) + M(s + 'attn.wo'),
            (pre + 'ffn_norm.weight',) + V(s + 'ffn_norm'),
            (pre + 'ffn_gate_inp.weight',) + V(s + 'moe.gate_inp'),
            (pre + 'ffn_gate_exps.weight',) + M(s + 'moe.gate_exps'),
            (pre + 'ffn_up_exps.weight',) + M(s + 'moe.up_exps'),
            (pre + 'ffn_down_exps.weight',) + M(s + 'moe.down_exps'),
        ]
    tensors += [('output_norm.weight',) + V('output_norm'),
                ('output.weight',) + M('tok_embd')]
    hd = cfg['d_model'] // cfg['n_head']
    kvs = [
        ('general.architecture', T_STR, 'llama'),
        ('general.name', T_STR, name),
        ('general.file_type', T_U32, 1),
        ('llama.context_length', T_U32, cfg['ctx']),
        ('llama.embedding_length', T_U32, cfg['d_model']),
        ('llama.block_count', T_U32, cfg['n_layer']),
        ('llama.feed_forward_length', T_U32, cfg['d_ff']),
        ('llama.attention.head_count', T_U32, cfg['n_head']),
        ('llama.attention.head_count_kv', T_U32, cfg['n_kv_head']),
        ('llama.rope.freq_base', T_F32, float(cfg['rope_base'])),
        ('llama.attention.layer_norm_rms_epsilon', T_F32, float(cfg['norm_eps'])),
        ('llama.rope.dimension_count', T_U32, hd),
        ('llama.expert_count', T_U32, cfg['n_expert']),
        ('llama.expert_used_count', T_U32, cfg['top_k']),
        ('llama.vocab_size', T_U32, cfg['vocab_size']),
        ('tokenizer.ggml.model', T_STR, 'llama'),
        ('tokenizer.ggml.pre', T_STR, 'default'),
        ('tokenizer.ggml.tokens', T_ARR, (T_STR, tok['tokens'])),
        ('tokenizer.ggml.scores', T_ARR, (T_F32, [float(x) for x in tok['scores']])),
        ('tokenizer.ggml.token_type', T_ARR, (T_I32, [int(x) for x in tok['token_type']])),
        ('tokenizer.ggml.bos_token_id', T_U32, 1),
        ('tokenizer.ggml.eos_token_id', T_U32, 2),
        ('tokenizer.ggml.unknown_token_id', T_U32, 0),
        ('tokenizer.ggml.add_bos_token', T_BOOL, True),
        ('tokenizer.ggml.add_eos_token', T_BOOL, False),
        ('tokenizer.ggml.add_space_prefix', T_BOOL, True),
    ]
    write_gguf(out_path, kvs, tensors)


def main():
    ap = argparse.ArgumentParser(description='export a checkpoint to GGUF')
    ap.add_argument('checkpoint')
    ap.add_argument('out')
    ap.add_argument('--name')
    args = ap.parse_args()
    export(args.checkpoint, args.out, args.name)
    kv, t = read_gguf(args.out)
    n = sum(a.size for k, a in t.items() if k != 'output.weight')
    print('export_gguf.py: %s: %d tensors, %d parameters (output.weight tied '
          'copy not counted)' % (args.out, len(t), n))


if __name__ == '__main__':
    sys.exit(main())
