#!/bin/sh
# `make bench`: measures the machine and the engine in the same run and
# prints the engine's speed as ratios of the machine's limits.
#   EPMOE_BENCH_MODELS  where the --preset small models live (default build/models)
#   EPMOE_BENCH_QUICK=1 shorter runs (for a smoke test)
#   EPMOE_BENCH_FO_MODEL  model of the failover section (client/bench/failover.sh)
#   EPMOE_BENCH_ONLY=prefix  only the prefix-cache / chunked-prefill part
#                       (client/bench/prefix.sh)
#   EPMOE_LLAMA_SERVER=PATH  the prefix part also runs its loads against
#                       this llama-server binary (built by the user from a
#                       llama.cpp checkout) and prints epmoe / llama-server
#   EPMOE_BENCH_ONLY=spec    only the --spec serving part (client/bench/spec.sh)
#   EPMOE_BENCH_BEFORE=REV  also serve with the code of git revision REV
#                       (built in $EPMOE_BUILD/bench-before) and print it
#                       next to this code's figures, runs alternating
set -eu
B=${EPMOE_BUILD:-build}
BIN=$B/bin/epmoe
MD=${EPMOE_BENCH_MODELS:-build/models}
mkdir -p "$MD"

# jget JSON KEY: the flat numeric value of KEY in a one-line JSON object
jget() { printf '%s\n' "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
# batch JSON N: the object of batch N in bench engine's "decode" array
batch() { printf '%s\n' "$1" | sed 's/{"batch":/\n{"batch":/g' | grep "^{\"batch\":$2," | head -1; }

ONLY=${EPMOE_BENCH_ONLY:-}
for dt in f32 f16; do
	[ -n "$ONLY" ] && [ $dt = f32 ] && continue
	if [ ! -f "$MD/small-$dt.gguf" ]; then
		echo "bench: writing $MD/small-$dt.gguf (epmoe mkmodel --preset small --dtype $dt)"
		"$BIN" mkmodel --arch llama --preset small --dtype "$dt" --out "$MD/small-$dt.gguf"
	fi
done

if [ -z "$ONLY" ]; then
# the Q4_K_M copy llama-quantize's preset rules give (epmoe quantize)
if [ ! -f "$MD/small-q4_k_m.gguf" ]; then
	echo "bench: writing $MD/small-q4_k_m.gguf (epmoe quantize small-f16.gguf q4_k_m)"
	"$BIN" quantize "$MD/small-f16.gguf" "$MD/small-q4_k_m.gguf" q4_k_m
fi

P=512; G=64
if [ "${EPMOE_BENCH_QUICK:-0}" = 1 ]; then P=64; G=8; fi

echo "== machine ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
m=$("$BIN" bench machine --json)
echo "  OpenBLAS sgemm [512x1024]·[1024x2816]: $(jget "$m" sgemm_gflops) GFLOP/s    memory read: $(jget "$m" read_bw_gbs) GB/s"
echo "  (the engine's phases below are each divided by a probe of the two taken around them)"
echo
echo "== engine, local mode (--preset small: dim 1024, 8 layers, 8 experts top-2, ff 2816, vocab 32000)"
printf '%-5s | %8s %8s %7s | %8s %8s %7s | %8s %8s %7s | %8s\n' "" prefill "" "" "decode" "batch 1" "" "decode" "batch 16" "" "resident"
printf '%-5s | %8s %8s %7s | %8s %8s %7s | %8s %8s %7s | %8s\n' type "tok/s" "GFLOP/s" "/sgemm" "tok/s" "wt GB/s" "/bw" "tok/s" "GFLOP/s" "/sgemm" "RSS MiB"
for dt in f32 f16 q4_k_m; do
	e=$("$BIN" bench engine --model "$MD/small-$dt.gguf" --prompt-tokens $P --gen $G --batch 1,16 --json)
	d1=$(batch "$e" 1); d16=$(batch "$e" 16)
	eval "pt_$dt=\$(jget \"\$e\" prefill_tok_s); dt_$dt=\$(jget \"\$d1\" tok_s); bp_$dt=\$(jget \"\$e\" bytes_per_token)"
	printf '%-5s | %8.1f %8.1f %7.2f | %8.1f %8.1f %7.2f | %8.1f %8.1f %7.2f | %8.0f\n' "$dt" \
		"$(jget "$e" prefill_tok_s)" "$(jget "$e" prefill_gflops)" "$(jget "$e" prefill_over_sgemm)" \
		"$(jget "$d1" tok_s)" "$(jget "$d1" weight_gbs)" "$(jget "$d1" over_bw)" \
		"$(jget "$d16" tok_s)" "$(jget "$d16" gflops)" "$(jget "$d16" over_sgemm)" \
		"$(jget "$e" rss_mb)"
done
echo "(prefill: one $P-token prompt; decode: $G greedy steps of 1 and of 16 sequences; targets:"
echo " prefill / sgemm >= 0.85, batch-1 weight bytes / read bandwidth >= 0.8, batch-16 FLOP rate / sgemm >= 0.6)"
echo "q4_k_m / f16: prefill tok/s $(ratio "$pt_q4_k_m" "$pt_f16"), batch-1 decode tok/s $(ratio "$dt_q4_k_m" "$dt_f16") (weight bytes per token: $(ratio "$bp_q4_k_m" "$bp_f16") of f16's)"
fi

# ---- serving: local experts vs 2 workers on loopback ----
free_port() {
	"$BIN" bench machine --help >/dev/null 2>&1  # (keeps set -e quiet)
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null ||
		node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}
SRV_MODEL=${EPMOE_BENCH_SERVE_MODEL:-$MD/small-f16.gguf}
SG=64; SN1=4; SN16=32
if [ "${EPMOE_BENCH_QUICK:-0}" = 1 ]; then SG=16; SN1=2; SN16=16; fi
RPID=
stop_router() {
	[ -n "$RPID" ] || return 0
	kill -TERM "$RPID" 2>/dev/null || true
	wait "$RPID" 2>/dev/null || true
	RPID=
}
trap stop_router EXIT
serve() { # serve MODE-ARGS BUILD-DIR -> sets HURL
	hp=$(free_port); cp=$(free_port)
	HURL=http://127.0.0.1:$hp
	# shellcheck disable=SC2086
	"$2/bin/epmoe-router" --model "$SRV_MODEL" $1 --http "127.0.0.1:$hp" --nng "" \
		--control "tcp://127.0.0.1:$cp" >"$B/bench-router.log" 2>&1 &
	RPID=$!
	i=0
	until curl -sf -o /dev/null "$HURL/health"; do
		i=$((i + 1)); [ $i -lt 600 ] || { echo "bench: router did not start"; tail "$B/bench-router.log"; exit 1; }
		sleep 0.2
	done
}
maxf() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'; }
# EPMOE_BENCH_ONLY=prefix: only the prefix cache and chunked prefill part
if [ "$ONLY" = prefix ]; then
	. client/bench/prefix.sh
	exit 0
fi
# EPMOE_BENCH_ONLY=spec: only the --spec serving part
if [ "$ONLY" = spec ]; then
	. client/bench/spec.sh
	exit 0
fi
# the code of EPMOE_BENCH_BEFORE, built once in a scratch directory
BEFORE=${EPMOE_BENCH_BEFORE:-}
BB=$B/bench-before
if [ -n "$BEFORE" ]; then
	rev=$(git rev-parse --short "$BEFORE")
	if [ "$(cat "$BB/rev" 2>/dev/null)" != "$rev" ]; then
		echo "bench: building $BEFORE ($rev) in $BB for the 'before' columns"
		rm -rf "$BB"
		mkdir -p "$BB"
		git archive "$rev" | tar -x -C "$BB"
		make -C "$BB" -j2 build/bin/epmoe-router build/bin/epmoe-worker >"$BB.log" 2>&1 ||
			{ echo "bench: building $BEFORE failed (see $BB.log)"; exit 1; }
		echo "$rev" >"$BB/rev"
	fi
fi
echo
echo "== serving: $SRV_MODEL, decode tok/s (streaming, $SG tokens per request, 32-token prompts)"
l1=0; l16=0; d1=0; d16=0; bl1=0; bl16=0; bd1=0; bd16=0
# two rounds, local and distributed (and before and after) alternating;
# each cell keeps its best (a shared 2-core machine varies by 20% from one
# minute to the next)
for round in 1 2; do
	for code in after ${BEFORE:+before}; do
		RB=$B
		[ "$code" = before ] && RB=$BB/build
		for mode in local workers; do
			if [ $mode = local ]; then serve "--local" "$RB"; else serve "--workers 2" "$RB"; fi
			r1=$("$BIN" bench server -s "$HURL" -c 1 -N $SN1 --max-tokens $SG --json - -q)
			r16=$("$BIN" bench server -s "$HURL" -c 16 -N $SN16 --max-tokens $SG --json - -q)
			t1=$(jget "$r1" output_throughput); t16=$(jget "$r16" output_throughput)
			case $code/$mode in
			after/local) l1=$(maxf "$l1" "$t1"); l16=$(maxf "$l16" "$t16") ;;
			after/workers)
				d1=$(maxf "$d1" "$t1"); d16=$(maxf "$d16" "$t16")
				[ $round = 2 ] && st=$(curl -s "$HURL/v1/stats") ;;
			before/local) bl1=$(maxf "$bl1" "$t1"); bl16=$(maxf "$bl16" "$t16") ;;
			before/workers) bd1=$(maxf "$bd1" "$t1"); bd16=$(maxf "$bd16" "$t16") ;;
			esac
			stop_router
		done
	done
