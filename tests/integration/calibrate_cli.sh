#!/bin/sh
# epmoe calibrate and the router's --spec / --affinity on the command line:
# a small run writes an affinity file and a JSON report whose hit rates and
# row ratios are fractions; missing or bad arguments exit 2 naming the
# flag; an unreadable text exits 1; the router refuses a bad --spec and a
# file that is not an affinity file, naming them.
set -u
E="${EPMOE_BIN:-build/bin}/epmoe"
R="${EPMOE_BIN:-build/bin}/epmoe-router"
M="${EPMOE_TESTDATA:-../shared/testdata}/mixtral-tiny-f32.gguf"
tmp=$(mktemp -d /tmp/epmoe-calibrate-cli.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0

fail() {
	echo "calibrate_cli: FAIL: $*"
	[ -f "$tmp/err" ] && sed 's/^/  stderr: /' "$tmp/err"
	exit 1
}

# expect CODE PATTERN -- CMD ARGS...
expect() {
	code=$1 pat=$2
	shift 3
	"$@" >"$tmp/out" 2>"$tmp/err"
	rc=$?
	[ "$rc" -eq "$code" ] || fail "$*: exit $rc, expected $code"
	grep -q -- "$pat" "$tmp/out" "$tmp/err" || fail "$*: output lacks '$pat'"
	n=$((n + 1))
}

i=0
while [ $i -lt 40 ]; do echo "In the beginning God created the heaven and the earth."; i=$((i + 1)); done >"$tmp/text"
expect 0 '"bytes_ratio_grouped":' -- "$E" calibrate --model "$M" --file "$tmp/text" \
	--out "$tmp/a.aff" --ctx 32 --workers 2 --threads 1 --json
[ -s "$tmp/a.aff" ] || fail "no affinity file written"
# every rate and ratio is in [0, 1] (grouped rows >= 0.5 with top-2)
tr ',' '\n' <"$tmp/out" | sed -n 's/.*"\(hit_tok[a-z_]*\|bytes_ratio_[a-z]*\)":\([0-9.]*\).*/\2/p' |
	awk '{ if ($1 < 0 || $1 > 1) bad = 1; k++ } END { exit (bad || k < 4) }' ||
	fail "rates out of range: $(cat "$tmp/out")"
expect 2 usage -- "$E" calibrate --model "$M" --file "$tmp/text"
expect 2 '--holdout' -- "$E" calibrate --model "$M" --file "$tmp/text" --out "$tmp/b" --holdout 2
expect 2 '--workers' -- "$E" calibrate --model "$M" --file "$tmp/text" --out "$tmp/b" --workers 0
expect 1 'cannot read' -- "$E" calibrate --model "$M" --file "$tmp/none" --out "$tmp/b"
expect 2 '--spec expects' -- "$R" --model "$M" --local --spec fast
expect 1 'not an epmoe affinity file' -- "$R" --model "$M" --local --http 127.0.0.1:0 --nng "" \
	--spec predict --affinity "$tmp/text"
echo "calibrate_cli: $n checks passed"
