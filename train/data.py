"""Fetch the King James Bible from Debian's `bible` tool, strip the verse
labels and split it by whole books into train / validation / test text.

Output (in --out, default train/out): train.txt, valid.txt, test.txt.
Format of each file: one verse per line, UTF-8 (the KJV text is ASCII),
book/chapter/verse labels removed, runs of spaces collapsed, no trailing
space, each line ending in "\n", books in canonical order.  The whole file
is one document for the tokenizer (a space prefix is added once at the very
start, like llama.cpp's add_space_prefix), so the first word of every verse
after the first is not preceded by "\u2581".

The split is by whole books so that no verse of a held-out book leaks into
training (see BOOKS_VALID / BOOKS_TEST; names as `bible` abbreviates them).
"""
import argparse
import os
import re
import subprocess
import sys

# Held-out books, chosen to mix narrative, poetry/wisdom, prophecy and
# epistles; each set is about 3.5% of the characters.
BOOKS_VALID = ['Ruth', 'Est', 'Eccl', 'Joel', 'Mic', 'Gal', 'Titus', '1Jn']
BOOKS_TEST = ['Jonah', 'Lam', 'Dan', 'Hab', 'Phi', 'Jas', 'Phmn', 'Jude']

BOOK_NAMES = {
    'Ruth': 'Ruth', 'Est': 'Esther', 'Eccl': 'Ecclesiastes', 'Joel': 'Joel',
    'Mic': 'Micah', 'Gal': 'Galatians', 'Titus': 'Titus', '1Jn': '1 John',
    'Jonah': 'Jonah', 'Lam': 'Lamentations', 'Dan': 'Daniel',
    'Hab': 'Habakkuk', 'Phi': 'Philippians', 'Jas': 'James',
    'Phmn': 'Philemon', 'Jude': 'Jude',
}

LABEL = re.compile(r'^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$')


def fetch_verses():
    """Return [(book, chapter, verse, text)] for the whole Bible."""
    try:
        raw = subprocess.run(['bible', '-f', 'Gen1:1-Rev22:21'],
                     check=True, capture_output=True).stdout
    except FileNotFoundError:
        sys.exit('data.py: `bible` not found; apt-get install bible-kjv')
    verses = []
    for line in raw.decode('utf-8').split('\n'):
        if not line.strip():
            continue
        m = LABEL.match(line)
        if not m:
            sys.exit('data.py: unexpected line from bible: %r' % line[:80])
        text = ' '.join(m.group(4).split())
        verses.append((m.group(1), int(m.group(2)), int(m.group(3)), text))
    return verses


def split(verses):
    parts = {'train': [], 'valid': [], 'test': []}
    for book, _, _, text in verses:
        if book in BOOKS_VALID:
            parts['valid'].append(text)
        elif book in BOOKS_TEST:
            parts['test'].append(text)
        else:
            parts['train'].append(text)
    return parts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(os.path.dirname(
        os.path.abspath(__file__)), 'out'))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    verses = fetch_verses()
    books = {v[0] for v in verses}
    for b in BOOKS_VALID + BOOKS_TEST:
        if b not in books:
            sys.exit('data.py: book %s missing from bible output' % b)
    if len(verses) != 31102:
        print('data.py: warning: %d verses (expected 31102)' % len(verses))
    parts = split(verses)
    total = sum(len(t) + 1 for p in parts.values() for t in p)
    for name, lines in parts.items():
        path = os.path.join(args.out, name + '.txt')
        with open(path, 'w', encoding='utf-8', newline='\n') as f:
            for t in lines:
                f.write(t + '\n')
        n = sum(len(t) + 1 for t in lines)
        print('data.py: %-5s %6d verses %8d chars (%.1f%%) -> %s' %
              (name, len(lines), n, 100.0 * n / total, path))


if __name__ == '__main__':
    main()
