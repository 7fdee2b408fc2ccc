#!/bin/sh
# The epmoe CLI against a real router, over both transports:
#   - `epmoe generate` at temperature 0 gives the same text over http://
#     and tcp:// (NNG), streamed or not;
#   - `--json` prints one object that parses, with consistent fields;
#   - server errors exit 1 with the server's message, usage errors 2;
#   - `epmoe chat` scripted through stdin: two turns, history kept (the
#     second turn's prompt is longer), /reset and /quit;
#   - `epmoe bench server`, 8 concurrent streaming requests x 16, with
#     zero errors and its statistics printed (table and JSON);
#   - `epmoe perplexity --url` gives the in-process perplexity (1e-4), and
#     exits 1 naming the server it cannot reach.
TEST_NAME=cli_client
here=$(cd "$(dirname "$0")" && pwd)
. "$here/router.inc"

EPMOE=$EPMOE_BIN/epmoe
# json_check FILE EXPR: EXPR (JavaScript on the object `j` parsed from
# FILE, with `fs` at hand) must be true; exits non-zero otherwise
json_check() {
	node -e "const fs = require('fs'); const j = JSON.parse(fs.readFileSync(process.argv[1], 'utf8')); process.exit(($2) ? 0 : 1)" "$1"
}
# run SECONDS CMD...: a command that must not hang
run() {
	t=$1
	shift
	timeout "$t" "$@"
}

router_start
note "router up at $HTTP_URL and $NNG_URL"

# ---- generate: the same greedy text over both transports ----
P="Hello world, the quick brown fox"
for url in "$HTTP_URL" "$NNG_URL"; do
	for mode in --no-stream --stream; do
		f=$TMPD/gen-$(echo "$url" | cut -d: -f1)$mode
		run 60 "$EPMOE" generate --server "$url" --temp 0 -n 16 $mode "$P" \
			>"$f.out" 2>"$f.err" || {
			cat "$f.err" >&2
			fail "generate $mode over $url: status $?"
		}
		grep -q "completion tokens" "$f.err" || fail "generate $mode over $url: no usage line"
	done
done
ref=$TMPD/gen-http--no-stream.out
[ -s "$ref" ] || fail "generate printed nothing"
[ "$(wc -c <"$ref")" -gt 1 ] || fail "generate printed an empty completion"
for f in "$TMPD"/gen-*.out; do
	cmp -s "$ref" "$f" || {
		od -c "$ref" | head -5 >&2
		od -c "$f" | head -5 >&2
		fail "$(basename "$f") differs from the HTTP non-streamed text"
	}
done
note "generate: http and tcp, streamed or not, give the same greedy text"

# stdin as the prompt gives the same text too
printf '%s' "$P" | run 60 "$EPMOE" generate --server "$NNG_URL" --temp 0 -n 16 -q - \
	>"$TMPD/stdin.out" || fail "generate - (stdin)"
cmp -s "$ref" "$TMPD/stdin.out" || fail "generate with the prompt on stdin differs"

# ---- --json ----
for url in "$HTTP_URL" "$NNG_URL"; do
	run 60 "$EPMOE" generate --server "$url" --temp 0 -n 16 --json "$P" \
		>"$TMPD/g.json" || fail "generate --json over $url"
	[ "$(wc -l <"$TMPD/g.json")" -eq 1 ] || fail "--json: not one line"
	# the text as generate prints it: plus a newline unless it has one
	json_check "$TMPD/g.json" "Buffer.from(j.text.endsWith('\\n') ? j.text : j.text + '\\n').equals(fs.readFileSync('$ref')) && ['stop', 'length'].includes(j.finish_reason) && j.usage.completion_tokens > 0 && j.usage.total_tokens === j.usage.prompt_tokens + j.usage.completion_tokens && j.timing.total_ms >= j.timing.ttft_ms && j.timing.ttft_ms >= 0 && j.model.length > 0" ||
		fail "--json over $url: does not parse or unexpected fields: $(cat "$TMPD/g.json")"
done
note "generate --json: parses, text and usage consistent"

# ---- errors: the server's message, status 1; usage errors 2 ----
for url in "$HTTP_URL" "$NNG_URL"; do
	run 30 "$EPMOE" generate --server "$url" --model no-such-model "$P" \
		>/dev/null 2>"$TMPD/err"
	rc=$?
	[ $rc -eq 1 ] || fail "unknown model over $url: status $rc, expected 1"
	grep -q "no-such-model" "$TMPD/err" || fail "unknown model over $url: message lacks the model: $(cat "$TMPD/err")"
	grep -q "404" "$TMPD/err" || fail "unknown model over $url: no 404: $(cat "$TMPD/err")"
done
run 30 "$EPMOE" generate --server "$HTTP_URL" --temp 7 "$P" >/dev/null 2>&1
[ $? -eq 2 ] || fail "--temp 7: expected status 2"
note "errors: server errors exit 1 with the server's message, usage errors 2"

