#!/bin/sh
# Serving with the prefix cache and chunked prefill (sourced by run.sh,
# whose helpers it uses: jget, ratio, serve, stop_router, BIN, B, SRV_MODEL).
#   1. shared prefix: every request = one ~256-token system prompt + its own
#      ~24-token question; 16 streams;
#   2. multi-turn chat: 16 conversations of 4 turns, each turn resent with
#      its history (earlier turns' questions and answers); 16 streams;
#   for each, the router with --prefix-cache on and off, alternating (the
#   same run), local and with 2 workers: TTFT p50 and output tokens/s;
#   3. a ~2000-token prompt arriving while 15 streams decode: their
#      inter-token latency p99 against the same 15 streams alone, with the
#      default --prefill-chunk and with chunking off (--prefill-chunk 0).
#   EPMOE_BENCH_PREFIX_MODES="local" skips the 2-worker runs.
# No llama-server on this machine: the figures are epmoe's own ratios.

PX_DIR=$B/bench-prefix
mkdir -p "$PX_DIR"
PX_N=48; PX_G=32; PX_ROUNDS=2
if [ "${EPMOE_BENCH_QUICK:-0}" = 1 ]; then PX_N=16; PX_G=8; PX_ROUNDS=1; fi

# words N SEED: N pseudo-random words (deterministic)
words() {
	awk -v n="$1" -v seed="$2" 'BEGIN {
		split("river stone light garden window forest market engine answer moment " \
		      "music table north summer letter mirror planet bridge castle signal " \
		      "winter ocean paper silver travel little yellow orange purple animal", w, " ")
		s = seed * 7919 + 17
		for (i = 0; i < n; i++) { s = (s * 1103515245 + 12345) % 2147483648; printf "%s%s", (i ? " " : ""), w[1 + int(s / 65536) % 30] }
	}'
}
# ntok TEXT: tokens of TEXT under the served model
ntok() { "$BIN" tokenize --model "$SRV_MODEL" "$1" | tr ',' '\n' | grep -c .; }

# about 256 tokens of system prompt
tpw=$(awk -v t="$(ntok "$(words 200 1)")" 'BEGIN { printf "%.3f", t / 200 }')
sys_words=$(awk -v r="$tpw" 'BEGIN { printf "%d", 256 / r }')
SYS="You are a careful assistant. $(words "$sys_words" 1)"
: >"$PX_DIR/shared.txt"
i=0
while [ $i -lt "$PX_N" ]; do
	printf '%s Question %d: %s?\n' "$SYS" "$i" "$(words 18 $((100 + i)))" >>"$PX_DIR/shared.txt"
	i=$((i + 1))
done
# chat: line k = conversation k % 16, turn k / 16 + 1, with its history
# (each earlier turn's question and a 40-word answer)
: >"$PX_DIR/chat.txt"
k=0
while [ $k -lt "$PX_N" ]; do
	conv=$((k % 16)); turn=$((k / 16))
	h="System: you answer briefly. Conversation $conv."
	t=0
	while [ $t -lt "$turn" ]; do
		h="$h User: $(words 30 $((1000 + conv * 10 + t))) Assistant: $(words 40 $((5000 + conv * 10 + t)))"
		t=$((t + 1))
	done
	printf '%s User: %s Assistant:\n' "$h" "$(words 30 $((1000 + conv * 10 + turn)))" >>"$PX_DIR/chat.txt"
	k=$((k + 1))
done

