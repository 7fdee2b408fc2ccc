#!/bin/sh
# Security end to end, on real routers and workers over 127.0.0.1:
#   - mutual TLS: a router and two workers with certificates from
#     deploy/mkcerts.sh serve; workers without a certificate (plain TCP)
#     or with one from another CA never register, so they are never sent
#     anything, while the good workers serve; the TLS cluster gives the
#     same greedy tokens (and logprobs) as a plain one;
#   - a certificate whose key does not match, or that the CA did not sign,
#     is refused at start (a handshake with itself fails);
#   - a tcp:// control URL with TLS configured, or tls+tcp:// without it,
#     is refused at start with a message;
#   - API keys: without a key or with a wrong one 401 in OpenAI's envelope
#     (HTTP) or UNAUTHORIZED (NNG, through `epmoe generate`), with either
#     key (--api-key and --api-key-file) 200; /health open, /metrics open
#     unless --metrics-auth; refusals counted in /metrics;
#   - invalid UTF-8 in a request body is a 400; a 404 quoting bad bytes
#     is valid JSON;
#   - a model whose context_length does not fit the machine is refused at
#     start with a message.
TEST_NAME=security
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
. "$here/router.inc"

EPMOE=$EPMOE_BIN/epmoe
CERTS=$TMPD/certs
EVIL=$TMPD/evil
PIDS=""

json_check() {
	node -e "const fs = require('fs'); const j = JSON.parse(fs.readFileSync(process.argv[1], 'utf8')); process.exit(($2) ? 0 : 1)" "$1"
}

stop_workers() {
	for p in $PIDS; do
		kill -TERM "$p" 2>/dev/null
	done
	for p in $PIDS; do
		i=0
		while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		kill -KILL "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	PIDS=""
}
trap 'stop_workers; cleanup' EXIT

# worker NAME ARGS...: a remote worker in the background, log in $TMPD/NAME.log
worker() {
	name=$1
	shift
	"$EPMOE_BIN/epmoe-worker" --model "$MODEL" --threads 1 --id "$name" "$@" \
		>"$TMPD/$name.log" 2>&1 &
	PIDS="$PIDS $!"
}

# completion URL BODY OUT [CURL ARGS...]: POST /v1/completions, status out
post() {
	url=$1 body=$2 out=$3
	shift 3
	curl -s -m 60 -o "$out" -w '%{http_code}' "$@" -H 'Content-Type: application/json' \
		--data-binary "$body" "$url/v1/completions"
}

GREEDY='{"prompt":"In the beginning God created","max_tokens":24,"temperature":0,"logprobs":2,"seed":7}'

sh "$top/deploy/mkcerts.sh" "$CERTS" router w0 w1 >/dev/null || fail "mkcerts failed"
sh "$top/deploy/mkcerts.sh" "$EVIL" evil >/dev/null || fail "mkcerts (other CA) failed"
[ "$(stat -c %a "$CERTS/w0.key")" = 600 ] || fail "a key is readable by others"
openssl verify -CAfile "$CERTS/ca.pem" "$CERTS/w1.pem" >/dev/null || fail "w1 does not verify"
openssl verify -CAfile "$CERTS/ca.pem" "$EVIL/evil.pem" >/dev/null 2>&1 &&
	fail "a certificate of another CA verifies"

# ---- the reference: a plain cluster ----
router_start
[ "$(post "$HTTP_URL" "$GREEDY" "$TMPD/plain.json")" = 200 ] || fail "plain completion failed"
router_stop

# ---- TLS cluster with remote workers, and three rogues ----
CTL_PORT=$(free_port) || fail "no free port"
CTL=tls+tcp://127.0.0.1:$CTL_PORT
TLS_R="--tls-cert $CERTS/router.pem --tls-key $CERTS/router.key --tls-ca $CERTS/ca.pem"
# the rogues dial first: they are there the whole time (a rogue holding
# another CA's certificate while trusting ours is what the router sees of
# rogue-otherca too; our binaries refuse to start that way, see below)
worker rogue-plain --router "tcp://127.0.0.1:$CTL_PORT"
worker rogue-otherca --router "$CTL" --tls-cert "$EVIL/evil.pem" \
	--tls-key "$EVIL/evil.key" --tls-ca "$EVIL/ca.pem"
