#!/bin/sh
# Prefix-cache scenarios under load, for any settings of the router.
#
# For each setting NAME=ROUTER_ARGS it starts epmoe-router with those
# arguments (free 127.0.0.1 ports, a bounded wait for /health) and runs
# two scenarios with `epmoe bench server`, 16 streams:
#   shared  N requests sharing a ~256-token system prompt, each with its
#           own ~30-token question;
#   chat    16 conversations of T turns, each turn resent with its history;
#           turn t of all 16 is one run, the turns in order;
# then prints per setting: TTFT p50/p99, output tokens/s and the share of
# prompt tokens served from the cache (shared); TTFT p50 and tokens/s of
# the later turns, and the prompt tokens prefilled per request at each
# turn (prompt_tokens - cached_tokens of usage) (chat).  The prompts are
# those of `make bench` (client/bench/prefix-data.sh).
#
#   deploy/loadtest/prefix.sh [options] [NAME=ROUTER_ARGS...]
#     --model M          model file (default: EPMOE_MODEL, else
#                        build/models/small-f16.gguf)
#     --requests N       requests of the shared scenario (default 48)
#     --turns T          chat turns (default 4)
#     --max-tokens G     tokens per request (default 32)
#     --out DIR          JSON of every run (default build/loadtest/prefix-DATE)
#     --server URL       measure one running server (setting "server")
#                        instead of starting routers; with
#     --extra-body JSON  added to every request (e.g. '{"cache_prompt":false}'
#                        for a llama-server)
#   Without settings: "on=--local --prefix-cache on" and
#   "off=--local --prefix-cache off".
#   e.g.  deploy/loadtest/prefix.sh on=--local "on 2w=--workers 2" \
#             "off 2w=--workers 2 --prefix-cache off"
#
# Needs the built binaries (EPMOE_BUILD, default build) and curl.  Every
# run is bounded (request count, --timeout 300); routers it started are
# stopped on exit, also on failure or Ctrl-C.
set -eu
B=${EPMOE_BUILD:-build}
BIN=$B/bin
model=${EPMOE_MODEL:-$B/models/small-f16.gguf}
requests=48
turns=4
gen=32
out=
server=
extra=
usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case $1 in
	--model) model=$2; shift 2 ;;
	--requests) requests=$2; shift 2 ;;
	--turns) turns=$2; shift 2 ;;
	--max-tokens) gen=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--server) server=$2; shift 2 ;;
	--extra-body) extra=$2; shift 2 ;;
	-h|--help) usage; exit 0 ;;
	--*) echo "prefix.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
	*) break ;;
	esac
done
for v in "$requests" "$turns" "$gen"; do
	case $v in ''|*[!0-9]*) echo "prefix.sh: --requests, --turns and --max-tokens take numbers" >&2; exit 2 ;; esac
done
if [ "$requests" -lt 1 ] || [ "$requests" -gt 10000 ] || [ "$turns" -lt 1 ] ||
	[ "$turns" -gt 20 ] || [ "$gen" -lt 1 ] || [ "$gen" -gt 4096 ]; then
	echo "prefix.sh: --requests 1..10000, --turns 1..20, --max-tokens 1..4096" >&2
	exit 2
