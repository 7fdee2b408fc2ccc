#!/bin/sh
# Load testing end to end against real routers:
#   - `epmoe bench server --rates R,inf --json F` over HTTP and NNG prints a
#     table per point with goodput and a summary, and writes the JSON;
#   - deploy/loadtest/sweep.sh over two settings (experts in process, two
#     workers) writes results, summary.md and five non-blank PNG plots;
#   - the Grafana dashboard is valid JSON whose every query names metrics
#     a live router exports on /metrics, and the Prometheus config scrapes
#     /metrics; with docker-compose installed (`make test-deploy` installs
#     it), the monitoring file merges with the deployment's compose files
#     and every file it mounts exists.
TEST_NAME=loadtest
here=$(cd "$(dirname "$0")" && pwd)
. "$here/router.inc"

for t in gnuplot jq node; do
	command -v $t >/dev/null 2>&1 || fail "$t is not installed (make deps installs it)"
done
EPMOE=$EPMOE_BIN/epmoe
LT=$here/../../deploy/loadtest

# ---- a rate sweep over both transports ----
router_start
for url in "$HTTP_URL" "$NNG_URL"; do
	timeout 120 "$EPMOE" bench server --server "$url" --rates 20,inf --requests 8 \
		--max-tokens 8 --slo ttft=2s,tpot=500ms --json "$TMPD/r.json" \
		>"$TMPD/bench.out" 2>"$TMPD/bench.err" ||
		{ cat "$TMPD/bench.err" >&2; fail "bench server over $url"; }
	[ "$(grep -c '^== rate ' "$TMPD/bench.out")" -eq 2 ] || fail "over $url: not one table per point"
	[ "$(grep -c '^  goodput ' "$TMPD/bench.out")" -eq 2 ] || fail "over $url: no goodput line"
	grep -q '^== summary' "$TMPD/bench.out" || fail "over $url: no summary"
	jq -e '(.points | length) == 2 and .points[0].request_rate == 20
		and .points[1].request_rate == "inf" and (.points | all(.completed == 8))
		and (.points | all(.request_goodput > 0)) and (.git_commit | length) > 0
		and (.machine.cpus > 0) and .model_id != ""' "$TMPD/r.json" >/dev/null ||
		fail "over $url: unexpected JSON: $(head -c 600 "$TMPD/r.json")"
done
note "bench server: a table per point with goodput, and the JSON, over HTTP and NNG"

# ---- Grafana and Prometheus files ----
metrics=$(curl -s -m 10 "$HTTP_URL/metrics") || fail "no /metrics"
jq -e '.panels | length > 10' "$LT/grafana/epmoe.json" >/dev/null ||
	fail "grafana/epmoe.json is not a dashboard"
names=$(jq -r '.. | .expr? // empty' "$LT/grafana/epmoe.json" |
	grep -o 'epmoe_[a-z0-9_]*' | sed 's/_\(bucket\|count\|sum\)$//' | sort -u)
[ -n "$names" ] || fail "the dashboard has no queries"
for m in $names; do
	printf '%s\n' "$metrics" | grep -q "^# TYPE $m " || fail "the dashboard queries $m, which /metrics does not have"
done
grep -q 'metrics_path: /metrics' "$LT/prometheus.yml" || fail "prometheus.yml does not scrape /metrics"
note "grafana: $(printf '%s\n' "$names" | wc -l) metrics queried, all exported"
if command -v docker-compose >/dev/null 2>&1; then
	(cd "$LT/.." && timeout 60 docker-compose -f docker-compose.yml -f docker-compose.override.yml \
		-f loadtest/docker-compose.monitoring.yml config) >"$TMPD/compose.yml" 2>"$TMPD/compose.err" ||
		fail "the monitoring compose file does not merge: $(head -c 400 "$TMPD/compose.err")"
	mounts=$(grep -o '/[^ :]*/loadtest/[^ :]*' "$TMPD/compose.yml")
	[ "$(printf '%s\n' "$mounts" | grep -c .)" -eq 3 ] ||
		fail "the monitoring services do not mount loadtest's three files: $mounts"
	for f in $mounts; do
		[ -e "$f" ] || fail "the monitoring compose file mounts $f, which does not exist"
	done
	grep -q '^  prometheus:' "$TMPD/compose.yml" && grep -q '^  grafana:' "$TMPD/compose.yml" ||
		fail "prometheus or grafana missing from the merged compose file"
	note "compose: prometheus and grafana merge with the deployment, mounts present"