echo
echo "== serving: prefix cache, $SRV_MODEL, 16 streams, $PX_N requests of $PX_G tokens"
echo "   (shared: $(ntok "$SYS") + ~30 tokens per prompt; chat: 4 turns resent with history,"
echo "    $(ntok "$(tail -1 "$PX_DIR/chat.txt")") tokens at the last turn; $PX_ROUNDS rounds, on/off alternating, best of each)"
printf '%-9s %-8s | %10s %10s %7s | %10s %10s %7s | %8s\n' "" "" "TTFT p50" "ms" "" "output" "tok/s" "" "hit"
printf '%-9s %-8s | %10s %10s %7s | %10s %10s %7s | %8s\n' load experts "cache on" off "on/off" "cache on" off "on/off" rate
for load in shared chat; do
	for mode in ${EPMOE_BENCH_PREFIX_MODES:-local workers}; do
		margs="--local"; [ $mode = workers ] && margs="--workers 2"
		ton=""; toff=""; son=0; soff=0; hit=""
		r=1
		while [ $r -le $PX_ROUNDS ]; do
			for pc in on off; do
				serve "$margs --prefix-cache $pc" "$B"
				o=$("$BIN" bench server -s "$HURL" -c 16 -N "$PX_N" --max-tokens $PX_G \
					--prompt-file "$PX_DIR/$load.txt" --timeout 900 --json -q) || true
				tt=$(printf '%s\n' "$o" | sed -n 's/.*"ttft_ms":{[^}]*"p50":\([^,}]*\).*/\1/p')
				th=$(jget "$o" output_token_throughput)
				if [ $pc = on ]; then
					hit=$(curl -s "$HURL/v1/stats" | sed -n 's/.*"hit_rate":\([^,}]*\).*/\1/p')
					ton=$(awk -v a="$ton" -v b="$tt" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }')
					son=$(maxf "$son" "$th")
				else
					toff=$(awk -v a="$toff" -v b="$tt" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }')
					soff=$(maxf "$soff" "$th")
				fi
				stop_router
			done
			r=$((r + 1))
		done
		printf '%-9s %-8s | %10.0f %10.0f %7s | %10.1f %10.1f %7s | %8.2f\n' "$load" "$mode" \
			"$ton" "$toff" \
			"$(ratio "$ton" "$toff")" "$son" "$soff" "$(ratio "$son" "$soff")" "${hit:-0}"
	done
done
echo "(TTFT on/off < 1 and tok/s on/off > 1: the cache helps; no llama-server here to compare with)"

# ---- a long prompt while 15 streams decode ----
LG=64; [ "${EPMOE_BENCH_QUICK:-0}" = 1 ] && LG=24
LONG="$(words "$(awk -v r="$tpw" 'BEGIN { printf "%d", 1990 / r }')" 77)"
printf '%s\n' "$LONG" >"$PX_DIR/long.txt"
echo
echo "== a $(ntok "$LONG")-token prompt arriving while 15 streams decode ($LG tokens each, local):"
echo "   their inter-token latency p99 with it / without it"
printf '%-34s %12s %12s %8s\n' "" "alone ms" "with it ms" ratio
for chunk in 128 0; do
	serve "--local --prefill-chunk $chunk" "$B"
	a=$("$BIN" bench server -s "$HURL" -c 15 -N 15 --max-tokens $LG --timeout 900 --json -q) || true
	"$BIN" bench server -s "$HURL" -c 15 -N 15 --max-tokens $LG --timeout 900 --json -q >"$PX_DIR/with.json" || true &
	bpid=$!
	sleep 1
	"$BIN" bench server -s "$HURL" -c 1 -N 1 --max-tokens 1 --prompt-file "$PX_DIR/long.txt" \
		--timeout 900 --json -q >/dev/null || true
	wait $bpid || true
	w=$(cat "$PX_DIR/with.json")
	pa=$(printf '%s\n' "$a" | sed -n 's/.*"itl_ms":{[^}]*"p99":\([^,}]*\).*/\1/p')
	pw=$(printf '%s\n' "$w" | sed -n 's/.*"itl_ms":{[^}]*"p99":\([^,}]*\).*/\1/p')
	label="--prefill-chunk $chunk"; [ "$chunk" = 0 ] && label="--prefill-chunk 0 (chunking off)"
	printf '%-34s %12.1f %12.1f %8s\n' "$label" "$pa" "$pw" "$(ratio "$pw" "$pa")"
	stop_router
done
echo "(target: ratio <= 2)"
