#!/bin/sh
# USMoE's weights and budgets on the shipped KJV models (the README's
# "USMoE with weights that fit the model"): epmoe perplexity of
# models/kjv-test.txt, windows of 256, under native routing, usmoe with each
# weights choice, usmoe at budgets 1 to 0.5, and topk:k=1 for comparison.
# Appends one JSON object per measurement to train/out/usmoe/usmoe.jsonl and
# skips those already there.  Run from the top level: sh train/usmoe.sh
set -e
EPMOE=${EPMOE:-build/bin/epmoe}
out=train/out/usmoe/usmoe.jsonl
mkdir -p train/out/usmoe
for m in lossfree aux ssr; do
	for p in native usmoe:weights=u usmoe:weights=rowsum usmoe \
	    usmoe:budget=0.9 usmoe:budget=0.75 usmoe:budget=0.6 \
	    usmoe:budget=0.5 topk:k=1 usmoe:weights=u,budget=0.75; do
		if grep -q "\"kjv-moe-$m.gguf\".*\"routing\":\"$p\"" "$out" \
		    2>/dev/null; then
			continue
		fi
		nice -n 10 "$EPMOE" perplexity -m "models/kjv-moe-$m.gguf" \
		    -f models/kjv-test.txt -c 256 --routing "$p" --threads 2 \
		    --json | sed "s#models/kjv-moe#kjv-moe#" >> "$out"
	done
done
