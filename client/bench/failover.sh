#!/bin/sh
# `make bench`, failover section (also runs alone): 16 concurrent greedy
# streams of 128 tokens against a router with 2 and then 3 local workers,
# every expert on two workers ("replicas") or on one ("none"), and one
# worker killed (SIGKILL) or hung (SIGSTOP, left stopped: the router kills
# and restarts it) a quarter of the way through.  Per case: failed
# requests, the longest gap between two chunks of a completed stream (and
# its ratio to the undisturbed run of the same setup, measured in the same
# run), and the time from the signal until /health is 200 and a new
# one-token request completes.
#   EPMOE_BUILD         build directory (default build)
#   EPMOE_BENCH_FO_MODEL  model (default models/kjv-moe-best.gguf if
#                       present, else build/models/small-f16.gguf)
#   EPMOE_BENCH_QUICK=1 2 workers only
set -eu
B=${EPMOE_BUILD:-build}
BIN=$B/bin/epmoe
M=${EPMOE_BENCH_FO_MODEL:-}
if [ -z "$M" ]; then
	for m in models/kjv-moe-best.gguf "$B/models/small-f16.gguf" build/models/small-f16.gguf; do
		[ -f "$m" ] && { M=$m; break; }
	done
fi
[ -n "$M" ] || { echo "failover bench: no model (set EPMOE_BENCH_FO_MODEL)"; exit 1; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/epmoe-fo.XXXXXX")
RPID=
BPID=
cleanup() {
	[ -z "$BPID" ] || kill "$BPID" 2>/dev/null || true
	if [ -n "$RPID" ]; then
		kill -TERM "$RPID" 2>/dev/null || true
		wait "$RPID" 2>/dev/null || true
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null ||
		node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}
now() { date +%s.%N; }
jnum() { printf '%s\n' "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p"; }
itl_max() { printf '%s\n' "$1" | sed -n 's/.*"itl_ms":{[^}]*"max":\([^,}]*\).*/\1/p'; }
experts=$("$BIN" inspect "$M" 2>/dev/null | sed -n 's/.*expert_count.*u32 *\([0-9]*\).*/\1/p' | head -1)
[ -n "$experts" ] || experts=8

# placement with every expert on workers e % W and (e + 1) % W
replicas() { # W FILE
	awk -v W="$1" -v E="$experts" 'BEGIN {
		printf "{\"layers\": [[";
		for (e = 0; e < E; e++) printf "%s[%d, %d]", (e ? ", " : ""), e % W, (e + 1) % W;
		printf "]]}\n" }' >"$2"
}

serve() { # W MODE
	hp=$(free_port); cp=$(free_port)
	HURL=http://127.0.0.1:$hp
	pl=""
	if [ "$2" = replicas ]; then replicas "$1" "$TMP/pl.json"; pl="--placement $TMP/pl.json"; fi
	# shellcheck disable=SC2086
	"$B/bin/epmoe-router" --model "$M" --workers "$1" $pl --http "127.0.0.1:$hp" --nng "" \
		--control "tcp://127.0.0.1:$cp" >"$TMP/router.log" 2>&1 &
	RPID=$!
	i=0
	until [ "$(curl -s -o /dev/null -w '%{http_code}' "$HURL/health")" = 200 ] &&
		[ "$(curl -s "$HURL/v1/stats" | sed -n 's/.*"workers_live":\([0-9]*\).*/\1/p')" = "$1" ]; do
		i=$((i + 1)); [ $i -lt 600 ] || { echo "failover bench: router did not start"; tail "$TMP/router.log"; exit 1; }
		sleep 0.1
	done
}

stop() {
	kill -TERM "$RPID" 2>/dev/null || true
	wait "$RPID" 2>/dev/null || true
	RPID=
}

load() { # starts 16 streams of 128 tokens in the background
	"$BIN" bench server -s "$HURL" -c 16 -N 16 --max-tokens 128 --prompt-tokens 16 \
		--json -q >"$TMP/bench.json" 2>"$TMP/bench.err" &
	BPID=$!
}

# pid of the router's local worker "local-1"
victim() {
	for k in $(cat "/proc/$RPID/task/$RPID/children"); do
		tr '\0' ' ' <"/proc/$k/cmdline" | grep -q -- '--id local-1 ' && { echo "$k"; return; }
	done
}

# seconds from $1 until /health is 200 and a one-token request completes
recover() {
	i=0
	while [ $i -lt 600 ]; do
		if [ "$(curl -s -o /dev/null -w '%{http_code}' "$HURL/health")" = 200 ] &&
			[ "$(curl -s -o /dev/null -w '%{http_code}' -m 30 "$HURL/v1/completions" \
				-H 'Content-Type: application/json' \
				-d '{"prompt":"And","max_tokens":1,"temperature":0}')" = 200 ]; then
			awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'
			return
		fi
		i=$((i + 1)); sleep 0.02
	done
	echo "never"
}

W_LIST="2 3"
[ "${EPMOE_BENCH_QUICK:-0}" = 1 ] && W_LIST=2
echo
echo "== failover: $M, 16 concurrent streams x 128 tokens, one worker killed or hung a quarter of the way in"
printf '%-8s %-9s %-6s %8s %12s %10s %12s\n' workers copies fault failed "longest gap" "gap /" recover
printf '%-8s %-9s %-6s %8s %12s %10s %12s\n' "" "" "" "of 16" "ms" "undisturbed" "s"
for W in $W_LIST; do
	for mode in replicas none; do
		serve "$W" "$mode"
		t0=$(now); load; wait "$BPID"; BPID=
		dur=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')
		j=$(cat "$TMP/bench.json")
		base=$(itl_max "$j")
		printf '%-8s %-9s %-6s %8s %12.1f %10s %12s\n' "$W" "$mode" none "$(jnum "$j" errors)" "$base" 1.00 -
		stop
		for fault in kill hang; do
			serve "$W" "$mode"
			load
			sleep "$(awk -v d="$dur" 'BEGIN { print d / 4 }')"
			v=$(victim)
			t0=$(now)
			if [ $fault = kill ]; then kill -KILL "$v"; else kill -STOP "$v"; fi
			rec=$(recover "$t0")
			wait "$BPID" || true; BPID=
			j=$(cat "$TMP/bench.json")
			g=$(itl_max "$j")
			printf '%-8s %-9s %-6s %8s %12s %10s %12s\n' "$W" "$mode" "$fault" "$(jnum "$j" errors)" \
				"$(awk -v g="$g" 'BEGIN { if (g == "" || g == "null") print "-"; else printf "%.1f", g }')" \
				"$(awk -v g="$g" -v b="$base" 'BEGIN { if (g == "" || g == "null" || b <= 0) print "-"; else printf "%.2f", g / b }')" \
				"$rec"
			stop
		done
	done
done
echo "(failed: streams ended by an error; longest gap: between two chunks of a completed stream;"
echo " recover: from the signal to /health 200 and a new request served; a hung worker is fenced"
echo " at its batch deadline or after 3 missed heartbeats (1.5 s), killed and restarted at 3 s)"
