#!/bin/sh
# The prompts of the prefix-cache loads, shared by `make bench`
# (client/bench/prefix.sh) and deploy/loadtest/prefix.sh.  Sourced; needs
# EPMOE (the epmoe binary) and PX_MODEL (the served model, for its
# tokenizer).  Deterministic: the same files on every machine.
#   px_data DIR N TURNS writes
#     DIR/shared.txt   N prompts: one ~256-token system prompt (SYS) + a
#                      ~30-token question each
#     DIR/chat-T.txt   T = 1..TURNS: 16 conversations at turn T, each with
#                      its history (every earlier turn's 30-word question
#                      and a 40-word answer) and a new question
#   and sets PX_TPW (tokens per word of the word list).

# words N SEED: N pseudo-random words (deterministic)
words() {
	awk -v n="$1" -v seed="$2" 'BEGIN {
		split("river stone light garden window forest market engine answer moment " \
		      "music table north summer letter mirror planet bridge castle signal " \
		      "winter ocean paper silver travel little yellow orange purple animal", w, " ")
		s = seed * 7919 + 17
		for (i = 0; i < n; i++) { s = (s * 1103515245 + 12345) % 2147483648; printf "%s%s", (i ? " " : ""), w[1 + int(s / 65536) % 30] }
	}'
}
# ntok TEXT: tokens of TEXT under the served model
ntok() { "$EPMOE" tokenize --model "$PX_MODEL" "$1" | tr ',' '\n' | grep -c .; }

px_data() {
	PX_TPW=$(awk -v t="$(ntok "$(words 200 1)")" 'BEGIN { printf "%.3f", t / 200 }')
	SYS="You are a careful assistant. $(words "$(awk -v r="$PX_TPW" 'BEGIN { printf "%d", 256 / r }')" 1)"
	: >"$1/shared.txt"
	_i=0
	while [ $_i -lt "$2" ]; do
		printf '%s Question %d: %s?\n' "$SYS" "$_i" "$(words 18 $((100 + _i)))" >>"$1/shared.txt"
		_i=$((_i + 1))
	done
	_t=1
	while [ $_t -le "$3" ]; do
		: >"$1/chat-$_t.txt"
		_c=0
		while [ $_c -lt 16 ]; do
			_h="System: you answer briefly. Conversation $_c."
			_k=1
			while [ $_k -lt $_t ]; do
				_h="$_h User: $(words 30 $((1000 + _c * 10 + _k))) Assistant: $(words 40 $((5000 + _c * 10 + _k)))"
				_k=$((_k + 1))
			done
			printf '%s User: %s Assistant:\n' "$_h" "$(words 30 $((1000 + _c * 10 + _t)))" >>"$1/chat-$_t.txt"
			_c=$((_c + 1))
		done
		_t=$((_t + 1))
	done
}
