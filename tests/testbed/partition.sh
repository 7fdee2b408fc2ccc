#!/bin/sh
# A worker host cut off (its link down) under load, then healed: the router
# notices (/health 503 until the other worker covers the lost experts; the
# requests that needed it meanwhile fail), and once the link is back the
# worker registers again by itself and the service serves every request
# again.
TEST_NAME=tb_partition
. "$(dirname "$0")/testbed.inc"

tb_up 2
tb_router 2 --expert-timeout-ms 1000
tb_worker 1
tb_worker 2
note "ready in $(tb_ready 30) s"
[ "$(tb_complete 8)" = 200 ] || fail "first completion"
load_start "$URL" 2 60 8 $TB client
sleep 2
$TB partition h2
t0=$(now_ms)
# the heartbeat timeout (3 periods of 1 s) or a failed expert batch marks it down
t_down=$(wait_http "$URL/health" 503 15 $TB client)
note "partitioned h2: /health 503 after $t_down s"
sleep 2
$TB heal h2
t_up=$(wait_http "$URL/health" 200 30 $TB client)
t_heal=$(now_ms)
note "healed h2: /health 200 again after $t_up s"
# the load's next request after the heal (30 s at most: a loaded machine
# may take seconds per request)
k=0
while [ "$(load_count 200 "$t_heal")" -eq 0 ] && [ $k -lt 60 ]; do
	sleep 0.5
	k=$((k + 1))
done
load_stop
failed=$(awk -v a="$t0" -v b="$t_heal" '$1 >= a && $1 <= b && $2 != 200' "$LOAD_LOG" | wc -l)
after=$(load_count 200 "$t_heal")
note "requests: $(load_count 200) ok, $failed failed while h2 was cut off, $after ok after the heal"
[ "$after" -gt 0 ] || fail "no request succeeded after the heal"
grep -q 'registered with router .* as worker' "$TMPD/w2.log" || fail "w2 never registered"
# w1 covers w2's experts meanwhile (degraded service), so the service may
# be back before w2: it registers again once its heartbeats get through
# (30 s at most)
k=0
while [ "$(grep -c 'registered with router' "$TMPD/w2.log")" -lt 2 ] && [ $k -lt 60 ]; do
	sleep 0.5
	k=$((k + 1))
done
[ "$(grep -c 'registered with router' "$TMPD/w2.log")" -ge 2 ] || fail "w2 did not register again after the heal"
# right after it registers again the healed worker may still be fenced
# once or twice while its stale connections time out (the router covers
# its experts meanwhile): the first success within 30 s, then every
# request succeeds
k=0
while [ "$(tb_complete 8)" != 200 ] && [ $k -lt 30 ]; do
	sleep 1
	k=$((k + 1))
done
[ $k -lt 30 ] || fail "no completion succeeded within 30 s of the worker's return"
note "first completion after the worker's return: after $k failed tries"
for k in 1 2 3; do
	[ "$(tb_complete 8)" = 200 ] || fail "completion $k after the heal"
done
echo "tb_partition: 1 passed, 0 failed"
