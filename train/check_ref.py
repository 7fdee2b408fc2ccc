"""Check model.py and tokenizer.py against llama.cpp's outputs for the
random-weight Mixtral in shared/testdata (mixtral-tiny-f32.gguf): the
tokenization of the reference text must equal llama.cpp's ids, and the
logits of our forward pass must match llama.cpp's to 1e-4 (F32 weights).
This proves the RoPE pairing, GQA, routing and tensor layout conventions.
"""
import os
import sys

import numpy as np
import torch

from export_gguf import model_from_gguf
from tokenizer import Tokenizer

TEXT = 'Hello world, the quick brown fox'


def main():
    td = os.environ.get('EPMOE_TESTDATA') or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'testdata')
    if not os.path.exists(os.path.join(td, 'mixtral-tiny-f32.gguf')):
        td = '/work/shared/testdata'
    if not os.path.exists(os.path.join(td, 'mixtral-tiny-f32.gguf')):
        print('check_ref.py: shared/testdata not found (set EPMOE_TESTDATA); '
              'reference check skipped')
        return
    torch.set_num_threads(2)
    m, kv = model_from_gguf(os.path.join(td, 'mixtral-tiny-f32.gguf'))
    tok = Tokenizer(kv['tokenizer.ggml.tokens'], kv['tokenizer.ggml.scores'],
                    kv['tokenizer.ggml.token_type'])
    ref_ids = [int(x) for x in open(os.path.join(td, 'mixtral-tiny-f32.ids.txt')).read().split(',')]
    ids = tok.encode(TEXT)
    ids_ref = tok.encode_reference(TEXT)
    ok = ids == ref_ids and ids_ref == ref_ids
    print('check_ref.py: tokenizer %s (ours %s, llama.cpp %s)'
          % ('OK' if ok else 'MISMATCH', ids, ref_ids))
    ref = np.fromfile(os.path.join(td, 'mixtral-tiny-f32.logits.f32'),
                      dtype='<f4').reshape(len(ref_ids), -1)
    with torch.no_grad():
        logits = m(torch.tensor([ref_ids]))[0].numpy()
    err = float(np.abs(logits - ref).max())
    print('check_ref.py: logits max |diff| = %.2e over %s' % (err, ref.shape))
    if not ok or err > 1e-4:
        sys.exit('check_ref.py: FAILED')
    print('check_ref.py: OK')


if __name__ == '__main__':
    main()
