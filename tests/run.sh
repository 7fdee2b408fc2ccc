#!/bin/sh
# Runs every Check suite under $EPMOE_BUILD/tests, then every integration
# test tests/integration/*.sh, and prints a summary.  Exit status is non-zero
# if anything failed.  Each test runs under a time limit.
B=${EPMOE_BUILD:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
EPMOE_BIN="$top/$B/bin"
EPMOE_TESTDATA=${EPMOE_TESTDATA:-$(cd "$top/../shared/testdata" 2>/dev/null && pwd)}
export EPMOE_BIN EPMOE_TESTDATA EPMOE_BUILD="$B"
export CK_FORK=yes CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-120}
if [ "${SAN:-0}" = 1 ]; then
	export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
	export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
	export CK_DEFAULT_TIMEOUT=$((CK_DEFAULT_TIMEOUT * 4))
fi
failed=""
n=0
for t in "$B"/tests/test_*; do
	[ -x "$t" ] || continue
	n=$((n + 1))
	name=$(basename "$t")
	echo "== unit: $name"
	if ! timeout 900 "$t"; then
		failed="$failed $name"
	fi
done
if [ -z "${EPMOE_SKIP_INTEGRATION:-}" ]; then
	for t in tests/integration/*.sh; do
		[ -f "$t" ] || continue
		n=$((n + 1))
		name=$(basename "$t" .sh)
		echo "== integration: $name"
		if ! timeout 900 sh "$t"; then
			failed="$failed $name"
		fi
	done
fi
echo
if [ -n "$failed" ]; then
	echo "FAILED ($n suites):$failed"
	exit 1
fi
echo "all $n suites passed"
