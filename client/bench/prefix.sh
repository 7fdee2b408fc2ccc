#!/bin/sh
# Serving with the prefix cache and chunked prefill (sourced by run.sh,
# whose helpers it uses: jget, ratio, maxf, serve, stop_router, free_port,
# BIN, B, SRV_MODEL).  The load generator is epmoe bench server
# (client/bench_server.c), which speaks OpenAI's /v1/completions to both
# servers.
#   1. shared prefix: every request = one ~256-token system prompt + its own
#      ~30-token question; 16 streams;
#   2. multi-turn chat: 16 conversations, each turn resent with its history
#      (earlier turns' questions and answers); turn t of all 16 is one run
#      of 16 streams, the turns in order against the same server;
#   each with the cache on and off, local and with 2 workers, rounds
#   alternating: TTFT p50/p99 and output tokens/s (best of the rounds);
#   per chat turn, the prompt tokens actually prefilled (prompt_tokens -
#   cached_tokens, as usage reports them);
#   3. a ~2000-token prompt arriving while 15 streams decode: their
#      inter-token latency p99 against the same 15 streams alone, with the
#      default --prefill-chunk and with chunking off (--prefill-chunk 0),
#      local and with 2 workers.
# Environment:
#   EPMOE_LLAMA_SERVER=/path/to/llama-server  also runs loads 1 and 2
#       against llama-server (built by the user from a llama.cpp checkout;
#       nothing of it is in this repository) on the same F16 file, -np 16
#       -t 2, prompt cache on = cache_prompt true, off = false; prints the
#       ratios epmoe / llama-server
#   EPMOE_BENCH_PREFIX_MODES="local" skips the 2-worker runs
# Bounded: every run has a request count and --timeout; QUICK mode
# (EPMOE_BENCH_QUICK=1) shortens it to one round of 16 requests.

PX_DIR=$B/bench-prefix
mkdir -p "$PX_DIR"
PX_N=48; PX_G=32; PX_ROUNDS=2; PX_TURNS=4
if [ "${EPMOE_BENCH_QUICK:-0}" = 1 ]; then PX_N=16; PX_G=8; PX_ROUNDS=1; PX_TURNS=3; fi
PX_MODES=${EPMOE_BENCH_PREFIX_MODES:-local workers}
LLAMA=${EPMOE_LLAMA_SERVER:-}
if [ -n "$LLAMA" ] && [ ! -x "$LLAMA" ]; then
	echo "bench: EPMOE_LLAMA_SERVER=$LLAMA is not an executable; comparing without it"
	LLAMA=
fi

EPMOE=$BIN; PX_MODEL=$SRV_MODEL
. client/bench/prefix-data.sh
px_data "$PX_DIR" "$PX_N" "$PX_TURNS"
tpw=$PX_TPW
# pget JSON KEY: KEY of the first point of a bench server JSON ("" if null)
pget() { _pv=$(jget "$1" "$2"); [ "$_pv" = null ] && _pv=""; printf '%s' "$_pv"; }
minf() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || (b != "" && b + 0 < a + 0)) ? b : a }'; }

# ---- the servers ----
LPID=
stop_llama() {
	[ -n "$LPID" ] || return 0
	kill -TERM "$LPID" 2>/dev/null || true
	wait "$LPID" 2>/dev/null || true
	LPID=
}
trap 'stop_router; stop_llama' EXIT
# serve_llama: llama-server on the same file, 16 slots of 1024 tokens, 2 threads
serve_llama() {
	hp=$(free_port)
	HURL=http://127.0.0.1:$hp
	"$LLAMA" -m "$SRV_MODEL" -np 16 -t 2 -tb 2 -c 16384 --host 127.0.0.1 --port "$hp" \
		>"$B/bench-llama.log" 2>&1 &
	LPID=$!
	i=0
	until curl -sf -o /dev/null "$HURL/health"; do
		i=$((i + 1))
		if [ $i -ge 600 ] || ! kill -0 "$LPID" 2>/dev/null; then
			echo "bench: llama-server did not start:"; tail -5 "$B/bench-llama.log"; stop_llama; return 1
		fi
		sleep 0.2
	done
}
# start SRV CACHE: SRV is local, workers (epmoe) or llama; sets HURL and XB
# (the --extra-body of the requests)
start() {
	XB=""
	case $1 in
	local) serve "--local --prefix-cache $2" "$B" ;;
	workers) serve "--workers 2 --prefix-cache $2" "$B" ;;
	llama)
		serve_llama || return 1
		if [ "$2" = on ]; then XB='{"cache_prompt":true}'; else XB='{"cache_prompt":false}'; fi ;;
	esac
}
halt() { if [ "$1" = llama ]; then stop_llama; else stop_router; fi; }
# lg PROMPT-FILE N: one load of N requests, 16 streams; the point's JSON
lg() {
	# shellcheck disable=SC2086
	"$BIN" bench server -s "$HURL" -c 16 -N "$2" --max-tokens $PX_G --prompt-file "$1" \
		--timeout 900 --slo none --json - -q ${XB:+--extra-body "$XB"} 2>>"$PX_DIR/lg.err" || true
}
# keep NAME JSON: the best of the rounds for cell NAME (TTFT lowest, tok/s highest)
keep() {
	_a=$(pget "$2" median_ttft_ms); _b=$(pget "$2" p99_ttft_ms); _c=$(pget "$2" output_throughput)
	eval "_o1=\${$1_t50:-}; _o2=\${$1_t99:-}; _o3=\${$1_tps:-0}"
	_a=$(minf "$_o1" "$_a"); _b=$(minf "$_o2" "$_b"); _c=$(maxf "$_o3" "${_c:-0}")
	eval "$1_t50=\$_a; $1_t99=\$_b; $1_tps=\$_c"
}

