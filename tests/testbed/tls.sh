#!/bin/sh
# Mutual TLS across hosts: the router on h0 and workers on h1, h2 with
# certificates of the cluster's CA (deploy/mkcerts.sh) on tls+tcp://
# control and data sockets serve completions; from h3, a worker with a
# certificate of another CA and a worker speaking plain tcp:// both dial
# the router's control port and never register (no "registered" line, not
# in /metrics), while the cluster keeps serving.
TEST_NAME=tb_tls
. "$(dirname "$0")/testbed.inc"

tb_up 3
tb_tls
H3=$($TB ip h3)
EPMOE_CERT_SANS="IP:$H3" sh "$top/deploy/mkcerts.sh" "$TMPD/rogue" h3 >/dev/null 2>&1 ||
	fail "deploy/mkcerts.sh for the rogue CA"
tb_router 2
# the intruders dial first, so they would be placed if the router took them
$TB exec h3 "$B/epmoe-worker" --router "tls+tcp://$H0:5556" --model "$MODEL" \
	--listen "tls+tcp://$H3:7001" --threads 1 --id evil --tls-cert "$TMPD/rogue/h3.pem" \
	--tls-key "$TMPD/rogue/h3.key" --tls-ca "$TMPD/rogue/ca.pem" >>"$TMPD/rogue.log" 2>&1 &
ROGUE=$!
$TB exec h3 "$B/epmoe-worker" --router "tcp://$H0:5556" --model "$MODEL" \
	--listen "tcp://$H3:7002" --threads 1 --id plain >>"$TMPD/plain.log" 2>&1 &
PLAIN=$!
sleep 2
tb_worker 1
tb_worker 2
note "TLS cluster ready in $(tb_ready 60) s"
for k in 1 2 3; do
	[ "$(tb_complete 8)" = 200 ] || fail "completion $k over TLS"
done
tb_get /metrics >"$TMPD/metrics" || fail "/metrics"
up=$(grep -c '^epmoe_worker_up{.*} 1$' "$TMPD/metrics")
[ "$up" -eq 2 ] || fail "$up live workers in /metrics, expected 2: $(grep '^epmoe_worker_up' "$TMPD/metrics" | tr '\n' ' ')"
grep -q 'id="\(evil\|plain\)"' "$TMPD/metrics" && fail "an intruder is in /metrics: $(grep '^epmoe_worker_up' "$TMPD/metrics" | tr '\n' ' ')"
for i in 1 2; do
	grep -q "registered with router tls+tcp://" "$TMPD/w$i.log" || fail "w$i did not register over TLS"
done
busy=$(awk '$1 ~ /^epmoe_worker_request_seconds_count\{/ && $2 > 0' "$TMPD/metrics" | wc -l)
[ "$busy" -eq 2 ] || fail "$busy workers took expert batches, expected 2"
kill -0 "$ROGUE" 2>/dev/null || note "the worker of another CA exited: $(tail -1 "$TMPD/rogue.log")"
grep -q 'registered with router' "$TMPD/rogue.log" "$TMPD/plain.log" && fail "an intruder registered"
note "3 completions over TLS from 2 worker hosts; a worker of another CA and a plain-TCP worker on h3 never registered"
echo "tb_tls: 1 passed, 0 failed"
