#!/bin/sh
# Draws the load-test plots from `epmoe bench server` results (written with
# --save-detailed; --stats-interval for the per-worker plot) with gnuplot:
#
#   throughput_latency.png  TTFT and TPOT (median, p99) against output
#                           throughput, one curve per setting
#   ttft_cdf.png, itl_cdf.png  latency CDFs, one line per setting and point
#   goodput_rate.png        goodput and throughput at each load point
#   worker_load.png         per-worker expert tokens/s over the sweep,
#                           from the /v1/stats samples
#
#   deploy/loadtest/plot.sh DIR
#
# DIR holds NAME.json per setting and, optionally, settings.txt (the names
# in the order to draw; default: every *.json).  Writes DIR/data/*.dat,
# DIR/summary.md (a table per setting) and the PNGs into DIR.  Needs
# gnuplot and jq (`make deps`).
set -eu
dir=${1:?usage: plot.sh DIR}
[ -d "$dir" ] || { echo "plot.sh: no directory $dir" >&2; exit 1; }
for t in gnuplot jq; do
	command -v $t >/dev/null 2>&1 || {
		echo "plot.sh: $t is missing (make deps installs gnuplot and jq)" >&2
		exit 1
	}
done
data=$dir/data
mkdir -p "$data"
if [ -f "$dir/settings.txt" ]; then
	names=$(cat "$dir/settings.txt")
else
	names=$(cd "$dir" && ls -- *.json 2>/dev/null | sed 's/\.json$//')
fi
[ -n "$names" ] || { echo "plot.sh: no results (*.json) in $dir" >&2; exit 1; }
W=720; H=420
TERM_="set terminal pngcairo size $W,$H font 'DejaVu Sans,9' noenhanced"
COLORS="#2e6fd8 #e0702b #2a9d57 #c2417a #7a53c9 #b59a16 #1aa3a8 #8a5a44"
color() { echo "$COLORS" | tr ' ' '\n' | sed -n "$(( ($1 % 8) + 1 ))p"; }

