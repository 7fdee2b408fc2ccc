#!/bin/sh
# Slow links: the same greedy completions over plain links, through the
# delay relays at 0 ms (their own cost), and over links of 2 ms and
# 1 Gbit/s to every worker host.  The text must not change; every expert
# batch must take at least the 4 ms round trip the relays add (2 ms each
# way); the mean batch round trip and request time of each setting are
# printed, as ratios to the plain links.
TEST_NAME=tb_slowlink
. "$(dirname "$0")/testbed.inc"
N_REQ=${TB_SLOWLINK_REQUESTS:-12}
BODY='{"prompt": "And God said, Let there be", "max_tokens": 24, "temperature": 0}'

# run LABEL: N_REQ completions; sets MEAN_MS (per expert batch), REQ_MS
# (per request) and writes the texts to $TMPD/LABEL.txt
run() {
	c0=$(tb_metric 'epmoe_worker_request_seconds_count{worker="0"}')
	s0=$(tb_metric 'epmoe_worker_request_seconds_sum{worker="0"}')
	t0=$(now_ms)
	: >"$TMPD/$1.txt"
	k=0
	while [ $k -lt "$N_REQ" ]; do
		$TB client curl -sf -m 60 "$URL/v1/completions" -H 'Content-Type: application/json' \
			-d "$BODY" | sed 's/.*"text":"\([^"]*\)".*/\1/' >>"$TMPD/$1.txt" || fail "$1: completion $k"
		k=$((k + 1))
	done
	REQ_MS=$(awk -v d=$(($(now_ms) - t0)) -v n="$N_REQ" 'BEGIN { printf "%.1f", d / n }')
	c1=$(tb_metric 'epmoe_worker_request_seconds_count{worker="0"}')
	s1=$(tb_metric 'epmoe_worker_request_seconds_sum{worker="0"}')
	MEAN_MS=$(awk -v a="$s0" -v b="$s1" -v x="$c0" -v y="$c1" 'BEGIN { printf "%.2f", 1000 * (b - a) / (y - x) }')
}

start_cluster() {
	tb_router 2
	tb_worker 1
	tb_worker 2
	tb_ready 60 >/dev/null
	[ "$(tb_complete 4)" = 200 ] || fail "warm-up"
}

tb_up 2
start_cluster
run plain
plain_ms=$MEAN_MS plain_req=$REQ_MS
$TB down
tb_up 2 --relay
start_cluster
run relay0
relay_ms=$MEAN_MS relay_req=$REQ_MS
for h in h1 h2; do
	$TB shape $h delay=2 rate=1gbit || fail "shape $h"
done
run slow
slow_ms=$MEAN_MS slow_req=$REQ_MS
# every completion opened and closed a connection through h0's relay; a
# relay that mishandles a closing connection may corrupt its heap and die
# a little later (it once released its timers as if they were the
# connection: a crash in some runs, not all): more connections through
# the delayed links, then every relay must still be alive
k=0
while [ $k -lt 40 ]; do
	$TB client curl -s -o /dev/null -m 10 "$URL/health" || true
	k=$((k + 1))
done
[ "$(tb_complete 4)" = 200 ] || fail "a completion after 40 more connections through the relays"
for h in h0 h1 h2; do
	kill -0 "$(cat "/run/epmoe-testbed/$TBNAME/relay.$h.pid")" 2>/dev/null ||
		fail "the relay of $h died: $(cat "/run/epmoe-testbed/$TBNAME/relay.$h.log")"
done
cmp -s "$TMPD/plain.txt" "$TMPD/relay0.txt" && cmp -s "$TMPD/plain.txt" "$TMPD/slow.txt" ||
	fail "the greedy text changed with the links: $(head -1 "$TMPD/plain.txt") / $(head -1 "$TMPD/slow.txt")"
awk -v m="$slow_ms" 'BEGIN { exit !(m >= 4.0) }' ||
	fail "expert batches over 2 ms links took $slow_ms ms on average: the delay is not applied"
awk -v p="$plain_ms" -v pr="$plain_req" -v r="$relay_ms" -v rr="$relay_req" -v s="$slow_ms" -v sr="$slow_req" 'BEGIN {
	printf "tb_slowlink: expert batch round trip (mean) / request (24 tokens):\n"
	printf "  plain links          %6.2f ms / %7.1f ms\n", p, pr
	printf "  relays at 0 ms       %6.2f ms / %7.1f ms  (x%.2f / x%.2f: the relay'"'"'s own cost)\n", r, rr, r / p, rr / pr
	printf "  2 ms, 1 Gbit/s       %6.2f ms / %7.1f ms  (x%.2f / x%.2f)\n", s, sr, s / p, sr / pr }'
echo "tb_slowlink: 1 passed, 0 failed"