done
if [ -n "$BEFORE" ]; then
	printf '%-26s %10s %10s %7s %10s %10s %7s\n' "" "c = 1" "" "" "c = 16" "" ""
	printf '%-26s %10s %10s %7s %10s %10s %7s\n' "experts" "before" "after" "ratio" "before" "after" "ratio"
	printf '%-26s %10.1f %10.1f %7s %10.1f %10.1f %7s\n' "in process (--local)" "$bl1" "$l1" \
		"$(ratio "$l1" "$bl1")" "$bl16" "$l16" "$(ratio "$l16" "$bl16")"
	printf '%-26s %10.1f %10.1f %7s %10.1f %10.1f %7s\n' "2 workers, loopback" "$bd1" "$d1" \
		"$(ratio "$d1" "$bd1")" "$bd16" "$d16" "$(ratio "$d16" "$bd16")"
	printf '%-26s %10s %10s %7s %10s %10s %7s\n' "distributed / local" "$(ratio "$bd1" "$bl1")" \
		"$(ratio "$d1" "$l1")" "" "$(ratio "$bd16" "$bl16")" "$(ratio "$d16" "$l16")" ""
	echo "(before: $BEFORE = $(cat "$BB/rev"); after: this tree)"
else
	printf '%-26s %12s %12s\n' "experts" "c = 1" "c = 16"
	printf '%-26s %12.1f %12.1f\n' "in process (--local)" "$l1" "$l16"
	printf '%-26s %12.1f %12.1f\n' "2 workers, loopback" "$d1" "$d16"
	printf '%-26s %12s %12s   (target >= 0.9 at 16)\n' "distributed / local" "$(ratio "$d1" "$l1")" "$(ratio "$d16" "$l16")"
