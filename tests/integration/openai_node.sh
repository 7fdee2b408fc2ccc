#!/bin/sh
# The router through the official OpenAI Node client (npm package
# "openai", installed into tests/integration/node/ on first run):
# models.list, completions and chat completions, whole and streamed (with
# include_usage), the shapes the client expects, and the client's
# BadRequestError / NotFoundError for bad requests.  See node/test.mjs.
TEST_NAME=openai_node
here=$(cd "$(dirname "$0")" && pwd)
. "$here/router.inc"

command -v node >/dev/null 2>&1 || fail "node is not installed (make deps)"
command -v npm >/dev/null 2>&1 || fail "npm is not installed (make deps)"

if [ ! -f "$here/node/node_modules/openai/package.json" ]; then
	note "installing the openai npm package into tests/integration/node"
	(cd "$here/node" && timeout 300 npm install --no-audit --no-fund \
		>"$TMPD/npm.log" 2>&1) || {
		tail -20 "$TMPD/npm.log" >&2
		fail "npm install failed"
	}
fi

router_start
note "router up at $HTTP_URL; openai $(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$here/node/node_modules/openai/package.json")"
timeout 120 node "$here/node/test.mjs" "$HTTP_URL" || fail "the OpenAI client checks failed (status $?)"
router_stop
echo "$TEST_NAME: ok"