for w in w0 w1; do
	worker "$w" --router "$CTL" --tls-cert "$CERTS/$w.pem" \
		--tls-key "$CERTS/$w.key" --tls-ca "$CERTS/ca.pem"
done
export CTL_PORT
CONTROL_SCHEME=tls+tcp router_start_with "--workers 0 --expect-workers 2 $TLS_R" ||
	{ tail -20 "$TMPD/router.log" >&2; fail "the TLS router did not start"; }
grep -q "security: mutual TLS" "$TMPD/router.log" || fail "the router does not say it uses TLS"
[ "$(post "$HTTP_URL" "$GREEDY" "$TMPD/tls.json")" = 200 ] || fail "TLS completion failed"
node -e '
const fs = require("fs");
const a = JSON.parse(fs.readFileSync(process.argv[1])), b = JSON.parse(fs.readFileSync(process.argv[2]));
const ta = a.choices[0].text, tb = b.choices[0].text;
if (ta !== tb) { console.error("plain: " + JSON.stringify(ta) + "\ntls:   " + JSON.stringify(tb)); process.exit(1); }
const la = a.choices[0].logprobs.token_logprobs, lb = b.choices[0].logprobs.token_logprobs;
for (let i = 0; i < la.length; i++) if (Math.abs(la[i] - lb[i]) > 1e-4) { console.error("logprob " + i); process.exit(1); }
if (b.usage.completion_tokens !== 24) process.exit(1);
' "$TMPD/plain.json" "$TMPD/tls.json" || fail "the TLS cluster does not give the plain cluster's tokens"
note "TLS cluster gives the plain cluster's 24 greedy tokens and logprobs"
# a few more requests while the rogues keep trying
for i in 1 2 3; do
	[ "$(post "$HTTP_URL" "$GREEDY" "$TMPD/more.json")" = 200 ] || fail "request $i failed"
done
curl -s -m 10 "$HTTP_URL/v1/placement" >"$TMPD/placement.json" || fail "no placement"
for w in w0 w1; do
	grep -q "\"$w\"" "$TMPD/placement.json" || fail "worker $w is not in the placement"
	grep -q "registered with router" "$TMPD/$w.log" || fail "worker $w did not register"
done
# the rogues' first refused attempts are logged once their TLS handshakes
# failed: slow under the sanitizers, so wait for them (30 s at most each)
for w in rogue-plain rogue-otherca; do
	i=0
	until grep -q "waiting for the router" "$TMPD/$w.log"; do
		i=$((i + 1))
		[ $i -lt 150 ] || fail "$w did not even try (log: $(tail -3 "$TMPD/$w.log"))"
		sleep 0.2
	done
done
curl -s -m 10 "$HTTP_URL/v1/placement" >"$TMPD/placement.json" || fail "no placement"
for w in rogue-plain rogue-otherca; do
	grep -q "$w" "$TMPD/placement.json" && fail "$w is in the placement"
	grep -q "$w" "$TMPD/router.log" && fail "the router heard of $w"
	grep -q "registered with router" "$TMPD/$w.log" && fail "$w registered"
done
note "workers without a valid certificate never registered (so were sent nothing)"
router_stop
stop_workers

# ---- TLS misconfigurations are refused at start ----
# refused runs: bounded, on port 0 (nothing fixed is ever bound)
refused() {
	timeout 30 "$EPMOE_BIN/epmoe-router" --model "$MODEL" --workers 0 --expect-workers 1 \
		--http 127.0.0.1:0 --nng "" "$@" 2>&1
}
out=$(refused --control "tcp://127.0.0.1:0" $TLS_R) && fail "a tcp:// control URL with TLS started"
echo "$out" | grep -q "TCP URLs must be tls+tcp://" || fail "no message for tcp:// with TLS: $out"
out=$(refused --control "tls+tcp://127.0.0.1:0") && fail "tls+tcp:// without certificates started"
echo "$out" | grep -q "needs --tls-cert, --tls-key and --tls-ca" || fail "no message for tls+tcp:// alone: $out"
out=$(refused --control "tls+tcp://127.0.0.1:0" --tls-cert "$CERTS/router.pem" \
	--tls-key "$EVIL/evil.key" --tls-ca "$CERTS/ca.pem") &&
	fail "a key that does not match the certificate was accepted"