fi
# traffic and time split of the distributed run (whole run, both concurrencies)
layers=$("$BIN" inspect "$SRV_MODEL" 2>/dev/null | sed -n 's/.*block_count.*= *\([0-9]*\).*/\1/p' | head -1)
dtok=$(jget "$st" tokens_routed); steps=$(jget "$st" steps)
bs=$(jget "$st" bytes_sent); br=$(jget "$st" bytes_received); msgs=$(jget "$st" messages)
calls=$(jget "$st" calls)
echo
echo "distributed traffic per token per layer (the second distributed run):"
awk -v bs="$bs" -v br="$br" -v m="$msgs" -v t="$dtok" 'BEGIN {
	if (t > 0) printf "  %.0f bytes sent + %.0f received, %.3f messages (routed tokens: %d)\n", bs / t, br / t, m / t, t }'
echo "per-step time split (ms per step, mean over $steps steps):"
awk -v st="$steps" -v a="$(jget "$st" attention)" -v g="$(jget "$st" gate)" \
	-v p="$(jget "$st" pack_s)" -v w="$(jget "$st" wire_s)" -v c="$(jget "$st" compute_s)" \
	-v cb="$(jget "$st" combine_s)" -v h="$(jget "$st" lm_head)" 'BEGIN {
	if (st > 0) printf "  attention %.2f  gate %.2f  pack %.2f  wire %.2f  expert compute %.2f  combine %.2f  lm head %.2f\n",
		a * 1e3 / st, g * 1e3 / st, p * 1e3 / st, w * 1e3 / st, c * 1e3 / st, cb * 1e3 / st, h * 1e3 / st }'

# ---- the cost of mutual TLS between router and workers ----
echo
sh "$(dirname "$0")/tls.sh" "$SRV_MODEL"
# ---- prefix cache and chunked prefill ----
. client/bench/prefix.sh

# ---- routing policies: quality, balance, cost ----
RT_MODEL=${EPMOE_BENCH_ROUTE_MODEL:-}
RT_TEXT=${EPMOE_BENCH_ROUTE_TEXT:-}
if [ -z "$RT_MODEL" ]; then
	for m in models/kjv-moe-best.gguf models/kjv-moe-*.gguf; do
		[ -f "$m" ] && { RT_MODEL=$m; break; }
	done