# ---- chat: two scripted turns per transport ----
for url in "$HTTP_URL" "$NNG_URL"; do
	printf 'Hello there\nTell me more\n/quit\nnot sent\n' |
		run 60 "$EPMOE" chat --server "$url" --temp 0 -n 8 --system "Be brief." \
			>"$TMPD/chat.out" 2>"$TMPD/chat.err" || {
		cat "$TMPD/chat.err" >&2
		fail "chat over $url: status $?"
	}
	turns=$(grep -c "completion tokens" "$TMPD/chat.err")
	[ "$turns" -eq 2 ] || fail "chat over $url: $turns turns, expected 2: $(cat "$TMPD/chat.err")"
	p1=$(sed -n 's/^\[[a-z]*; \([0-9]*\) prompt.*/\1/p' "$TMPD/chat.err" | sed -n 1p)
	p2=$(sed -n 's/^\[[a-z]*; \([0-9]*\) prompt.*/\1/p' "$TMPD/chat.err" | sed -n 2p)
	[ -n "$p1" ] && [ -n "$p2" ] && [ "$p2" -gt "$p1" ] ||
		fail "chat over $url: the second turn's prompt ($p2 tokens) should hold the first ($p1)"
	[ -s "$TMPD/chat.out" ] || fail "chat over $url: no reply printed"
	# /reset: the second turn starts afresh (the same prompt as the first)
	printf 'Hello there\n/reset\nHello there\n' |
		run 60 "$EPMOE" chat --server "$url" --temp 0 -n 8 >/dev/null 2>"$TMPD/chat.err" ||
		fail "chat /reset over $url"
	p1=$(sed -n 's/^\[[a-z]*; \([0-9]*\) prompt.*/\1/p' "$TMPD/chat.err" | sed -n 1p)
	p2=$(sed -n 's/^\[[a-z]*; \([0-9]*\) prompt.*/\1/p' "$TMPD/chat.err" | sed -n 2p)
	[ -n "$p1" ] && [ "$p1" = "$p2" ] || fail "chat /reset over $url: prompts $p1 then $p2"
done
note "chat: two turns with history over both transports; /reset, /quit"

# ---- bench server: 8 concurrent streaming requests x 16, no errors ----
for url in "$HTTP_URL" "$NNG_URL"; do
	run 120 "$EPMOE" bench server --server "$url" --concurrency 8 --requests 16 \
		--stream --max-tokens 16 --prompt-tokens 24 --json="$TMPD/bench.json" -q \
		>"$TMPD/bench.out" 2>"$TMPD/bench.err" || {
		cat "$TMPD/bench.err" "$TMPD/bench.out" >&2
		fail "bench server over $url: status $?"
	}
	cat "$TMPD/bench.out"
	for k in ttft tpot itl e2el; do
		grep -q "^  $k " "$TMPD/bench.out" || fail "bench over $url: no $k line"
	done
	json_check "$TMPD/bench.json" "j.points.length === 1 && ((p) => p.completed === 16 && p.failed === 0 && p.max_concurrency === 8 && p.total_output_tokens === 256 && p.request_throughput > 0 && p.median_ttft_ms <= p.p99_e2el_ms && p.mean_itl_ms > 0 && p.mean_tpot_ms > 0)(j.points[0])" ||
		fail "bench over $url: $(cat "$TMPD/bench.json")"
done
note "bench server: 16 requests at concurrency 8, zero errors, over both transports"

# ---- perplexity --url: the server scores what the process scores ----
printf 'In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep.\n' >"$TMPD/ppl.txt"
run 120 "$EPMOE" perplexity --model "$MODEL" --file "$TMPD/ppl.txt" --ctx 16 --threads 1 \
	--json >"$TMPD/ppl-local.json" 2>"$TMPD/ppl.err" || { cat "$TMPD/ppl.err" >&2; fail "perplexity in process"; }
run 120 "$EPMOE" perplexity --model "$MODEL" --file "$TMPD/ppl.txt" --ctx 16 --url "$HTTP_URL" \
	--json >"$TMPD/ppl-url.json" 2>"$TMPD/ppl.err" || { cat "$TMPD/ppl.err" >&2; fail "perplexity --url"; }
json_check "$TMPD/ppl-url.json" "(() => { const l = JSON.parse(fs.readFileSync('$TMPD/ppl-local.json', 'utf8')); return j.tokens === l.tokens && j.windows === l.windows && j.windows > 1 && Math.abs(j.perplexity / l.perplexity - 1) < 1e-4; })()" ||
	fail "perplexity --url $(cat "$TMPD/ppl-url.json") differs from in process $(cat "$TMPD/ppl-local.json")"
"$EPMOE" perplexity --model "$MODEL" --file "$TMPD/ppl.txt" --url http://127.0.0.1:1 >/dev/null 2>"$TMPD/ppl.err"
[ $? -eq 1 ] && grep -q "127.0.0.1:1" "$TMPD/ppl.err" || fail "perplexity --url to a closed port: $(cat "$TMPD/ppl.err")"
note "perplexity --url: $(sed -n 's/.*"perplexity":\([0-9.]*\).*/\1/p' "$TMPD/ppl-url.json") over $(sed -n 's/.*"tokens":\([0-9]*\).*/\1/p' "$TMPD/ppl-url.json") tokens, as in process"

router_stop
echo "$TEST_NAME: ok"
