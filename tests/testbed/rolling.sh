#!/bin/sh
# A rolling restart of every worker host under load: each worker in turn
# gets SIGTERM (it finishes the batch in hand and leaves), is started
# again, and the next one waits until the router serves again.  Today a
# worker that leaves takes its experts with it until it is back, so the
# requests that needed it meanwhile fail (503); what must hold is that the
# service comes back after each restart and serves every request at the
# end.  (With replicas of every expert, the failover work will require no
# failed request at all.)
TEST_NAME=tb_rolling
. "$(dirname "$0")/testbed.inc"
W=3

tb_up $W
tb_router $W --expert-timeout-ms 2000
i=1
while [ $i -le $W ]; do tb_worker $i; i=$((i + 1)); done
tb_ready 30 >/dev/null
load_start "$URL" 3 120 12 $TB client
sleep 2
t0=$(now_ms)
i=1
while [ $i -le $W ]; do
	ts=$(now_ms)
	$TB kill h$i TERM
	eval "tb_wait_gone \$WPID_$i"
	grep -q "worker w$i stopped" "$TMPD/w$i.log" || fail "w$i did not stop cleanly"
	tb_worker $i
	t=$(tb_ready 60)
	note "w$i restarted: serving again $(awk -v d=$(($(now_ms) - ts)) 'BEGIN { printf "%.1f", d / 1000 }') s after its SIGTERM"
	i=$((i + 1))
done
t_end=$(now_ms)
sleep 3
load_stop
during=$(awk -v a="$t0" -v b="$t_end" '$1 >= a && $1 <= b' "$LOAD_LOG" | wc -l)
bad=$(awk -v a="$t0" -v b="$t_end" '$1 >= a && $1 <= b && $2 != 200' "$LOAD_LOG" | wc -l)
note "during the rolling restart: $during requests, $bad failed (today's expected cost: no replicas yet); $(load_count 200 "$t_end") ok after it"
[ "$(load_count 200 "$t_end")" -gt 0 ] || fail "no request succeeded after the rolling restart"
for k in 1 2 3; do
	[ "$(tb_complete 12)" = 200 ] || fail "completion $k after the rolling restart"
done
# every worker is back under its own name and takes batches
tb_get /metrics >"$TMPD/metrics" || fail "/metrics"
i=1
while [ $i -le $W ]; do
	grep -Eq "^epmoe_worker_up\\{worker=\"[0-9]+\",id=\"w$i\",node=\"[^\"]*\"\\} 1\$" "$TMPD/metrics" ||
		fail "w$i is not up after the rolling restart"
	i=$((i + 1))
done
echo "tb_rolling: 1 passed, 0 failed"