echo "$out" | grep -q "do not work together" || fail "no message for a mismatched key: $out"
out=$(refused --control "tls+tcp://127.0.0.1:0" --tls-cert "$EVIL/evil.pem" \
	--tls-key "$EVIL/evil.key" --tls-ca "$CERTS/ca.pem") &&
	fail "a certificate of another CA was accepted as the router's own"
echo "$out" | grep -q "do not work together" || fail "no message for a foreign certificate: $out"
out=$(refused --tls-cert "$CERTS/router.pem") && fail "--tls-cert alone was accepted"
echo "$out" | grep -q "all three" || fail "no message for --tls-cert alone: $out"
out=$(timeout 30 "$EPMOE_BIN/epmoe-worker" --model "$MODEL" --router "tls+tcp://127.0.0.1:1" \
	--tls-cert "$EVIL/evil.pem" --tls-key "$CERTS/w0.key" --tls-ca "$CERTS/ca.pem" 2>&1) &&
	fail "a worker with a mismatched key started"
echo "$out" | grep -q "do not work together" || fail "worker: no message for a mismatched key: $out"
note "TLS misconfigurations are refused with a message"

# ---- API keys ----
printf '# keys\n\n  key-from-file  \n' >"$TMPD/keys"
chmod 600 "$TMPD/keys"
router_start_with "--local --api-key key-one --api-key-file $TMPD/keys" || fail "keyed router did not start"
H=$HTTP_URL
code() { curl -s -m 20 -o "$TMPD/body" -D "$TMPD/hdrs" -w '%{http_code}' "$@"; }
[ "$(code "$H/v1/models")" = 401 ] || fail "no key: not 401"
json_check "$TMPD/body" 'j.error.code === "invalid_api_key" && j.error.type === "invalid_request_error" && /provide an API key/.test(j.error.message)' ||
	fail "401 body is not OpenAI's envelope: $(cat "$TMPD/body")"
grep -qi '^www-authenticate: Bearer' "$TMPD/hdrs" || fail "no WWW-Authenticate"
[ "$(code -H 'Authorization: Bearer key-two' "$H/v1/models")" = 401 ] || fail "wrong key: not 401"
json_check "$TMPD/body" '/Incorrect API key/.test(j.error.message)' || fail "wrong-key message"
[ "$(code -H 'Authorization: Basic a2V5LW9uZQ==' "$H/v1/models")" = 401 ] || fail "Basic auth accepted"
[ "$(code -H 'Authorization: Bearer key-one' "$H/v1/models")" = 200 ] || fail "key-one refused"
[ "$(code -H 'Authorization: bearer   key-from-file' "$H/v1/models")" = 200 ] || fail "the key file's key refused"
[ "$(code -H 'Authorization: Bearer key-one' "$H/no/such/route")" = 404 ] || fail "keyed 404"
[ "$(code "$H/no/such/route")" = 401 ] || fail "an unknown route answers without a key"
[ "$(code "$H/health")" = 200 ] || fail "/health needs a key"
[ "$(code "$H/metrics")" = 200 ] || fail "/metrics needs a key without --metrics-auth"
grep -q 'epmoe_requests_rejected_total{reason="unauthorized"} [1-9]' "$TMPD/body" ||
	fail "unauthorized requests are not counted"
[ "$(post "$H" '{"prompt":"hi","max_tokens":2}' "$TMPD/body")" = 401 ] || fail "POST without key"
[ "$(post "$H" '{"prompt":"hi","max_tokens":2}' "$TMPD/body" -H 'Authorization: Bearer key-one')" = 200 ] ||
	fail "POST with key"
