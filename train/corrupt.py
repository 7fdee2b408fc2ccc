"""Corrupted copies of a text for the robustness study: a given share of the
characters (newlines excluded, so the verses stay lines) replaced by another
character of the text's own alphabet, positions and replacements drawn from
a seeded generator.  The same seed and rate always give the same file.

Usage: corrupt.py IN OUT --rate 0.05 [--seed 1234]
"""
import argparse

import numpy as np


def corrupt(text, rate, seed):
    """Returns (corrupted text, number of characters replaced)."""
    alphabet = sorted(set(text) - {'\n'})
    chars = list(text)
    pos = np.array([i for i, c in enumerate(chars) if c != '\n'])
    n = int(round(rate * len(pos)))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pos, size=n, replace=False))
    for i in chosen:
        # uniform over the alphabet without the original character
        j = int(rng.integers(len(alphabet) - 1))
        orig = alphabet.index(chars[i])
        chars[i] = alphabet[j + (j >= orig)]
    return ''.join(chars), n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('src')
    ap.add_argument('dst')
    ap.add_argument('--rate', type=float, required=True)
    ap.add_argument('--seed', type=int, default=1234)
    args = ap.parse_args()
    if not 0.0 <= args.rate <= 1.0:
        raise SystemExit('corrupt.py: --rate must be between 0 and 1')
    with open(args.src, encoding='utf-8') as f:
        text = f.read()
    out, n = corrupt(text, args.rate, args.seed)
    with open(args.dst, 'w', encoding='utf-8') as f:
        f.write(out)
    print('corrupt.py: %s -> %s: %d of %d characters replaced (%.1f%%, seed %d)'
          % (args.src, args.dst, n, sum(c != '\n' for c in text),
             100.0 * args.rate, args.seed))


if __name__ == '__main__':
    main()