# ---- data files ----
# per setting: one row per point (NaN where a value is missing)
for n in $names; do
	f=$dir/$n.json
	[ -f "$f" ] || { echo "plot.sh: no $f" >&2; exit 1; }
	jq -r '.points | to_entries[] | .key as $k | .value |
		[ $k,
		  (if .mode == "closed" then "c=\(.max_concurrency)" elif .request_rate == "inf" then "inf"
		   else "\(.request_rate)/s" end),
		  (.output_throughput // "NaN"), (.median_ttft_ms // "NaN"), (.p99_ttft_ms // "NaN"),
		  (.median_tpot_ms // "NaN"), (.p99_tpot_ms // "NaN"), (.request_throughput // "NaN"),
		  (.request_goodput // "NaN"), (.median_itl_ms // "NaN"), (.p99_itl_ms // "NaN"),
		  (.median_e2el_ms // "NaN"), (.failed // 0) ] | @tsv' "$f" >"$data/$n.points.tsv"
	np=$(wc -l <"$data/$n.points.tsv")
	k=0
	while [ $k -lt "$np" ]; do
		jq -r --argjson k $k '.points[$k] | (.ttfts // ([.runs[]?.ttfts] | add) // [])
			| map(select(. != null)) | sort | length as $n
			| to_entries[] | "\(.value * 1000) \((.key + 1) / $n)"' "$f" >"$data/$n.ttft.$k.dat"
		jq -r --argjson k $k '.points[$k] | (.itls // ([.runs[]?.itls] | add) // [])
			| add // [] | sort | length as $n
			| if $n > 4000 then [.[range(0; $n; ($n / 4000 | ceil))]] + [.[-1]] else . end
			| length as $m | to_entries[] | "\(.value * 1000) \((.key + 1) / $m)"' "$f" >"$data/$n.itl.$k.dat"
		k=$((k + 1))
	done
	# /v1/stats samples: point, t, worker index, id, tokens; then tokens/s
	# per worker with the points laid end to end (a 1 s gap between them)
	jq -r '.points | to_entries[] | .key as $k |
		(.value.server_stats // ([.value.runs[]?.server_stats // []] | add) // [])[] | .t as $t |
		.workers[]? | [$k, $t, (.index // 0), .id, .tokens] | @tsv' "$f" |
	awk -F '\t' -v out="$data/$n.worker" 'BEGIN { cur = -1; off = 0 }
		{ k = $1; t = $2; w = $3; id[w] = $4
		  if (k != cur) { if (NR > 1) off += last + 1; cur = k; delete pt; delete pv
		                  print k "\t" off > (out ".starts") }
		  last = t
		  if (w in pt && t > pt[w]) printf "%.2f %.2f\n", off + t, ($5 - pv[w]) / (t - pt[w]) >> (out "." w ".dat")
		  pt[w] = t; pv[w] = $5 }
		END { for (w in id) print w "\t" id[w] > (out ".ids") }'
done

# ---- summary.md ----
{
	for n in $names; do
		echo "### $n"
		echo
		echo "| load | req/s | goodput req/s | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | ITL p99 ms | E2E p50 ms | failed |"
		echo "|---|---|---|---|---|---|---|---|---|---|"
		awk -F '\t' 'function f(v, d) { return v == "NaN" ? "-" : sprintf("%." d "f", v) }
			{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n",
			$2, f($8, 2), f($9, 2), f($3, 1), f($4, 1), f($5, 1), f($6, 2), f($11, 2), f($12, 0), $13 }' \
			"$data/$n.points.tsv"
		echo
	done
} >"$dir/summary.md"

# ---- plots ----
gp=$data/plots.gp
{
	echo "$TERM_"
	echo "set grid lc rgb '#dddddd'"
	echo "set key outside right top"
	echo "set datafile separator whitespace"
	echo "set datafile missing 'NaN'"

	# throughput vs latency: two panels
	echo "set terminal pngcairo size $((W * 5 / 4)),$H font 'DejaVu Sans,9' noenhanced"
	echo "set output '$dir/throughput_latency.png'"
	echo "set multiplot layout 1,2 title 'latency against output throughput (labels: load points)'"
	for panel in ttft tpot; do
		if [ $panel = ttft ]; then c50=4; c99=5; yl="TTFT (ms)"; else c50=6; c99=7; yl="TPOT (ms)"; fi
		echo "set xlabel 'output tokens/s'; set ylabel '$yl (log scale)'; set key inside top left"
		echo "set logscale y"
		printf 'plot '
		i=0; sep=""
		for n in $names; do
			c=$(color $i)
			printf "%s'%s' using 3:%d with linespoints lw 2 pt 7 lc rgb '%s' title '%s p50', " "$sep" \
				"$data/$n.points.tsv" $c50 "$c" "$n"
			printf "'%s' using 3:%d with linespoints lw 1 dt 2 pt 6 lc rgb '%s' title '%s p99', " \
				"$data/$n.points.tsv" $c99 "$c" "$n"
			printf "'%s' using 3:%d:2 with labels offset 0,0.8 font ',7' tc rgb '%s' notitle" \
				"$data/$n.points.tsv" $c50 "$c"
			sep=", "
			i=$((i + 1))
		done
		echo
	done
	echo "unset multiplot"
	echo "unset logscale y"
	echo "$TERM_"
	echo "set key outside right top"

	# CDFs
	for m in ttft itl; do
		M=$(echo $m | tr a-z A-Z)
		echo "set output '$dir/${m}_cdf.png'"
		echo "set title '$M CDF per setting and load point'"
		echo "set xlabel '$M (ms)'; set ylabel 'fraction of $( [ $m = ttft ] && echo requests || echo gaps )'"
		echo "set yrange [0:1]; set logscale x"
		printf 'plot '
		i=0; sep=""
		for n in $names; do
			c=$(color $i); k=0
			while IFS="$(printf '\t')" read -r idx tag rest; do
				f=$data/$n.$m.$idx.dat
				if [ -s "$f" ]; then
					printf "%s'%s' using 1:2 with lines lw 2 dt %d lc rgb '%s' title '%s %s'" "$sep" "$f" \
						$((k % 5 + 1)) "$c" "$n" "$tag"
					sep=", "
				fi
				k=$((k + 1))
			done <"$data/$n.points.tsv"
			i=$((i + 1))
		done
		[ -n "$sep" ] || printf "NaN notitle"
		echo
		echo "unset logscale x; set yrange [*:*]"
	done

	# goodput and throughput per load point
	echo "set output '$dir/goodput_rate.png'"
	echo "set title 'goodput (solid) and request throughput (dashed) per load point'"
	echo "set xlabel 'offered load'; set ylabel 'requests/s'; set yrange [0:*]"
	echo "set xrange [-0.5:*]"
	printf 'plot '
	i=0; sep=""
	for n in $names; do
		c=$(color $i)
		printf "%s'%s' using 1:9:xtic(2) with linespoints lw 2 pt 7 lc rgb '%s' title '%s goodput', " "$sep" \
			"$data/$n.points.tsv" "$c" "$n"
		printf "'%s' using 1:8 with linespoints lw 1 dt 2 pt 6 lc rgb '%s' title '%s throughput'" \
			"$data/$n.points.tsv" "$c" "$n"
		sep=", "
		i=$((i + 1))
	done
	echo
	echo "set xrange [*:*]; set yrange [*:*]"

	# per-worker load over time
	echo "set output '$dir/worker_load.png'"
	echo "set title 'per-worker expert tokens/s during the sweep (from /v1/stats)'"
	echo "set xlabel 'seconds (load points one after another)'; set ylabel 'expert tokens/s'"
	# the load points of the first setting with samples, as labelled lines
	for n in $names; do
		[ -f "$data/$n.worker.starts" ] || continue
		while IFS="$(printf '\t')" read -r k x; do
			tag=$(awk -F '\t' -v k="$k" '$1 == k { print $2 }' "$data/$n.points.tsv")
			echo "set arrow from $x, graph 0 to $x, graph 1 nohead lc rgb '#999999' dt 3"
			echo "set label '$tag' at $x, graph 0.97 offset 0.5,0 font ',8' tc rgb '#666666'"
		done <"$data/$n.worker.starts"
		break
	done
	# colour: the worker; dash: the setting
	printf 'plot '
	i=0; sep=""
	for n in $names; do
		if [ -f "$data/$n.worker.ids" ]; then
			i=$((i + 1))
			for w in $(cut -f1 "$data/$n.worker.ids" | sort -n); do
				id=$(awk -F '\t' -v w="$w" '$1 == w { print $2 }' "$data/$n.worker.ids")
				f=$data/$n.worker.$w.dat
				if [ -s "$f" ]; then
					printf "%s'%s' using 1:2 with lines lw 1.2 dt %d lc rgb '%s' title '%s %s'" "$sep" "$f" \
						$(((i - 1) % 5 + 1)) "$(color "$w")" "$n" "$id"
					sep=", "
				fi
			done
		fi
	done
	[ -n "$sep" ] || printf "0 with lines title 'no worker samples (local mode, or no --stats-interval)'"
	echo
} >"$gp"
gnuplot "$gp"
echo "plot.sh: wrote $(cd "$dir" && ls -- *.png | tr '\n' ' ')and summary.md in $dir"