fi
[ -n "$RT_MODEL" ] || RT_MODEL=../shared/testdata/mixtral-tiny-f32.gguf
[ -n "$RT_TEXT" ] || { [ -f models/kjv-test.txt ] && RT_TEXT=models/kjv-test.txt; } || true
[ -n "$RT_TEXT" ] || RT_TEXT=README.md
RT_CTX=${EPMOE_BENCH_ROUTE_CTX:-256}
RT_WIN=""
[ "${EPMOE_BENCH_QUICK:-0}" = 1 ] && RT_WIN="--max-windows 4"
echo
echo "== routing policies on $RT_MODEL, text $RT_TEXT (windows of $RT_CTX tokens, each routed as one prompt)"
printf '%-34s %10s %8s %12s %10s %8s %10s\n' policy perplexity MaxVio "worker max/" "experts/" "OT runs" "tokens/s"
printf '%-34s %10s %8s %12s %10s %8s %10s\n' "" "" "" "mean (4 w.)" token "" ""
for p in native "topk:k=1" "capacity:factor=1.25" "expert_choice:c=2" sinkhorn \
	"sinkhorn:kernel=capped" "ssr:p=0.01" "ssr:lambda=1.3" usmoe "usmoe:budget=0.75" "lossfree:u=0.001"; do
	# shellcheck disable=SC2086
	o=$("$BIN" perplexity --model "$RT_MODEL" --file "$RT_TEXT" --ctx "$RT_CTX" --routing "$p" --workers 4 --json $RT_WIN 2>/dev/null) || {
		printf '%-34s %10s\n' "$p" "failed"; continue; }
	printf '%-34s %10.3f %8.3f %12.3f %10.3f %8s %10.1f\n' "$p" "$(jget "$o" perplexity)" \
		"$(jget "$o" maxvio)" "$(jget "$o" worker_max_over_mean)" "$(jget "$o" experts_per_token)" \
		"$(jget "$o" ot_runs)" "$(jget "$o" tokens_per_s)"
done
echo
echo "== routing cost at T = 512 tokens: routing time / one MoE layer's time (dim 1024, top-2,"
echo "   fine-grained experts of ff 22528/E; target <= 0.05 for sinkhorn and ssr)"
printf '%-6s %-26s %12s %12s %12s %8s\n' E policy "route us" "MoE layer ms" "route/MoE" MaxVio
RE="8,16,32,64"
[ "${EPMOE_BENCH_QUICK:-0}" = 1 ] && RE="8,64"
"$BIN" bench route --experts "$RE" --policies "native,sinkhorn,ssr:lambda=1.3,ssr:lambda=0,sinkhorn:kernel=capped" |
while IFS= read -r line; do
	printf '%-6s %-26s %12s %12s %12s %8s\n' "$(jget "$line" experts)" \
		"$(printf '%s' "$line" | sed -n 's/.*"policy":"\([^"]*\)".*/\1/p')" \
		"$(jget "$line" route_us)" "$(jget "$line" moe_ms)" "$(jget "$line" route_over_moe)" \
		"$(jget "$line" maxvio)"
done

# ---- speculative pre-scheduling (--spec, epmoe calibrate) ----
SP_TOK=3072
[ "${EPMOE_BENCH_QUICK:-0}" = 1 ] && SP_TOK=1024
echo
echo "== speculative pre-scheduling: experts predicted before each gate (hit rate = predicted"
echo "   pairs / pairs the gate chose) and token rows sent per (token, expert) pair with 4 workers"
echo "   (1.0 = one row per pair; a token whose experts share a worker is sent once; target <= 0.6"
echo "   grouped). Learnt online on the first 3/4 of the windows, scored on the last 1/4."
printf '%-22s %10s %14s %12s %12s
' model "hit(tok)" "hit(tok+prev)" "rows contig" "rows grouped"
for sm in "$RT_MODEL" "$MD/small-f16.gguf"; do
	[ -f "$sm" ] || continue
	o=$("$BIN" calibrate --model "$sm" --file "$RT_TEXT" --out "$B/bench-spec.aff" --ctx 128 \
		--max-tokens "$SP_TOK" --holdout 0.25 --workers 4 --json 2>/dev/null) || {
		printf '%-22s %10s\n' "$(basename "$sm" .gguf)" failed; continue; }
	# the overall figures are the last ones of the line
	t=$(printf '%s' "$o" | sed 's/.*\]//')
	printf '%-22s %10s %14s %12s %12s\n' "$(basename "$sm" .gguf)" "$(jget "$t" hit_tok)" \
		"$(jget "$t" hit_tok_prev)" "$(jget "$t" bytes_ratio_contiguous)" "$(jget "$t" bytes_ratio_grouped)"
done
echo "(messages per token per layer at one token per step equal the rows ratio)"
# decode tok/s with each --spec setting, local and 2 workers (client/bench/spec.sh)
. client/bench/spec.sh

# ---- failover: kill / hang a worker under 16 streams (client/bench/failover.sh) ----
EPMOE_BUILD=$B sh "$(dirname "$0")/failover.sh"

# ---- balancer: off / eplb / llep / all under a Zipf-skewed model, and the simulator (client/bench/balance.sh) ----
EPMOE_BUILD=$B sh "$(dirname "$0")/balance.sh"

# ---- Replicate-and-Quantize: perplexity of Q8_0 replicas (client/bench/replica_q8.sh) ----
EPMOE_BUILD=$B sh "$(dirname "$0")/replica_q8.sh"
