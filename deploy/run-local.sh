#!/bin/sh
# `make run`: starts a router with two local expert workers on
# 127.0.0.1:8080 (override with EPMOE_HTTP) serving EPMOE_MODEL (or MODEL=),
# else the default model: the trained KJV model under models/ when present,
# else a random-weight --preset small model written on first use.
# Ctrl-C stops the router, which stops its workers.
set -eu
B=${EPMOE_BUILD:-build}
BIN=$B/bin
model=${EPMOE_MODEL:-${MODEL:-}}
if [ -z "$model" ]; then
	for m in models/kjv-moe-best.gguf models/kjv-moe-*.gguf; do
		if [ -f "$m" ]; then model=$m; break; fi
	done
fi
if [ -z "$model" ]; then
	model=$B/models/default-small-f16.gguf
	if [ ! -f "$model" ]; then
		mkdir -p "$B/models"
		echo "run: no model given; writing a random-weight one: $model"
		"$BIN/epmoe" mkmodel --arch llama --preset small --dtype f16 --out "$model"
	fi
fi
http=${EPMOE_HTTP:-127.0.0.1:8080}
workers=${EPMOE_WORKERS:-2}
echo "run: serving $model with $workers local workers on http://$http (Ctrl-C stops)"
echo "run: try:  curl -s http://$http/v1/completions -H 'Content-Type: application/json' -d '{\"prompt\": \"In the beginning\", \"max_tokens\": 32}'"
exec "$BIN/epmoe-router" --model "$model" --workers "$workers" --http "$http"
