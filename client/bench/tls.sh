#!/bin/sh
# The cost of mutual TLS between router and workers: decode tok/s of the
# same model with 2 local workers over plain tcp:// and over tls+tcp://
# on loopback, runs alternating (plain, TLS, plain, TLS, ...) so both see
# the same machine; prints each pair's TLS / plain ratio and their range.
# Run by `make bench` (client/bench/run.sh); alone:
#   EPMOE_BUILD=build sh client/bench/tls.sh [MODEL]
#   EPMOE_BENCH_TLS_ROUNDS  pairs of runs (default 3)
#   EPMOE_BENCH_QUICK=1     short runs
set -eu
B=${EPMOE_BUILD:-build}
BIN=$B/bin/epmoe
MODEL=${1:-${EPMOE_BENCH_SERVE_MODEL:-${EPMOE_BENCH_MODELS:-build/models}/small-f16.gguf}}
ROUNDS=${EPMOE_BENCH_TLS_ROUNDS:-3}
SG=64; SN1=4; SN16=32
if [ "${EPMOE_BENCH_QUICK:-0}" = 1 ]; then SG=16; SN1=2; SN16=16; ROUNDS=1; fi
[ -f "$MODEL" ] || { echo "bench tls: no model $MODEL"; exit 1; }
CERTS=$B/bench-certs
sh "$(dirname "$0")/../../deploy/mkcerts.sh" "$CERTS" router >/dev/null

jget() { printf '%s\n' "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p"; }
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null ||
		node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}
RPID=
stop_router() {
	[ -n "$RPID" ] || return 0
	kill -TERM "$RPID" 2>/dev/null || true
	wait "$RPID" 2>/dev/null || true
	RPID=
}
trap stop_router EXIT
serve() { # serve plain|tls -> HURL
	hp=$(free_port); cp=$(free_port)
	HURL=http://127.0.0.1:$hp
	if [ "$1" = tls ]; then
		extra="--control tls+tcp://127.0.0.1:$cp --tls-cert $CERTS/router.pem --tls-key $CERTS/router.key --tls-ca $CERTS/ca.pem"
	else
		extra="--control tcp://127.0.0.1:$cp"
	fi
	# shellcheck disable=SC2086
	"$B/bin/epmoe-router" --model "$MODEL" --workers 2 --http "127.0.0.1:$hp" --nng "" \
		$extra >"$B/bench-tls-router.log" 2>&1 &
	RPID=$!
	i=0
	until curl -sf -o /dev/null "$HURL/health"; do
		i=$((i + 1)); [ $i -lt 600 ] || { echo "bench tls: router did not start"; tail "$B/bench-tls-router.log"; exit 1; }
		sleep 0.2
	done
}
echo "== mutual TLS between router and workers: $MODEL, 2 local workers, loopback,"
echo "   decode tok/s (streaming, $SG tokens per request), runs alternating plain/TLS"
printf '%-6s %12s %12s %12s %12s %10s %10s\n' pair "plain c=1" "TLS c=1" "plain c=16" "TLS c=16" "ratio c=1" "ratio c=16"
all1=""; all16=""
for r in $(seq 1 "$ROUNDS"); do
	for mode in plain tls; do
		serve $mode
		o1=$("$BIN" bench server -s "$HURL" -c 1 -N $SN1 --max-tokens $SG --json - -q) ||
			{ echo "bench tls: epmoe bench server failed ($mode, c=1)"; exit 1; }
		o16=$("$BIN" bench server -s "$HURL" -c 16 -N $SN16 --max-tokens $SG --json - -q) ||
			{ echo "bench tls: epmoe bench server failed ($mode, c=16)"; exit 1; }
		if [ $mode = tls ] && ! grep -q "mutual TLS" "$B/bench-tls-router.log"; then
			echo "bench tls: the router does not use TLS"
			exit 1
		fi
		eval "${mode}1=$(jget "$o1" output_throughput)"
		eval "${mode}16=$(jget "$o16" output_throughput)"
		stop_router
	done
	# shellcheck disable=SC2154
	q1=$(awk -v a="$tls1" -v b="$plain1" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }')
	# shellcheck disable=SC2154
	q16=$(awk -v a="$tls16" -v b="$plain16" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }')
	printf '%-6s %12.1f %12.1f %12.1f %12.1f %10s %10s\n' "$r" "$plain1" "$tls1" "$plain16" "$tls16" "$q1" "$q16"
	all1="$all1 $q1"; all16="$all16 $q16"
done
range() { printf '%s\n' $1 | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'; }
echo "TLS / plain decode tok/s: c=1 $(range "$all1"), c=16 $(range "$all16") (1.00 = free)"
