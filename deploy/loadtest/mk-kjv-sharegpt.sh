#!/bin/sh
# Writes kjv-sharegpt.json: a small ShareGPT-format dataset (a JSON array
# of {"id", "conversations": [{"from": "human", ...}, {"from": "gpt", ...}]})
# made from the King James Bible (public domain), for `epmoe bench server
# --dataset sharegpt`.  Each conversation asks to continue one to three
# verses and answers with the next one to four, so prompt and output
# lengths vary as in chat traffic.  Deterministic: the same text gives
# the same file.
#
#   deploy/loadtest/mk-kjv-sharegpt.sh [TEXT [N]] > deploy/loadtest/kjv-sharegpt.json
#
# TEXT: one verse per line (default models/kjv-test.txt, the held-out books).
set -eu
text=${1:-models/kjv-test.txt}
n=${2:-100}
[ -f "$text" ] || { echo "mk-kjv-sharegpt: no $text" >&2; exit 1; }
awk -v n="$n" '
function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/\t/, " ", s); return s }
# a linear congruential generator exact in doubles (69069 x 2^32 < 2^53):
# the same sequence in every awk
function rnd(m) { seed = (seed * 69069 + 1) % 4294967296; return int(seed / 65536) % m }
{ sub(/\r$/, ""); if (length($0) > 0) v[nv++] = $0 }
END {
	seed = 16
	if (nv < 8) { print "mk-kjv-sharegpt: too few verses" > "/dev/stderr"; exit 1 }
	printf "["
	for (i = 0; i < n; i++) {
		np = 1 + rnd(3); nr = 1 + rnd(4)
		s = rnd(nv - np - nr)
		p = v[s]; for (k = 1; k < np; k++) p = p " " v[s + k]
		r = v[s + np]; for (k = 1; k < nr; k++) r = r " " v[s + np + k]
		printf "%s\n{\"id\": \"kjv-%03d\", \"conversations\": [{\"from\": \"human\", \"value\": \"Continue the text: %s\"}, {\"from\": \"gpt\", \"value\": \"%s\"}]}", (i ? "," : ""), i, esc(p), esc(r)
	}
	printf "\n]\n"
}' "$text"
