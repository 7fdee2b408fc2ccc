#!/bin/sh
# Scale-out on hosts with a CPU budget of their own (a quarter core each): the
# same closed-loop load against 1, 2 and 4 worker hosts, on a model whose
# experts carry most of the work (random weights, dim 512, 8 experts of ff
# 4096, 4 layers, F16; written once into the build folder).  The router
# places the experts over the workers it expects, so each size is a
# router start with --expect-workers N and N workers that dial it.  Checks
# that every worker of every size takes expert batches; prints the
# throughput of each size as a ratio to one worker.
TEST_NAME=tb_scaleout
. "$(dirname "$0")/testbed.inc"
REQ=${TB_SCALEOUT_REQUESTS:-10}
if [ -z "${EPMOE_TESTBED_MODEL:-}" ]; then
	MODEL=$top/${EPMOE_BUILD:-build}/models/scaleout-ff4096-f16.gguf
	mkdir -p "$(dirname "$MODEL")" || fail "mkdir $(dirname "$MODEL")"
	[ -f "$MODEL" ] || "$B/epmoe" mkmodel --arch llama --out "$MODEL" --dim 512 --ff 4096 \
		--layers 4 --experts 8 --vocab 2048 --heads 8 --kv-heads 4 --dtype f16 >/dev/null ||
		fail "mkmodel"
fi

tb_up 4 --cpu 0.25
base=
for n in 1 2 4; do
	: >"$TMPD/router.log"
	tb_router $n
	i=1
	while [ $i -le $n ]; do tb_worker $i; i=$((i + 1)); done
	tb_ready 60 >/dev/null
	[ "$(tb_complete 4)" = 200 ] || fail "$n workers: warm-up"
	$TB client "$B/epmoe" bench server --server "$URL" --concurrency 8 --requests "$REQ" \
		--max-tokens 32 --prompt-tokens 32 --quiet --json="$TMPD/bench$n.json" >"$TMPD/bench$n.txt" 2>&1 ||
		fail "$n workers: epmoe bench server: $(tail -3 "$TMPD/bench$n.txt")"
	tps=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.1f" % d["output_token_throughput"])' "$TMPD/bench$n.json" 2>/dev/null) ||
		fail "$n workers: no throughput in $(head -c 300 "$TMPD/bench$n.json")"
	nfail=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["errors"])' "$TMPD/bench$n.json")
	[ "$nfail" = 0 ] || fail "$n workers: $nfail requests failed"
	tb_get /metrics >"$TMPD/metrics" || fail "/metrics"
	i=0
	while [ $i -lt $n ]; do
		c=$(awk -v w=$i '$1 == "epmoe_worker_request_seconds_count{worker=\"" w "\"}" { print $2 }' "$TMPD/metrics")
		[ "${c:-0}" -gt 0 ] || fail "$n workers: worker $i took no batch"
		i=$((i + 1))
	done
	[ -n "$base" ] || base=$tps
	note "$n worker host(s) at 0.25 CPU: $tps tok/s (x$(awk -v a="$tps" -v b="$base" 'BEGIN { printf "%.2f", a / b }') of 1 host)"
	# next size: a new router with the new placement, new workers
	$TB kill h0 TERM
	pids=$RPID
	i=1
	while [ $i -le $n ]; do
		$TB kill h$i TERM
		eval "pids=\"\$pids \$WPID_$i\""
		i=$((i + 1))
	done
	tb_wait_gone $pids
done
echo "tb_scaleout: 1 passed, 0 failed"
