#!/bin/sh
# The live view in a real browser: a router with two workers serves a few
# dozen requests while headless Chromium (Debian's chromium) loads
# /dashboard; the page must render with data: a non-blank screenshot
# (kept in $EPMOE_BUILD/test-output/dashboard/), and a DOM with one
# heat-map cell per (layer, expert), some of them loaded, the placement
# table with both workers, the latency table and the empty decisions log.
# A blank page through the same checks is the control.
TEST_NAME=dashboard
. "$(dirname "$0")/router.inc"

command -v chromium >/dev/null 2>&1 ||
	fail "chromium is not installed (make deps installs it)"
command -v node >/dev/null 2>&1 || fail "node is not installed (make deps)"
OUT=${EPMOE_BUILD:-build}/test-output/dashboard
rm -rf "$OUT"
mkdir -p "$OUT" || fail "cannot make $OUT"
# the flags that work on a closed network, as root, without a GPU
browse() { # URL then chromium's own options
	url=$1
	shift
	timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic \
		--no-first-run --disable-background-networking --disable-component-update \
		--disable-sync --hide-scrollbars --user-data-dir="$TMPD/profile" "$@" "$url" \
		2>>"$TMPD/chromium.log"
}

router_start
# load for about 30 s, while both browser runs look
"$EPMOE_BIN/epmoe" bench server --server "$HTTP_URL" --rate 5 --requests 150 \
	--duration 30 --max-tokens 16 --input-len 16 -q >"$TMPD/bench.out" 2>&1 &
BENCH=$!
# the heat map shows the tokens routed while the page watches: start it once
# they flow (bounded: 60 s), not after a fixed pause a loaded machine outlasts
i=0
until curl -s -m 5 "$HTTP_URL/v1/stats" | node -e 'let b = "";
	process.stdin.on("data", (d) => b += d).on("end", () => {
		const s = JSON.parse(b);
		process.exit(s.expert_tokens.flat().some((v) => v > 0) ? 0 : 1); })' 2>/dev/null; do
	i=$((i + 1))
	[ $i -lt 120 ] || fail "no tokens routed 60 s into the load"
	sleep 0.5
done
# virtual time: the page's one-second polls run back to back; the page
# times its samples with the server's clock, so rates stay right
browse "$HTTP_URL/dashboard" --virtual-time-budget=15000 --dump-dom >"$OUT/dom.html" ||
	{ tail -5 "$TMPD/chromium.log" >&2; fail "chromium could not dump the DOM"; }
browse "$HTTP_URL/dashboard" --window-size=1400,1300 --virtual-time-budget=15000 \
	--screenshot="$OUT/dashboard.png" >/dev/null ||
	{ tail -5 "$TMPD/chromium.log" >&2; fail "chromium could not take the screenshot"; }
wait $BENCH || { cat "$TMPD/bench.out" >&2; fail "the load generator failed"; }

# the screenshot: an image with content
[ -s "$OUT/dashboard.png" ] || fail "no screenshot"
st=$(node "$(dirname "$0")/png_stats.js" "$OUT/dashboard.png") || fail "unreadable screenshot"
note "screenshot $OUT/dashboard.png: $st"
node -e 'const s = JSON.parse(process.argv[1]);
	process.exit(s.width === 1400 && s.colors > 50 && s.non_bg > 0.1 ? 0 : 1)' "$st" ||
	fail "the screenshot looks blank: $st"

# the DOM
dom=$OUT/dom.html
grep -q 'data-loaded="1"' "$dom" || fail "the page never loaded /v1/stats (dom: $dom)"
grep -q 'class="pill ok">live<' "$dom" || fail "the page is not live (dom: $dom)"
stats=$(curl -s -m 10 "$HTTP_URL/v1/stats") || fail "no /v1/stats"
cells=$(node -e 'const s = JSON.parse(process.argv[1]);
	console.log(s.server.n_layers * s.server.n_experts)' "$stats")
n=$(grep -o 'class="hm-cell" data-layer="[0-9]' "$dom" | wc -l)
[ "$n" -eq "$cells" ] || fail "the heat map has $n cells, want $cells (layers x experts)"
loaded=$(grep -o 'data-tokens="[1-9][0-9]*"' "$dom" | wc -l)
[ "$loaded" -gt 0 ] || fail "no heat-map cell shows load"
grep -q '>local-0' "$dom" && grep -q '>local-1' "$dom" ||
	fail "the placement table does not name both workers"
grep -q '<td>TTFT</td>' "$dom" || fail "no latency percentiles"
grep -q 'id="decisions-empty"' "$dom" || fail "the decisions log is not shown empty"
note "DOM: $n heat-map cells ($loaded with load), placement, latency, decisions"

# the control: a blank page fails the same screenshot check
printf '<!DOCTYPE html><html><body></body></html>' >"$TMPD/blank.html"
browse "file://$TMPD/blank.html" --window-size=1400,1300 --screenshot="$TMPD/blank.png" >/dev/null ||
	fail "chromium could not take the control screenshot"
st=$(node "$(dirname "$0")/png_stats.js" "$TMPD/blank.png") || fail "unreadable control"
node -e 'const s = JSON.parse(process.argv[1]);
	process.exit(s.colors > 50 || s.non_bg > 0.1 ? 0 : 1)' "$st" &&
	fail "the blankness check passes a blank page: $st"
note "passed (a blank page: $st)"
