#!/bin/sh
# `make bench`: measures the machine and the engine in the same run and
# prints the engine's speed as ratios of the machine's limits.
#   EPMOE_BENCH_MODELS  where the --preset small models live (default build/models)
#   EPMOE_BENCH_QUICK=1 shorter runs (for a smoke test)
set -eu
B=${EPMOE_BUILD:-build}
BIN=$B/bin/epmoe
MD=${EPMOE_BENCH_MODELS:-build/models}
mkdir -p "$MD"

# jget JSON KEY: the flat numeric value of KEY in a one-line JSON object
jget() { printf '%s\n' "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

for dt in f32 f16; do
	if [ ! -f "$MD/small-$dt.gguf" ]; then
		echo "bench: writing $MD/small-$dt.gguf (epmoe mkmodel --preset small --dtype $dt)"
		"$BIN" mkmodel --arch llama --preset small --dtype "$dt" --out "$MD/small-$dt.gguf"
	fi
done

P=512; G=64
if [ "${EPMOE_BENCH_QUICK:-0}" = 1 ]; then P=64; G=8; fi

echo "== machine ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
m=$("$BIN" bench machine)
bw=$(jget "$m" read_bw_gbs)
gf=$(jget "$m" sgemm_gflops)
echo "  OpenBLAS sgemm [512x1024]·[1024x2816]: $gf GFLOP/s    memory read: $bw GB/s"
echo
echo "== engine, local mode (--preset small: dim 1024, 8 layers, 8 experts top-2, ff 2816, vocab 32000)"
printf '%-6s %10s %12s %10s %14s %12s %12s %10s\n' type prefill "prefill" "decode" "weight bytes" "prefill/" "decode/" "peak RSS"
printf '%-6s %10s %12s %10s %14s %12s %12s %10s\n' "" "tok/s" "GFLOP/s" "tok/s" "GB/s" "sgemm" "bandwidth" "MiB"
for dt in f32 f16; do
	e=$("$BIN" bench engine --model "$MD/small-$dt.gguf" --prompt-tokens $P --gen $G)
	pf=$(jget "$e" prefill_gflops)
	wb=$(jget "$e" decode_weight_gbs)
	printf '%-6s %10s %12s %10s %14s %12s %12s %10s\n' "$dt" "$(jget "$e" prefill_tok_s)" "$pf" \
		"$(jget "$e" decode_tok_s)" "$wb" "$(ratio "$pf" "$gf")" "$(ratio "$wb" "$bw")" \
		"$(jget "$e" peak_rss_mb)"
done
echo "(prefill: one $P-token prompt; decode: batch 1, $G tokens, greedy; targets: prefill/sgemm >= 0.7, decode/bandwidth >= 0.7)"