# invalid UTF-8 (and a 404 quoting invalid bytes stays valid JSON)
[ "$(post "$H" "$(printf '{"prompt":"caf\351","max_tokens":2}')" "$TMPD/body" -H 'Authorization: Bearer key-one')" = 400 ] ||
	fail "invalid UTF-8 not refused"
json_check "$TMPD/body" '/not valid UTF-8/.test(j.error.message)' || fail "UTF-8 message"
[ "$(code -H 'Authorization: Bearer key-one' "$H/$(printf '\377\376%%ff')")" = 404 ] || fail "bad-byte path"
json_check "$TMPD/body" 'typeof j.error.message === "string"' || fail "404 body with bad bytes is not JSON"
# the CLI over both transports
"$EPMOE" generate --server "$H" -n 2 --temp 0 hi >/dev/null 2>"$TMPD/err" && fail "generate without key succeeded"
grep -q "401" "$TMPD/err" || fail "generate without key: $(cat "$TMPD/err")"
"$EPMOE" generate --server "$H" --api-key key-one -n 2 --temp 0 hi >/dev/null 2>"$TMPD/err" ||
	fail "generate with --api-key: $(cat "$TMPD/err")"
"$EPMOE" generate --server "$NNG_URL" -n 2 --temp 0 hi >/dev/null 2>"$TMPD/err" && fail "NNG without key succeeded"
grep -q "API key" "$TMPD/err" || fail "NNG without key: $(cat "$TMPD/err")"
EPMOE_API_KEY=key-from-file "$EPMOE" generate --server "$NNG_URL" -n 2 --temp 0 hi >/dev/null 2>"$TMPD/err" ||
	fail "NNG with EPMOE_API_KEY: $(cat "$TMPD/err")"
"$EPMOE" bench server --server "$H" --api-key key-one --requests 4 --concurrency 2 --max-tokens 4 --quiet \
	>"$TMPD/bench.out" 2>&1 || fail "bench with a key: $(tail -3 "$TMPD/bench.out")"
router_stop
router_start_with "--local --api-key key-one --metrics-auth" || fail "router did not start"
[ "$(code "$HTTP_URL/metrics")" = 401 ] || fail "/metrics open with --metrics-auth"
[ "$(code -H 'Authorization: Bearer key-one' "$HTTP_URL/metrics")" = 200 ] || fail "/metrics keyed"
[ "$(code "$HTTP_URL/health")" = 200 ] || fail "/health needs a key with --metrics-auth"
router_stop
out=$(timeout 30 "$EPMOE_BIN/epmoe-router" --model "$MODEL" --local --http 127.0.0.1:0 --nng "" \
	--api-key-file "$TMPD/nokeys" 2>&1) &&
	fail "a missing key file was accepted"
printf '# none\n' >"$TMPD/empty"
out=$(timeout 30 "$EPMOE_BIN/epmoe-router" --model "$MODEL" --local --http 127.0.0.1:0 --nng "" \
	--api-key-file "$TMPD/empty" 2>&1) &&
	fail "a key file without keys was accepted"
echo "$out" | grep -q "no API key in the file" || fail "empty key file message: $out"
note "API keys: 401 without or with a wrong key, 200 with either key, /health open"

# ---- a context length that cannot fit is refused at start ----
"$EPMOE" mkmodel --arch llama --layers 8 --dim 256 --heads 4 --kv-heads 4 --experts 2 \
	--top-k 1 --ff 16 --vocab 354 --dtype f16 --ctx 16777216 --out "$TMPD/bigctx.gguf" \
	>/dev/null 2>&1 || fail "mkmodel"
out=$(timeout 60 "$EPMOE_BIN/epmoe-router" --model "$TMPD/bigctx.gguf" --local --http 127.0.0.1:0 --nng "" 2>&1) &&
	fail "a 256 GiB context was accepted"
echo "$out" | grep -q "context length 16777216 (the model's context_length) needs" ||
	fail "no message for the huge context: $out"
note "a context that does not fit the memory budget is refused at start"
echo "security: 6 passed, 0 failed"
