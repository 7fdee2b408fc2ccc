#!/bin/sh
# Load sweep over several server settings, with plots.
#
# For each setting NAME=ROUTER_ARGS it starts epmoe-router with those
# arguments (free 127.0.0.1 ports, a bounded wait for /health), runs
# `epmoe bench server` over the rates (or concurrencies) with per-request
# detail and /v1/stats sampled every second, stops the router, and at the
# end draws the plots (plot.sh) and a summary.md.
#
#   deploy/loadtest/sweep.sh [options] NAME=ROUTER_ARGS...
#     --model M          model file (default: EPMOE_MODEL, else the trained
#                        KJV model under models/)
#     --rates LIST       open-loop sweep (default 1,2,4,inf)
#     --concurrency LIST closed-loop sweep instead (e.g. 1,4,16,64)
#     --requests N       requests per point (default 60)
#     --slo LIST         goodput objectives (default ttft=1s,tpot=100ms)
#     --out DIR          results and plots (default build/loadtest/DATE)
#     --server URL       measure one running server (setting "server")
#                        instead of starting routers
#     --stats-interval S sample /v1/stats every S seconds (default 1)
#     --alternate        one load point at a time, each setting in turn
#                        (A B A B ...: slow drift of a shared machine then
#                        hits every setting alike; a router start per point)
#     --bench ARGS       more `epmoe bench server` arguments, e.g.
#                        "--dataset sharegpt --dataset-path F"
#   e.g.  deploy/loadtest/sweep.sh local=--local "2 workers=--workers 2"
#         deploy/loadtest/sweep.sh "ssr=--workers 2 --routing ssr:lambda=1.3" ...
#
# Requests may take 300 s (--timeout 300) so that saturated points
# measure latency rather than the client's patience; --bench overrides it.
# Setting names become file names (spaces and slashes are replaced by _).
# Needs the built binaries (EPMOE_BUILD, default build), curl, gnuplot and
# jq (`make deps`).  Every wait is bounded; routers it started are
# stopped on exit, also on failure or Ctrl-C.
set -eu
B=${EPMOE_BUILD:-build}
BIN=$B/bin
model=${EPMOE_MODEL:-}
rates=1,2,4,inf
conc=
requests=60
slo=ttft=1s,tpot=100ms
out=
server=
bench_extra=
interval=1
alternate=0
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case $1 in
	--model) model=$2; shift 2 ;;
	--rates) rates=$2; conc=; shift 2 ;;
	--concurrency) conc=$2; rates=; shift 2 ;;
	--requests) requests=$2; shift 2 ;;
	--slo) slo=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--server) server=$2; shift 2 ;;
	--bench) bench_extra=$2; shift 2 ;;
	--stats-interval) interval=$2; shift 2 ;;
	--alternate) alternate=1; shift ;;
	-h|--help) usage; exit 0 ;;
	--*) echo "sweep.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
	*) break ;;
	esac
done
[ -n "$server" ] || [ $# -gt 0 ] || { echo "sweep.sh: give at least one NAME=ROUTER_ARGS (or --server URL)" >&2; exit 2; }
for t in curl gnuplot jq; do
	command -v $t >/dev/null 2>&1 || {
		echo "sweep.sh: $t is missing (make deps installs gnuplot and jq)" >&2
		exit 1
	}
done
[ -x "$BIN/epmoe" ] || { echo "sweep.sh: no $BIN/epmoe (run make first)" >&2; exit 1; }
if [ -z "$model" ] && [ -z "$server" ]; then
	for m in models/kjv-moe-best.gguf models/kjv-moe-*.gguf; do
		[ -f "$m" ] && { model=$m; break; }
	done
	[ -n "$model" ] || { echo "sweep.sh: no model: give --model or EPMOE_MODEL" >&2; exit 1; }
fi
[ -n "$out" ] || out=$B/loadtest/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
: >"$out/settings.txt"
load_args="--rates $rates"
[ -z "$conc" ] || load_args="--concurrency $conc"

PROG=sweep.sh
. "$(dirname "$0")/router.inc"

run_bench() { # NAME URL LOAD_ARGS JSON
	echo "sweep.sh: == $1: $3, $requests requests per point"
	# shellcheck disable=SC2086
	"$BIN/epmoe" bench server --server "$2" $3 --requests "$requests" \
		--slo "$slo" --warmup 2 --timeout 300 --save-detailed --stats-interval "$interval" --label "$1" \
		--json "$4" $bench_extra | tee -a "$out/$1.txt"
}

# the settings: names (file names: spaces and slashes become _) and args
for s in "$@"; do
	[ "${s#*=}" != "$s" ] || { echo "sweep.sh: '$s' is not NAME=ROUTER_ARGS" >&2; exit 2; }
done
name_of() { printf '%s' "${1%%=*}" | tr ' /' '__'; }

if [ -n "$server" ]; then
	run_bench server "$server" "$load_args" "$out/server.json"
	echo server >>"$out/settings.txt"
fi
if [ $alternate = 0 ]; then
	for s in "$@"; do
		name=$(name_of "$s")
		start_router "$name" "${s#*=}"
		run_bench "$name" "$URL" "$load_args" "$out/$name.json"
		stop_router
		echo "$name" >>"$out/settings.txt"
	done
else
	# point by point; each setting's points are joined into NAME.json
	points=$(printf '%s' "${rates:-$conc}" | tr ',' ' ')
	flag=--rates
	[ -z "$conc" ] || flag=--concurrency
	k=0
	for p in $points; do
		for s in "$@"; do
			name=$(name_of "$s")
			start_router "$name" "${s#*=}"
			run_bench "$name" "$URL" "$flag $p" "$out/$name.p$k.json"
			stop_router
		done
		k=$((k + 1))
	done
	for s in "$@"; do
		name=$(name_of "$s")
		# shellcheck disable=SC2046
		jq -s '.[0] + {points: [.[].points[]]}' $(i=0; while [ $i -lt $k ]; do
			printf '%s ' "$out/$name.p$i.json"; i=$((i + 1)); done) >"$out/$name.json"
		echo "$name" >>"$out/settings.txt"
	done
fi
sh "$(dirname "$0")/plot.sh" "$out"
echo "sweep.sh: results in $out"