SERVERS=$PX_MODES
[ -n "$LLAMA" ] && SERVERS="$SERVERS llama"
echo
echo "== serving: prefix cache, $SRV_MODEL, 16 streams, $PX_G tokens per request"
echo "   shared: $PX_N requests of $(ntok "$SYS") + ~30 tokens; chat: 16 conversations x $PX_TURNS turns resent"
echo "   with history ($(ntok "$(tail -1 "$PX_DIR/chat-$PX_TURNS.txt")") tokens at the last); $PX_ROUNDS round(s), servers and cache on/off alternating, best of each"
if [ -n "$LLAMA" ]; then
	echo "   llama-server: $LLAMA -np 16 -t 2, cache on/off = cache_prompt true/false per request"
else
	echo "   (llama-server not given: set EPMOE_LLAMA_SERVER=/path/to/llama-server for the side-by-side)"
fi
px_t0=$(date +%s)
r=1
while [ $r -le $PX_ROUNDS ]; do
	for pc in on off; do
		for srv in $SERVERS; do
			# shared prefix
			start $srv $pc || continue
			keep "c_shared_${srv}_$pc" "$(lg "$PX_DIR/shared.txt" "$PX_N")"
			halt $srv
			# chat: the turns in order on one server; the table's figures
			# are the later turns' (TTFT: mean of their p50s, max of their
			# p99s; tok/s: their tokens over their time)
			start $srv $pc || continue
			t=1; s50=0; m99=0; tok=0; dur=0
			while [ $t -le $PX_TURNS ]; do
				o=$(lg "$PX_DIR/chat-$t.txt" 16)
				in=$(pget "$o" total_input_tokens); ca=$(pget "$o" total_cached_tokens)
				n=$(pget "$o" completed)
				_pf=$(awk -v i="$in" -v c="${ca:-0}" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f", (i - c) / n }')
				_pt=$(awk -v i="$in" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f", i / n }')
				eval "pf_${srv}_${pc}_$t=\$_pf; pt_$t=\$_pt"
				if [ $t -gt 1 ]; then
					s50=$(awk -v a="$s50" -v b="$(pget "$o" median_ttft_ms)" 'BEGIN { print a + b }')
					m99=$(maxf "$m99" "$(pget "$o" p99_ttft_ms)")
					tok=$(awk -v a="$tok" -v b="$(pget "$o" total_output_tokens)" 'BEGIN { print a + b }')
					dur=$(awk -v a="$dur" -v b="$(pget "$o" duration)" 'BEGIN { print a + b }')
				fi
				t=$((t + 1))
			done
			halt $srv
			keep "c_chat_${srv}_$pc" "$(awk -v s="$s50" -v m="$m99" -v k="$tok" -v d="$dur" -v n=$((PX_TURNS - 1)) \
				'BEGIN { printf "{\"median_ttft_ms\":%g,\"p99_ttft_ms\":%g,\"output_throughput\":%g}", s / n, m, (d > 0) ? k / d : 0 }')"
		done
	done
	r=$((r + 1))
done
srv_name() { case $1 in local) echo "epmoe local" ;; workers) echo "epmoe 2 workers" ;; llama) echo "llama-server" ;; esac; }
printf '%-7s %-16s %-5s | %9s %9s | %9s\n' load server cache "TTFT p50" "p99 ms" "tok/s"
for load in shared chat; do
	for srv in $SERVERS; do
		for pc in on off; do
			eval "a=\${c_${load}_${srv}_${pc}_t50:-}; b=\${c_${load}_${srv}_${pc}_t99:-}; c=\${c_${load}_${srv}_${pc}_tps:-0}"
			printf '%-7s %-16s %-5s | %9.0f %9.0f | %9.1f\n' "$load" "$(srv_name $srv)" $pc "${a:-0}" "${b:-0}" "$c"
		done
	done
