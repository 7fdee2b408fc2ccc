#!/bin/sh
# `make bench-testbed`: what the testbed's delay relay costs by itself.
# Alternates ROUNDS times between a testbed with plain links and one whose
# hosts all run a relay at delay 0 (so a router-worker connection crosses
# two relays), serving the same greedy completions on 2 workers, and prints
# the mean expert batch round trip and request time of each round and the
# ratio relay / plain per round.  Root only.
TEST_NAME=relay_cost
top=$(cd "$(dirname "$0")/../../.." && pwd)
. "$top/tests/testbed/testbed.inc"
ROUNDS=${ROUNDS:-3}
N_REQ=${N_REQ:-10}
BODY='{"prompt": "And God said, Let there be", "max_tokens": 24, "temperature": 0}'

measure() { # prints "batch_ms request_ms"
	tb_router 2
	tb_worker 1
	tb_worker 2
	tb_ready 30 >/dev/null
	[ "$(tb_complete 4)" = 200 ] || fail "warm-up"
	c0=$(tb_metric 'epmoe_worker_request_seconds_count{worker="0"}')
	s0=$(tb_metric 'epmoe_worker_request_seconds_sum{worker="0"}')
	t0=$(now_ms)
	k=0
	while [ $k -lt "$N_REQ" ]; do
		$TB client curl -sf -m 60 -o /dev/null "$URL/v1/completions" \
			-H 'Content-Type: application/json' -d "$BODY" || fail "completion"
		k=$((k + 1))
	done
	t1=$(now_ms)
	c1=$(tb_metric 'epmoe_worker_request_seconds_count{worker="0"}')
	s1=$(tb_metric 'epmoe_worker_request_seconds_sum{worker="0"}')
	awk -v a="$s0" -v b="$s1" -v x="$c0" -v y="$c1" -v d=$((t1 - t0)) -v n="$N_REQ" \
		'BEGIN { printf "%.3f %.1f\n", 1000 * (b - a) / (y - x), d / n }'
	$TB down
}

r=1
while [ $r -le "$ROUNDS" ]; do
	tb_up 2
	set -- $(measure)
	pb=$1 pr=$2
	tb_up 2 --relay
	set -- $(measure)
	rb=$1 rr=$2
	awk -v r=$r -v pb="$pb" -v pr="$pr" -v rb="$rb" -v rr="$rr" 'BEGIN {
		printf "round %d: batch round trip plain %.3f ms, relays %.3f ms (x%.2f, +%.3f ms); request %.1f / %.1f ms (x%.2f)\n",
			r, pb, rb, rb / pb, rb - pb, pr, rr, rr / pr }'
	r=$((r + 1))
done
