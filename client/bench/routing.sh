#!/bin/sh
# Serving-time routing policies on trained models: perplexity of the
# held-out text under each policy, and the balance each gives, as a
# markdown table.  Usage: client/bench/routing.sh [TEXT] MODEL...
# (default: models/kjv-test.txt and every models/kjv-moe-*.gguf).
set -eu
B=${EPMOE_BUILD:-build}
BIN=$B/bin/epmoe
TEXT=models/kjv-test.txt
case "${1:-}" in *.txt) TEXT=$1; shift ;; esac
[ $# -gt 0 ] || set -- models/kjv-moe-aux.gguf models/kjv-moe-ssr.gguf models/kjv-moe-lossfree.gguf
CTX=${EPMOE_BENCH_ROUTE_CTX:-256}
jget() { printf '%s\n' "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p"; }
POLICIES=${EPMOE_BENCH_POLICIES:-"native topk:k=1 capacity:factor=1.25 expert_choice:c=2 sinkhorn sinkhorn:kernel=capped ssr:p=0.01 ssr:lambda=1.3 ssr:lambda=1.0 usmoe:weights=u usmoe usmoe:budget=0.9 usmoe:budget=0.75 usmoe:budget=0.5 lossfree:u=0.001"}

printf '| policy |'
for m in "$@"; do printf ' %s ppl | MaxVio | w max/mean | exp/tok |' "$(basename "$m" .gguf)"; done
printf ' tok/s |\n|---|'
for m in "$@"; do printf -- '---|---|---|---|'; done
printf -- '---|\n'
for p in $POLICIES; do
	printf '| `%s` |' "$p"
	tps=
	for m in "$@"; do
		o=$("$BIN" perplexity --model "$m" --file "$TEXT" --ctx "$CTX" --routing "$p" --workers 4 --json 2>/dev/null) || o=
		if [ -z "$o" ]; then printf ' failed | | | |'; continue; fi
		printf ' %.2f | %.2f | %.2f | %.2f |' "$(jget "$o" perplexity)" "$(jget "$o" maxvio)" \
			"$(jget "$o" worker_max_over_mean)" "$(jget "$o" experts_per_token)"
		tps=$(jget "$o" tokens_per_s)
	done
	printf ' %.0f |\n' "$tps"
done