done
echo "(chat: turns 2..$PX_TURNS, the turns that have history to reuse)"
if [ -n "$LLAMA" ]; then
	echo
	echo "epmoe / llama-server, same load and cache setting (TTFT < 1 and tok/s > 1: epmoe better;"
	echo "targets: TTFT p50 <= 1 with the cache on, shared-prefix tok/s >= 1.5):"
	printf '%-7s %-16s %-5s | %9s %9s | %9s\n' load epmoe cache "TTFT p50" "p99" "tok/s"
	for load in shared chat; do
		for srv in $PX_MODES; do
			for pc in on off; do
				eval "a=\${c_${load}_${srv}_${pc}_t50:-}; b=\${c_${load}_${srv}_${pc}_t99:-}; c=\${c_${load}_${srv}_${pc}_tps:-0}"
				eval "la=\${c_${load}_llama_${pc}_t50:-}; lb=\${c_${load}_llama_${pc}_t99:-}; lc=\${c_${load}_llama_${pc}_tps:-0}"
				printf '%-7s %-16s %-5s | %9s %9s | %9s\n' "$load" "$(srv_name $srv)" $pc \
					"$(ratio "${a:-0}" "${la:-0}")" "$(ratio "${b:-0}" "${lb:-0}")" "$(ratio "$c" "$lc")"
			done
		done
	done
fi
echo
echo "chat: prompt tokens prefilled per request at each turn (prompt - cached; last round)"
printf '%-5s %8s' turn prompt
for srv in $SERVERS; do for pc in on off; do printf ' %16s' "$(srv_name $srv | sed 's/epmoe //') $pc"; done; done
echo
t=1
while [ $t -le $PX_TURNS ]; do
	eval "p=\${pt_$t:-}"
	printf '%-5s %8s' $t "$p"
	for srv in $SERVERS; do for pc in on off; do eval "v=\${pf_${srv}_${pc}_$t:-}"; printf ' %16s' "${v:--}"; done; done
	echo
	t=$((t + 1))
done
echo "(with the cache on a later turn prefills its new tokens: the previous turn's answer and"
echo " the new question, plus the part of a block epmoe cannot share; llama-server re-evaluates"
echo " at least the last token)"
echo "(prefix loads: $(($(date +%s) - px_t0)) s)"

# ---- a long prompt while 15 streams decode ----
LG=64; [ "${EPMOE_BENCH_QUICK:-0}" = 1 ] && LG=24
LONG="$(words "$(awk -v r="$tpw" 'BEGIN { printf "%d", 1990 / r }')" 77)"
printf '%s\n' "$LONG" >"$PX_DIR/long.txt"
echo
echo "== a $(ntok "$LONG")-token prompt arriving while 15 streams decode ($LG tokens each):"
echo "   their inter-token latency p99 with it / without it"
printf '%-10s %-32s %12s %12s %8s\n' experts "" "alone ms" "with it ms" ratio
for mode in $PX_MODES; do
	margs="--local"; [ $mode = workers ] && margs="--workers 2"
	for chunk in 128 0; do
		serve "$margs --prefill-chunk $chunk" "$B"
		a=$("$BIN" bench server -s "$HURL" -c 15 -N 15 --max-tokens $LG --timeout 900 --slo none --json - -q) || true
		"$BIN" bench server -s "$HURL" -c 15 -N 15 --max-tokens $LG --timeout 900 --slo none --json - -q \
			>"$PX_DIR/with.json" || true &
		bpid=$!
		sleep 1
		"$BIN" bench server -s "$HURL" -c 1 -N 1 --max-tokens 1 --prompt-file "$PX_DIR/long.txt" \
			--timeout 900 --slo none --json - -q >/dev/null || true
		wait $bpid || true
		w=$(cat "$PX_DIR/with.json")
		pa=$(pget "$a" p99_itl_ms); pw=$(pget "$w" p99_itl_ms)
		label="--prefill-chunk $chunk"; [ "$chunk" = 0 ] && label="--prefill-chunk 0 (chunking off)"
		printf '%-10s %-32s %12.1f %12.1f %8s\n' "$mode" "$label" "${pa:-0}" "${pw:-0}" "$(ratio "${pw:-0}" "${pa:-0}")"
		stop_router
	done
done
echo "(target: ratio <= 2)"
