#!/bin/sh
# `make bench`, balancer section (also runs alone): a Zipf-skewed model
# (epmoe mkmodel --gate-skew zipf:1.2: 4 layers, 16 experts top-2), 4 local
# workers, 16 concurrent greedy streams, for --balance off / eplb / llep /
# all with 4 redundant slots a layer, and all with the replicas held as
# Q8_0 (--replica-dtype q8_0: "all+q8").  Per mode: the workers' real token
# load max/mean (the router's per-worker token counts over the run), decode
# throughput relative to off (same run), inter-token latency p99,
# re-placements and weight bytes they loaded, failed requests, and the
# inter-token p99 while a re-placement was in flight over its p99 otherwise
# (the router's balance.itl_by_placement).  Then the
# routing trace recorded in the off run replayed by `epmoe bench balance`
# for 4 (the check: it must agree with the measured off), 16, 64 and 256
# simulated workers.
# On one machine the workers share its cores, so imbalance costs little
# throughput here; the CPU-capped testbed is where it would show.
#   EPMOE_BUILD         build directory (default build)
#   EPMOE_BENCH_QUICK=1 fewer requests
set -eu
B=${EPMOE_BUILD:-build}
BIN=$B/bin/epmoe
MD=${EPMOE_BENCH_MODELS:-$B/models}
M=$MD/zipf-1.2.gguf
mkdir -p "$MD"
[ -f "$M" ] || "$BIN" mkmodel --arch llama --preset tiny --layers 4 --dim 256 --ff 512 \
	--experts 16 --heads 4 --kv-heads 2 --gate-skew zipf:1.2 --out "$M" -q
BENCH_NAME=balance
. "$(dirname "$0")/serve.inc"
N=64
[ "${EPMOE_BENCH_QUICK:-0}" = 1 ] && N=32

serve() { # MODE [extra args]
	mode=$1; shift
	router_up --workers 4 --threads 1 --balance "$mode" \
		--redundant-slots 4 --eplb-interval 16 --eplb-window 64 "$@"
}
# max/mean of the workers' token counts in /v1/stats
worker_ratio() {
	curl -s "$HURL/v1/stats" | python3 -c '
import json, sys
j = json.load(sys.stdin)
w0 = json.load(open(sys.argv[1]))["workers"]["dispatch"]
d = j["workers"]["dispatch"]
t = [w["tokens"] for w in j["workers"]["workers"]]
# the measured round only: the warm-up ran before any re-placement
lm = (d["layer_busiest_pairs"] - w0["layer_busiest_pairs"]) / max(1e-9, d["layer_mean_pairs"] - w0["layer_mean_pairs"])
b = j["balance"]
ip = b.get("itl_by_placement", {})
r = ip.get("p99_ratio")
repl = "%d" % b["replacements"] + ("+%db" % b["borrows"] if b.get("borrows") else "")
print("%.2f/%.2f %s %.1f %s" % (lm, max(t) * len(t) / max(1, sum(t)), repl, b["moved_bytes"] / 1048576,
      "%.2f(%d)" % (r, ip["replacing"]["tokens"]) if r is not None else "-"))' "$TMP/warm.json"
}

echo
echo "== balancer: $M, 4 local workers, 16 concurrent streams x 48 tokens, 4 redundant slots a layer"
printf '%-6s %11s %10s %10s %10s %8s %10s %7s %12s\n' mode "max/mean" "decode" "vs off" "itl p99" replace "moved" failed "p99 repl /"
printf '%-6s %11s %10s %10s %10s %8s %10s %7s %12s\n' "" "layer/total" "tok/s" "" "ms" "" "MiB" "" "steady (n)"
base=
q8note=
for row in off eplb llep all all+q8; do
	extra=""
	[ $row = off ] && extra="--record-routing $TMP/trace.txt"
	[ $row = all+q8 ] && extra="--replica-dtype q8_0"
	# shellcheck disable=SC2086
	serve ${row%+q8} $extra
	# a warm-up round gives EPLB its window, the measured round runs on it
	"$BIN" bench server -s "$HURL" -c 16 -N 32 --max-tokens 48 --prompt-tokens 16 -q >/dev/null 2>&1 || true
	curl -s "$HURL/v1/stats" >"$TMP/warm.json"
	"$BIN" bench server -s "$HURL" -c 16 -N $N --max-tokens 48 --prompt-tokens 16 --json - -q \
		>"$TMP/b.json" 2>/dev/null || true
	# the load generator's report: its last point's throughput, ITL p99
	# and failed requests
	set -- $(python3 -c '
import json, sys
try:
    b = json.load(open(sys.argv[1]))
except ValueError:
    b = {}
b = b["points"][-1] if "points" in b else b
print("%s %s %s" % (b.get("output_throughput", 0), b.get("p99_itl_ms") or 0, b.get("failed", "-")))' "$TMP/b.json")
	tps=$1 p99=$2 failed=$3
	set -- $(worker_ratio)
	[ -n "$base" ] || base=$tps
	printf '%-6s %11s %10.1f %10s %10.1f %8s %10s %7s %12s\n' $row "$1" "$tps" \
		"$(awk -v a="$tps" -v b="$base" 'BEGIN { printf "x%.2f", a / b }')" "$p99" "$2" "$3" \
		"$failed" "$4"
	[ $row = all+q8 ] && q8note=$(curl -s "$HURL/v1/stats" | python3 -c '
import json, sys
w = json.load(sys.stdin)["workers"]
r = [x["reported"] for x in w["workers"]]
t = sum(x["tokens"] for x in r)
print("%d Q8_0 copies (%.1f MiB) served %.1f%% of the expert rows" % (w["quantized_copies"],
      sum(x["quantized_bytes"] for x in r) / 1048576, 100.0 * sum(x["quantized_tokens"] for x in r) / max(1, t)))')
	router_down
done
echo "(all+q8: $q8note;"
echo " max/mean: layer = the busiest worker's (token, expert) pairs over the mean per layer call,"
echo " summed (what a layer waits for), measured round; total = the workers' token counts over both rounds;"
echo " replace: re-placements, +Nb experts"
echo " llep alone borrowed to spill to (--llep-cache 2);"
echo " p99 repl / steady: the router's inter-token p99 while a re-placement was in flight over its p99"
echo " otherwise, over both rounds, with the number of token gaps in re-placements; target <= 1.25)"
echo
echo "== balancer simulation on the trace of the off run (epmoe bench balance, same placement code)"
for W in 4 16 64 256; do
	"$BIN" bench balance --trace "$TMP/trace.txt" --workers $W --redundant $W --interval 16 \
		--window 64 --expert-mb "$(awk 'BEGIN { printf "%.3f", 3 * 256 * 512 * 4 / 1048576 }')" |
		sed -n '1p;3,6p'
done