fi
[ -x "$BIN/epmoe" ] || { echo "prefix.sh: no $BIN/epmoe (run make first)" >&2; exit 1; }
[ -f "$model" ] || { echo "prefix.sh: no model $model (give --model; epmoe mkmodel --preset small --dtype f16 makes one)" >&2; exit 1; }
command -v curl >/dev/null 2>&1 || { echo "prefix.sh: curl is missing" >&2; exit 1; }
[ -n "$out" ] || out=$B/loadtest/prefix-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
if [ -z "$server" ] && [ $# -eq 0 ]; then
	set -- "on=--local --prefix-cache on" "off=--local --prefix-cache off"
fi
for s in "$@"; do
	[ "${s#*=}" != "$s" ] || { echo "prefix.sh: '$s' is not NAME=ROUTER_ARGS" >&2; exit 2; }
done

PROG=prefix.sh
. "$(dirname "$0")/router.inc"
# jget JSON KEY: the first numeric KEY ("" when null or absent)
jget() { printf '%s\n' "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" | sed 's/^null$//'; }
# run URL PROMPTS N JSON: one load of N requests, 16 streams; prints the JSON
run() {
	# shellcheck disable=SC2086
	"$BIN/epmoe" bench server --server "$1" -c 16 -N "$3" --max-tokens "$gen" \
		--prompt-file "$2" --timeout 300 --slo none --json "$4" -q \
		${extra:+--extra-body "$extra"} >/dev/null || true
	cat "$4" 2>/dev/null || true
}

EPMOE=$BIN/epmoe; PX_MODEL=$model
. "$(dirname "$0")/../../client/bench/prefix-data.sh"
px_data "$out" "$requests" "$turns"
echo "prefix.sh: $model, 16 streams, $gen tokens per request; shared: $requests requests of"
echo "  $(ntok "$SYS") + ~30 tokens; chat: 16 conversations x $turns turns ($(ntok "$(tail -1 "$out/chat-$turns.txt")") tokens at the last)"

# measure NAME URL: both scenarios, one row
rows=
measure() {
	o=$(run "$2" "$out/shared.txt" "$requests" "$out/$1.shared.json")
	in=$(jget "$o" total_input_tokens); ca=$(jget "$o" total_cached_tokens)
	row=$(printf '%-14s | %8.0f %8.0f %8.1f %7s |' "$1" "$(jget "$o" median_ttft_ms)" \
		"$(jget "$o" p99_ttft_ms)" "$(jget "$o" output_throughput)" \
		"$(awk -v i="${in:-0}" -v c="$ca" 'BEGIN { if (c == "" || i <= 0) print "-"; else printf "%.0f%%", 100 * c / i }')")
	t=1; s50=0; tok=0; dur=0; pf=
	while [ $t -le "$turns" ]; do
		o=$(run "$2" "$out/chat-$t.txt" 16 "$out/$1.chat-$t.json")
		in=$(jget "$o" total_input_tokens); ca=$(jget "$o" total_cached_tokens); n=$(jget "$o" completed)
		pf="$pf $(awk -v i="${in:-0}" -v c="${ca:-0}" -v n="${n:-0}" 'BEGIN { if (n > 0) printf "%.0f", (i - c) / n; else printf "-" }')/$(awk -v i="${in:-0}" -v n="${n:-0}" 'BEGIN { if (n > 0) printf "%.0f", i / n; else printf "-" }')"
		if [ $t -gt 1 ] || [ "$turns" -eq 1 ]; then
			s50=$(awk -v a="$s50" -v b="$(jget "$o" median_ttft_ms)" 'BEGIN { print a + b }')
			tok=$(awk -v a="$tok" -v b="$(jget "$o" total_output_tokens)" 'BEGIN { print a + b }')
			dur=$(awk -v a="$dur" -v b="$(jget "$o" duration)" 'BEGIN { print a + b }')
		fi
		t=$((t + 1))
	done
	later=$((turns > 1 ? turns - 1 : 1))
	row="$row$(awk -v s="$s50" -v k="$tok" -v d="$dur" -v n=$later 'BEGIN { printf " %8.0f %8.1f |", s / n, (d > 0) ? k / d : 0 }')$pf"
	rows="$rows$row
"
	echo "prefix.sh: $row" >&2
}
if [ -n "$server" ]; then
	measure server "$server"
fi
for s in "$@"; do
	name=$(printf '%s' "${s%%=*}" | tr ' /' '__')
	start_router "$name" "${s#*=}"
	measure "$name" "$URL"
	stop_router
done
echo
printf '%-14s | %-34s | %-17s | %s\n' "" "shared prefix" "chat, turns 2..$turns" "chat: prefilled/prompt tokens"
printf '%-14s | %8s %8s %8s %7s | %8s %8s | %s\n' setting "TTFT p50" "p99 ms" "tok/s" cached "TTFT p50" "tok/s" "per request, turn 1..$turns"
printf '%s' "$rows"
echo "prefix.sh: JSON of every run in $out"
