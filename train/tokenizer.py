"""SentencePiece-style (llama.cpp "SPM") vocabulary: BPE training on the
training split, and the score-greedy encoder llama.cpp and epmoe use.

Vocabulary layout (what goes into the GGUF tokenizer.ggml.* arrays):
  id 0 <unk> (type 2), 1 <s> (type 3, BOS), 2 </s> (type 3, EOS),
  3..258 byte tokens <0x00>..<0xFF> (type 6),
  then the merged pieces (type 1) in the order BPE created them, with
  score -rank (the first merge scores 0, the next -1, ...),
  then the single characters of the training text (type 1), scored below
  every merge.  "\\n" is deliberately not a piece: it is encoded by byte
  fallback as <0x0A>, as in Llama's own vocabulary.

Encoding (must equal llama.cpp's llm_tokenizer_spm, which epmoe copies):
  1. add_space_prefix: put one " " before the whole text, then replace
     every " " by U+2581 "\u2581";
  2. split into UTF-8 characters (symbols);
  3. repeatedly merge the adjacent pair of symbols whose concatenation is a
     vocabulary piece with the highest score; equal scores: leftmost first;
  4. every final symbol that is a piece becomes its id; a symbol that is
     not (only possible for a single character without a piece) becomes
     its UTF-8 bytes as byte tokens.
Why the scores work: the encoder merges the best-scoring piece first, so
the piece BPE created first must score highest; single characters are never
the result of a merge, so their scores never matter to the encoder (they are
set lowest only for tidiness).

Speed: BPE pieces never span a pre-token boundary (a "\u2581" can only start a
piece, letters and punctuation are trained apart, "\\n" is never merged), so
no merge can cross one and encoding the whole text equals encoding each
pre-token separately; encode() does that with a cache and
encode_reference() runs the whole-text algorithm to prove it (self-test).
"""
import argparse
import collections
import heapq
import json
import os
import re
import sys

SPACE = '\u2581'
UNK, BOS, EOS = 0, 1, 2
N_BYTES = 256
BYTE0 = 3
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_BYTE = 1, 2, 3, 6

# Pre-tokens for training: an optional "\u2581" followed by letters (and
# apostrophes), or by other non-space characters; or a newline.
PRETOK = re.compile("%s?[A-Za-z']+|%s?[^A-Za-z'%s\\n]+|%s|\\n" %
                    (SPACE, SPACE, SPACE, SPACE))


def escape(text, add_space_prefix=True):
    if add_space_prefix:
        text = ' ' + text
    return text.replace(' ', SPACE)


def pretokenize(escaped):
    words = PRETOK.findall(escaped)
    assert sum(len(w) for w in words) == len(escaped), 'pretokenizer lost text'
    return words


def train_bpe(text, vocab_size):
    """Return (pieces, chars): merged pieces in creation order and the
    sorted single characters of the text (without "\\n")."""
    freq = collections.Counter(w for w in pretokenize(escape(text))
                               if w != '\n')
    chars = sorted({c for w in freq for c in w})
    n_merges = vocab_size - BYTE0 - N_BYTES - len(chars)
    if n_merges <= 0:
        raise ValueError('vocab_size %d too small for %d characters'
                         % (vocab_size, len(chars)))
    words = [list(w) for w in freq]
    counts = [freq[w] for w in freq]
    pair_count = collections.defaultdict(int)
    pair_where = collections.defaultdict(set)
    for i, syms in enumerate(words):
        for a, b in zip(syms, syms[1:]):
            pair_count[(a, b)] += counts[i]
            pair_where[(a, b)].add(i)
    # Max-heap on count; ties broken by the smaller (a, b) so training is
    # deterministic.  Stale entries are skipped when popped.
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    pieces, seen = [], set(chars)
    while len(pieces) < n_merges and heap:
        negc, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negc or negc == 0:
            continue
        a, b = pair
        new = a + b
        touched = set()
        for i in list(pair_where[pair]):
            syms, c = words[i], counts[i]
            for x, y in zip(syms, syms[1:]):
                pair_count[(x, y)] -= c
                pair_where[(x, y)].discard(i)
                touched.add((x, y))
            out, j = [], 0
            while j < len(syms):
                if j + 1 < len(syms) and syms[j] == a and syms[j + 1] == b:
                    out.append(new)
                    j += 2
                else:
                    out.append(syms[j])
                    j += 1
            words[i] = out
            for x, y in zip(out, out[1:]):
                pair_count[(x, y)] += c
                pair_where[(x, y)].add(i)
                touched.add((x, y))
        for p in touched:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                pair_count.pop(p, None)
                pair_where.pop(p, None)
        if new not in seen:  # two merges may spell the same string
            seen.add(new)
            pieces.append(new)
    return pieces, chars


