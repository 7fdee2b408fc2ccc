#!/bin/sh
# epmoe-worker's command line on its own: --help, unknown and missing
# flags, bad values, an unreadable model, a bad URL, and SIGTERM while the
# router is unreachable.  Checks exit codes (0 ok, 1 cannot run, 2 usage)
# and that each error message names the problem.
set -u
B="${EPMOE_BIN:-build/bin}/epmoe-worker"
M="${EPMOE_TESTDATA:-../shared/testdata}/mixtral-tiny-f32.gguf"
tmp=$(mktemp -d /tmp/epmoe-worker-cli.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0

fail() {
	echo "worker_cli: FAIL: $*"
	[ -f "$tmp/err" ] && sed 's/^/  stderr: /' "$tmp/err"
	exit 1
}

# expect CODE PATTERN -- ARGS...: runs the worker (no router env), checks
# the exit code and that stderr (or stdout for code 0) matches PATTERN
expect() {
	code=$1 pat=$2
	shift 3
	env -u EPMOE_ROUTER -u EPMOE_MODEL "$B" "$@" >"$tmp/out" 2>"$tmp/err"
	rc=$?
	[ "$rc" -eq "$code" ] || fail "epmoe-worker $*: exit $rc, expected $code"
	grep -q -- "$pat" "$tmp/out" "$tmp/err" ||
		fail "epmoe-worker $*: output lacks '$pat'"
	n=$((n + 1))
}

expect 0 "usage: epmoe-worker" -- --help
expect 0 "EPMOE_ROUTER" -- -h
expect 0 "default tcp://127.0.0.1:0" -- --help
expect 2 "unknown option" -- --bogus
expect 2 "router: missing value" -- --router
expect 2 "router: required" -- --model "$M"
expect 2 "model: required" -- --router tcp://127.0.0.1:1
expect 2 "threads: expected an integer" -- --router tcp://127.0.0.1:1 --model "$M" --threads many
expect 2 "threads: expected an integer" -- --router tcp://127.0.0.1:1 --model "$M" --threads -3
expect 2 "log-level" -- --router tcp://127.0.0.1:1 --model "$M" --log-level loud
expect 2 "unexpected argument" -- --router tcp://127.0.0.1:1 --model "$M" extra
expect 1 "/nonexistent.gguf" -- --router tcp://127.0.0.1:1 --model /nonexistent.gguf
expect 1 "cannot dial router bogus://x" -- --router bogus://x --model "$M"
expect 1 "cannot listen on tcp://256.0.0.1:0" -- --router tcp://127.0.0.1:1 --model "$M" --listen tcp://256.0.0.1:0

# the environment works like the flags
EPMOE_ROUTER=tcp://127.0.0.1:1 EPMOE_MODEL=/nonexistent.gguf "$B" >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q /nonexistent.gguf "$tmp/err" || fail "EPMOE_MODEL not used"
n=$((n + 1))

# SIGTERM while the router is unreachable: a clean exit 0, promptly
"$B" --router tcp://127.0.0.1:1 --model "$M" --threads 1 --log-json 2>"$tmp/err" &
pid=$!
i=0
until grep -q "waiting for the router" "$tmp/err" 2>/dev/null; do
	i=$((i + 1))
	[ $i -lt 100 ] || { kill -9 $pid; fail "worker did not start"; }
	sleep 0.1
done
grep -q '"level":"info"' "$tmp/err" || fail "--log-json did not give JSON lines"
kill -TERM $pid
i=0
while kill -0 $pid 2>/dev/null; do
	i=$((i + 1))
	[ $i -lt 100 ] || { kill -9 $pid; fail "worker ignored SIGTERM for 10 s"; }
	sleep 0.1
done
wait $pid
rc=$?
[ $rc -eq 0 ] || fail "SIGTERM exit status $rc"
n=$((n + 1))

echo "worker_cli: $n checks passed"