else
	note "compose check skipped: docker-compose is not installed (make test-deploy installs it)"
fi
router_stop

# ---- sweep.sh with two settings ----
out=$TMPD/sweep
EPMOE_BUILD=$EPMOE_BUILD timeout 600 sh "$LT/sweep.sh" --model "$MODEL" --rates 20,inf \
	--requests 12 --stats-interval 0.1 --out "$out" --bench "--max-tokens 8" \
	local=--local "two workers=--workers 2" \
	>"$TMPD/sweep.out" 2>&1 || { tail -30 "$TMPD/sweep.out" >&2; fail "sweep.sh failed"; }
for f in local.json two_workers.json summary.md; do
	[ -s "$out/$f" ] || fail "sweep.sh wrote no $f"
done
[ "$(grep -c '^| [0-9i]' "$out/summary.md")" -eq 4 ] || fail "summary.md: $(cat "$out/summary.md")"
jq -e '.points | length == 2 and all(.completed == 12) and all(.ttfts | length == 12)' \
	"$out/two_workers.json" >/dev/null || fail "two_workers.json: per-request detail missing"
jq -e '[.points[].server_stats | length] | add > 0' "$out/two_workers.json" >/dev/null ||
	fail "two_workers.json: no /v1/stats samples"
for p in throughput_latency ttft_cdf itl_cdf goodput_rate worker_load; do
	[ -s "$out/$p.png" ] || fail "no $p.png"
	st=$(node "$here/png_stats.js" "$out/$p.png") || fail "$p.png is not a PNG"
	node -e 'const s = JSON.parse(process.argv[1]);
		process.exit(s.colors > 8 && s.non_bg > 0.01 ? 0 : 1)' "$st" || fail "$p.png looks blank: $st"
done
ls "$out"/data/two_workers.worker.*.dat >/dev/null 2>&1 || fail "no per-worker load series"
note "sweep.sh: 2 settings x 2 points, summary.md and 5 plots"

# ---- prefix.sh: the shared-prefix and chat scenarios, cache on and off ----
EPMOE_BUILD=$EPMOE_BUILD timeout 600 sh "$LT/prefix.sh" --model "$MODEL" --requests 4 \
	--turns 2 --max-tokens 4 --out "$TMPD/prefix" >"$TMPD/prefix.out" 2>&1 ||
	{ tail -30 "$TMPD/prefix.out" >&2; fail "prefix.sh failed"; }
# the table's rows: "on | p50 p99 tok/s cached% | ..." - cache on reuses the
# shared prefix, cache off reuses nothing
on=$(sed -n 's/^on  *| *[0-9.]*  *[0-9.]*  *[0-9.]*  *\([0-9]*\)%.*/\1/p' "$TMPD/prefix.out" | tail -1)
off=$(sed -n 's/^off  *| *[0-9.]*  *[0-9.]*  *[0-9.]*  *\([0-9]*\)%.*/\1/p' "$TMPD/prefix.out" | tail -1)
[ -n "$on" ] && [ "$on" -gt 0 ] && [ "$off" = 0 ] ||
	fail "prefix.sh: cached share on '$on' off '$off': $(tail -8 "$TMPD/prefix.out")"
note "prefix.sh: shared prefix $on% cached with the cache on, 0% off"
echo "$TEST_NAME: ok"