class Tokenizer:
    def __init__(self, tokens, scores, types):
        self.tokens, self.scores, self.types = tokens, scores, types
        self.piece_id = {}
        for i, (t, ty) in enumerate(zip(tokens, types)):
            if ty == TYPE_NORMAL:
                self.piece_id[t] = i
        self.cache = {}

    @classmethod
    def from_pieces(cls, pieces, chars):
        tokens = ['<unk>', '<s>', '</s>'] + ['<0x%02X>' % b for b in range(N_BYTES)]
        scores = [0.0] * len(tokens)
        types = [TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL] + [TYPE_BYTE] * N_BYTES
        for r, p in enumerate(pieces):
            tokens.append(p)
            scores.append(float(-r))
            types.append(TYPE_NORMAL)
        for j, c in enumerate(chars):
            tokens.append(c)
            scores.append(float(-(len(pieces) + j)))
            types.append(TYPE_NORMAL)
        return cls(tokens, scores, types)

    @classmethod
    def load(cls, path):
        with open(path, encoding='utf-8') as f:
            d = json.load(f)
        return cls(d['tokens'], d['scores'], d['token_type'])

    def save(self, path):
        with open(path, 'w', encoding='utf-8') as f:
            json.dump({'tokens': self.tokens, 'scores': self.scores,
                       'token_type': self.types}, f, ensure_ascii=False)

    def __len__(self):
        return len(self.tokens)

    def _finish(self, syms, out):
        for s in syms:
            i = self.piece_id.get(s)
            if i is not None:
                out.append(i)
            else:
                out.extend(BYTE0 + b for b in s.encode('utf-8'))

    def _encode_word(self, word):
        """Score-greedy merging of one pre-token (a list of characters):
        the quadratic loop is fine for words of a few dozen characters."""
        syms = list(word)
        scores, pid = self.scores, self.piece_id
        while len(syms) > 1:
            best, best_j = None, -1
            for j in range(len(syms) - 1):
                i = pid.get(syms[j] + syms[j + 1])
                if i is not None and (best is None or scores[i] > best):
                    best, best_j = scores[i], j  # strict > keeps leftmost
            if best_j < 0:
                break
            syms[best_j:best_j + 2] = [syms[best_j] + syms[best_j + 1]]
        return syms

    def encode(self, text, add_bos=True, add_space_prefix=True):
        out = [BOS] if add_bos else []
        for w in pretokenize(escape(text, add_space_prefix)):
            ids = self.cache.get(w)
            if ids is None:
                ids = []
                self._finish(self._encode_word(w), ids)
                self.cache[w] = ids
            out.extend(ids)
        return out

    def encode_reference(self, text, add_bos=True, add_space_prefix=True):
        """llama.cpp's algorithm on the whole text: a doubly linked list of
        symbols and a heap of candidate bigrams ordered by (score desc,
        left position asc); stale bigrams are skipped when popped."""
        s = escape(text, add_space_prefix)
        n = len(s)
        text_of = list(s)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1 if n else -1
        alive = [True] * n
        heap = []

        def push(l, r):
            if l < 0 or r < 0:
                return
            i = self.piece_id.get(text_of[l] + text_of[r])
            if i is not None:
                heapq.heappush(heap, (-self.scores[i], l, r,
                                      len(text_of[l]) + len(text_of[r])))

        for j in range(n - 1):
            push(j, j + 1)
        while heap:
            _, l, r, ln = heapq.heappop(heap)
            if not alive[l] or not alive[r] or nxt[l] != r or \
                    len(text_of[l]) + len(text_of[r]) != ln:
                continue
            text_of[l] += text_of[r]
            alive[r] = False
            nxt[l] = nxt[r]
            if nxt[r] >= 0:
                prev[nxt[r]] = l
            push(prev[l], l)
            push(l, nxt[l])
        out = [BOS] if add_bos else []
        j = 0 if n else -1
        syms = []
        while j >= 0:
            syms.append(text_of[j])
            j = nxt[j]
        self._finish(syms, out)
        return out

    def piece_text(self, i):
        return self.tokens[i].replace(SPACE, ' ')

    def decode(self, ids, strip_prefix=True):
        buf = bytearray()
        for i in ids:
            ty = self.types[i]
            if ty == TYPE_BYTE:
                buf.append(int(self.tokens[i][3:5], 16))
            elif ty == TYPE_NORMAL:
                buf += self.tokens[i].replace(SPACE, ' ').encode('utf-8')
        text = buf.decode('utf-8', errors='replace')
        if strip_prefix and text.startswith(' '):
            text = text[1:]
        return text


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description='train the SPM/BPE vocabulary')
    ap.add_argument('--train', default=os.path.join(here, 'out', 'train.txt'))
    ap.add_argument('--out', default=os.path.join(here, 'out', 'tokenizer.json'))
    ap.add_argument('--vocab-size', type=int, default=4096)
    ap.add_argument('--check', nargs='*', default=[],
                    help='files on which encode() must equal encode_reference()')
    args = ap.parse_args()
    with open(args.train, encoding='utf-8') as f:
        text = f.read()
    pieces, chars = train_bpe(text, args.vocab_size)
    tok = Tokenizer.from_pieces(pieces, chars)
    tok.save(args.out)
    ids = tok.encode(text)
    print('tokenizer.py: %d tokens (%d merges, %d characters); train split '
          '%d chars -> %d tokens (%.2f chars/token) -> %s'
          % (len(tok), len(pieces), len(chars), len(text), len(ids) - 1,
             len(text) / (len(ids) - 1), args.out))
    for path in args.check:
        with open(path, encoding='utf-8') as f:
            t = f.read()
        a, b = tok.encode(t), tok.encode_reference(t)
        if a != b:
            sys.exit('tokenizer.py: cached and reference encoders differ on %s'
                     % path)
        if tok.decode(a[1:]) != t:
            sys.exit('tokenizer.py: decode(encode(x)) != x on %s' % path)
        print('tokenizer.py: %s: %d tokens, reference encoder agrees, '
              'round trip exact' % (path, len(a) - 1))


if __name__ == '__main__':
    main()
