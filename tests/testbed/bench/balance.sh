#!/bin/sh
# (root) The balancer on the testbed: 4 worker hosts at 0.4 CPU each, the
# router's host at 0.4 CPU, a Zipf-skewed model (epmoe mkmodel --gate-skew
# zipf:1.2, 16 experts top-2 carrying most of the work), 16 concurrent
# greedy streams; --balance off / eplb / llep / all with 4 redundant slots
# a layer, and all with the replicas held as Q8_0 (all+q8,
# --replica-dtype q8_0).  Per mode, over a warm-up round and a measured round: the
# workers' token load max/mean (layer: the busiest worker's pairs over the
# mean per layer call in the measured round; total: the per-worker counts
# over both rounds), decode
# throughput as a ratio to off (same run), inter-token latency p99,
# re-placements and the weight bytes they loaded, failed requests, and the
# router's inter-token p99 while a re-placement was in flight over its p99
# otherwise (balance.itl_by_placement; target <= 1.25), with how many
# token gaps fell in a re-placement.  TB_BALANCE_CPU and
# TB_BALANCE_ROUTER_CPU change the quotas (default 0.4 and 0.4),
# TB_BALANCE_REQUESTS the measured requests, EPMOE_TESTBED_MODEL the model.
TEST_NAME=tb_balance
top=$(cd "$(dirname "$0")/../../.." && pwd)
. "$(dirname "$0")/../testbed.inc"
REQ=${TB_BALANCE_REQUESTS:-32}
CPU=${TB_BALANCE_CPU:-0.4}
RCPU=${TB_BALANCE_ROUTER_CPU:-0.4}
if [ -z "${EPMOE_TESTBED_MODEL:-}" ]; then
	MODEL=$top/${EPMOE_BUILD:-build}/models/balance-zipf-1.2-ff4096.gguf
	mkdir -p "$(dirname "$MODEL")" || fail "mkdir $(dirname "$MODEL")"
	[ -f "$MODEL" ] || "$B/epmoe" mkmodel --arch llama --out "$MODEL" --dim 512 --ff 4096 --dtype f16 \
		--layers 4 --experts 16 --vocab 2048 --heads 8 --kv-heads 4 --gate-skew zipf:1.2 \
		-q || fail "mkmodel"
fi

tb_up 4 --cpu "$CPU" --router-cpu "$RCPU"
echo "== balancer on the testbed: 4 workers at $CPU CPU, router at $RCPU CPU, $(basename "$MODEL"), 16 streams x 32 tokens"
printf '%-6s %11s %10s %8s %10s %8s %10s %7s %12s\n' mode "max/mean" "decode" "vs off" "itl p99" replace "moved" failed "p99 repl /"
printf '%-6s %11s %10s %8s %10s %8s %10s %7s %12s\n' "" "layer/total" "tok/s" "" "ms" "" "MiB" "" "steady (n)"
base=
for mode in off eplb llep all all+q8; do
	: >"$TMPD/router.log"
	q8=
	[ $mode = all+q8 ] && q8="--replica-dtype q8_0"
	# shellcheck disable=SC2086
	tb_router 4 --balance ${mode%+q8} --redundant-slots 4 --eplb-interval 16 --eplb-window 64 $q8
	for i in 1 2 3 4; do tb_worker $i; done
	tb_ready 90 >/dev/null || fail "$mode: not ready"
	$TB client "$B/epmoe" bench server --server "$URL" --concurrency 16 --requests 16 \
		--max-tokens 32 --prompt-tokens 16 --quiet >/dev/null 2>&1
	tb_get /v1/stats >"$TMPD/warm.json" || fail "$mode: /v1/stats"
	$TB client "$B/epmoe" bench server --server "$URL" --concurrency 16 --requests "$REQ" \
		--max-tokens 32 --prompt-tokens 16 --quiet --json="$TMPD/b.json" >/dev/null 2>&1 ||
		fail "$mode: epmoe bench server"
	tb_get /v1/stats >"$TMPD/stats.json" || fail "$mode: /v1/stats"
	set -- $(python3 - "$TMPD/b.json" "$TMPD/stats.json" "$TMPD/warm.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1])); j = json.load(open(sys.argv[2]))
w0 = json.load(open(sys.argv[3]))["workers"]["dispatch"]
b = b["points"][-1] if "points" in b else b  # the load generator's last point
t = [w["tokens"] for w in j["workers"]["workers"]]
d = j["workers"]["dispatch"]  # the measured round's layer calls only
lm = (d["layer_busiest_pairs"] - w0["layer_busiest_pairs"]) / max(1e-9, d["layer_mean_pairs"] - w0["layer_mean_pairs"])
bal = j["balance"]
ip = bal.get("itl_by_placement", {})
r = ip.get("p99_ratio")
repl = "%d" % bal["replacements"] + ("+%db" % bal["borrows"] if bal.get("borrows") else "")
print("%.2f/%.2f %.1f %.1f %s %.1f %d %s" % (lm, max(t) * len(t) / max(1, sum(t)), b["output_throughput"],
      b["p99_itl_ms"] or 0, repl, bal["moved_bytes"] / 1048576, b["failed"],
      "%.2f(%d)" % (r, ip["replacing"]["tokens"]) if r is not None else "-"))
PY
)
	[ -n "$base" ] || base=$2
	printf '%-6s %11s %10s %8s %10s %8s %10s %7s %12s\n' $mode "$1" "$2" \
		"$(awk -v a="$2" -v b="$base" 'BEGIN { printf "x%.2f", a / b }')" "$3" "$4" "$5" "$6" "$7"
	kill -TERM "$RPID" 2>/dev/null
	for i in 1 2 3 4; do eval "kill -TERM \$WPID_$i" 2>/dev/null; done
	eval "tb_wait_gone $RPID \$WPID_1 \$WPID_2 \$WPID_3 \$WPID_4"
done
