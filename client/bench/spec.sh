# Sourced by client/bench/run.sh (needs its serve, stop_router, jget,
# ratio, maxf, BIN, B, SRV_MODEL, SG, SN1, SN16): decode tok/s of the
# serving model in process (--local) and with 2 workers on loopback under
# --spec off, predict, cobatch and all, at 1 and 16 streams; every cell
# is the best of two rounds, the settings alternating within each round.
# Printed as ratios against the same run's --local and --spec off.
SP_AFF=$B/bench-spec-serve.aff
SP_TEXT=${RT_TEXT:-README.md}
if ! "$BIN" calibrate --model "$SRV_MODEL" --file "$SP_TEXT" --out "$SP_AFF" --ctx 128 \
	--max-tokens 1024 --workers 2 --json >/dev/null 2>&1; then
	echo "bench: epmoe calibrate failed on $SRV_MODEL; --spec all runs without --affinity"
	SP_AFF=
fi
sp_modes="local off predict cobatch all"
for m in $sp_modes; do eval "sp1_$m=0; sp16_$m=0; spx_$m="; done
for round in 1 2; do
	for m in $sp_modes; do
		case $m in
		local) serve "--local" "$B" ;;
		all) serve "--workers 2 --spec all${SP_AFF:+ --affinity $SP_AFF}" "$B" ;;
		*) serve "--workers 2 --spec $m" "$B" ;;
		esac
		r1=$("$BIN" bench server -s "$HURL" -c 1 -N $SN1 --max-tokens $SG --timeout 600 --json - -q)
		r16=$("$BIN" bench server -s "$HURL" -c 16 -N $SN16 --max-tokens $SG --timeout 600 --json - -q)
		t1=$(jget "$r1" output_throughput); t16=$(jget "$r16" output_throughput)
		eval "sp1_$m=\$(maxf \"\$sp1_$m\" \"\$t1\"); sp16_$m=\$(maxf \"\$sp16_$m\" \"\$t16\")"
		if [ $m = cobatch ] || [ $m = all ]; then
			eval "spx_$m=\$(curl -s \"\$HURL/v1/stats\" | tr -d ' \n' | sed -n 's/.*\"microbatch\":{\([^}]*\)}.*/\1/p')"
		fi
		stop_router
	done
done
echo
echo "== two micro-batches in flight (--spec cobatch): decode tok/s, $SRV_MODEL, $SG tokens per request"
printf '%-26s %10s %10s %10s %10s %10s %10s\n' "" "c = 1" "/ local" "/ off" "c = 16" "/ local" "/ off"
for m in $sp_modes; do
	eval "a=\$sp1_$m; b=\$sp16_$m"
	name="2 workers, --spec $m"
	[ $m = local ] && name="in process (--local)"
	printf '%-26s %10.1f %10s %10s %10.1f %10s %10s\n' "$name" "$a" "$(ratio "$a" "$sp1_local")" \
		"$(ratio "$a" "$sp1_off")" "$b" "$(ratio "$b" "$sp16_local")" "$(ratio "$b" "$sp16_off")"
done
echo "(target: distributed / local >= 0.9 at 1 and 16 streams with micro-batch overlap; a step of"
echo " one sequence is never split, so c = 1 measures only that cobatch costs nothing)"
for m in cobatch all; do
	eval "x=\$spx_$m"
	[ -n "$x" ] || continue
	echo "--spec $m, last run's split steps: $(jget "{$x}" split_steps) split / $(jget "{$x}" unsplit_steps) not;" \
		"tokens per half $(jget "{$x}" tokens_per_step_0) / $(jget "{$x}" tokens_per_step_1);" \
		"workers per half per layer $(jget "{$x}" workers_per_layer_0) / $(jget "{$x}" workers_per_layer_1)," \
		"both $(jget "{$x}" shared_workers_per_layer)"
done
