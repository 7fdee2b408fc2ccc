#!/bin/sh
# `make bench`, Replicate-and-Quantize section (also runs alone): the
# perplexity cost of serving replicas as Q8_0 copies.  The trained KJV
# model (F16 experts), 2 local workers, every expert on both (half of the
# experts listed with worker 1 first), balancer off so the copies stay put;
# models/kjv-test.txt scored through the router (epmoe perplexity --url,
# 256-token windows) with --replica-dtype model and q8_0, each with the
# dynamic replica choice (less loaded copy) and the static one (a fixed
# copy per expert).  Prints perplexity, its change against exact copies,
# the share of expert rows the Q8_0 copies computed and their RAM against
# the model's own copies; then the in-process perplexity (it must equal
# the exact row: placement never changes the math).
#   EPMOE_BUILD  build directory (default build)
set -eu
B=${EPMOE_BUILD:-build}
BIN=$B/bin/epmoe
M=${EPMOE_BENCH_RQ_MODEL:-models/kjv-moe-lossfree.gguf}
TXT=${EPMOE_BENCH_RQ_TEXT:-models/kjv-test.txt}
BENCH_NAME=replica
. "$(dirname "$0")/serve.inc"
jget() { printf '%s\n' "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p"; }
E=$("$BIN" inspect "$M" | sed -n 's/.*expert_count *u32 *\([0-9]*\).*/\1/p')
python3 -c '
import sys
e = int(sys.argv[1])
print("{\"layers\": [[%s]]}" % ", ".join("[0, 1]" if i % 2 == 0 else "[1, 0]" for i in range(e)))' "$E" >"$TMP/place.json"

echo
echo "== Replicate-and-Quantize: $M, 2 local workers, every expert on both, $TXT in 256-token windows"
printf '%-6s %-8s %11s %9s %13s %14s\n' copies choice perplexity "vs exact" "rows on Q8_0" "Q8_0 copy RAM"
exact=
for dt in model q8_0; do
	for choice in dynamic static; do
		router_up --workers 2 --threads 1 --balance off --placement "$TMP/place.json" \
			--replica "$choice" --replica-dtype "$dt"
		# every copy loaded at its precision before scoring
		i=0
		while [ "$dt" = q8_0 ] && [ "$(curl -s "$HURL/v1/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["workers"]["quantized_copies"])')" = 0 ]; do
			i=$((i + 1)); [ $i -lt 300 ] || break
			sleep 0.1
		done
		r=$("$BIN" perplexity --model "$M" --file "$TXT" --ctx 256 --url "$HURL" --json)
		ppl=$(jget "$r" perplexity)
		[ -n "$exact" ] || exact=$ppl
		sleep 1.2 # the workers' next reports carry the last counts
		q=$(curl -s "$HURL/v1/stats" | python3 -c '
import json, sys
w = json.load(sys.stdin)["workers"]["workers"]
r = [x["reported"] for x in w]
print("%.1f%% %.2f" % (100.0 * sum(x["quantized_tokens"] for x in r) / max(1, sum(x["tokens"] for x in r)),
      sum(x["quantized_bytes"] for x in r) / 1048576))')
		set -- $q
		printf '%-6s %-8s %11.4f %9s %13s %14s\n' "$dt" "$choice" "$ppl" \
			"$(awk -v a="$ppl" -v b="$exact" 'BEGIN { printf "%+.3f%%", (a / b - 1) * 100 }')" "$1" \
			"$([ "$dt" = q8_0 ] && echo "$2 MiB" || echo -)"
		router_down
	done
done
r=$("$BIN" perplexity --model "$M" --file "$TXT" --ctx 256 --threads 1 --json)
echo "(in process: perplexity $(jget "$r" perplexity); Q8_0 copy RAM over both workers, against the"
echo " F16 copies they replace: $(python3 -c '
import sys
print("%.1f%%" % (100.0 * 34 / 64))'), Q8_0 block bytes over F16 bytes for 32 weights)"
