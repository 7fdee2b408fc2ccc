#!/bin/sh
# Runs every libFuzzer target in $EPMOE_BUILD/bin (build/fuzz/bin) for
# FUZZ_SECONDS seconds each, one after the other, on its seed corpus
# tests/fuzz/corpus/NAME plus a working corpus build/fuzz/corpus/NAME that
# keeps what earlier runs found.  A crash, leak, timeout or an allocation
# over 1 GiB fails the run; the input is left in build/fuzz/crashes/.
# FUZZ_TARGETS="http oai" runs only those; FUZZ_RUNS=N stops each target
# after N executions instead (whichever comes first).
B=${EPMOE_BUILD:-build/fuzz}
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
secs=${FUZZ_SECONDS:-30}
runs=${FUZZ_RUNS:--1}
targets=${FUZZ_TARGETS:-$(cd "$B/bin" && ls fuzz_* | sed 's/^fuzz_//')}
# a 16 MiB quarantine (instead of 256) keeps use-after-free detection for
# recent frees and makes the server targets 1.5-3x faster
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:quarantine_size_mb=16:malloc_context_size=8}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$B/crashes"
pass=0
fail=0
failed=""
for t in $targets; do
	bin="$B/bin/fuzz_$t"
	[ -x "$bin" ] || { echo "fuzz: no $bin" >&2; fail=$((fail + 1)); continue; }
	work="$B/corpus/$t"
	mkdir -p "$work"
	case $t in
	gguf) max=65536 ;;
	http) max=16384 ;;
	*) max=4096 ;;
	esac
	dict=""
	[ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
	log="$B/fuzz_$t.log"
	echo "== fuzz: $t (${secs} s)"
	if "$bin" -max_total_time="$secs" -runs="$runs" -max_len="$max" \
		-timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
		-print_final_stats=1 -artifact_prefix="$B/crashes/$t-" $dict \
		"$work" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
		execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
		cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
		echo "   ok: $execs executions, $cov, corpus $(ls "$work" | wc -l) inputs"
		pass=$((pass + 1))
	else
		echo "   FAILED (log: $log):"
		grep -E "ERROR|SUMMARY|fuzz check failed|Test unit written" "$log" | head -8 | sed 's/^/   /'
		fail=$((fail + 1))
		failed="$failed $t"
	fi
done
echo
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
