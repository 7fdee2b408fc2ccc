#!/bin/sh
# A cluster of hosts on one machine, for tests of what crosses a network.
#
#   deploy/testbed.sh [-n NAME] up N [--cpu Q] [--router-cpu Q] [--subnet A.B.C]
#                                    [--relay]
#   deploy/testbed.sh [-n NAME] down
#   deploy/testbed.sh [-n NAME] exec HOST CMD...     run CMD on HOST (its network
#                                                    and CPU quota)
#   deploy/testbed.sh [-n NAME] client CMD...        run CMD in h0's network, outside
#                                                    its CPU quota (load generators)
#   deploy/testbed.sh [-n NAME] kill HOST [SIGNAL]   signal every process of HOST
#                                                    (default KILL: a crash)
#   deploy/testbed.sh [-n NAME] stop|cont HOST       freeze / thaw HOST's processes
#   deploy/testbed.sh [-n NAME] partition|heal HOST  cut / restore HOST's link
#   deploy/testbed.sh [-n NAME] shape HOST [delay=MS] [jitter=MS] [loss=PCT]
#                                          [rate=RATE]   (rate: tc units, 1gbit)
#   deploy/testbed.sh [-n NAME] shape HOST clear
#   deploy/testbed.sh [-n NAME] ip HOST | hosts | status
#
# Hosts are h0 (the router's) and h1..hN (workers).  Each is a network
# namespace NAME-hI with one interface eth0 at A.B.C.(10+I)/24, wired by a
# veth pair to a bridge that lives in a namespace of its own (NAME-sw):
# the test subnet (default 10.77.0) exists only inside the testbed, the
# machine's own namespace gets no address, route or firewall rule, and two
# testbeds with different names never meet.  Each host has a CPU group of
# its own (cgroup v1 cpu.cfs_quota_us or v2 cpu.max) with quota Q cores
# (--cpu for workers, --router-cpu for h0; default: no limit), so a busy
# worker saturates its own budget as a separate machine would.
#
# Links (this kernel has no netem): bandwidth with tc tbf on both ends of
# the host's veth; loss with iptables -m statistic on the host's eth0 (each
# direction); delay and jitter with epmoe-relay (deploy/testbed/relay.c):
# the host's TCP connections, both the ones it opens and the ones it
# accepts, are redirected to a relay in its namespace that holds each chunk
# delay +- jitter ms per direction (so a request and its answer between a
# shaped host and an unshaped one pay 2 x delay).  Only TCP is delayed.
# A relay sees only the connections opened after it started: `up --relay`
# starts one (at delay 0) on every host, so that `shape` later changes the
# delay of the connections already open.
# partition takes the host's link down (its packets are lost, as with a cut
# cable); heal brings it back.
#
# Needs root, iproute2, iptables, and EPMOE_RELAY (default
# build/bin/epmoe-relay) for delay.  `up` undoes what it made if it fails;
# `down` kills every process of every host and removes everything (run it
# from a trap).  State lives in /run/epmoe-testbed/NAME.
set -eu

NAME=epmoe
while [ $# -gt 0 ]; do
	case $1 in
	-n) NAME=$2; shift 2 ;;
	*) break ;;
	esac
done
[ $# -ge 1 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
cmd=$1
shift
case $NAME in
*[!a-z0-9]* | "") echo "testbed: name must be [a-z0-9]+" >&2; exit 2 ;;
esac
[ ${#NAME} -le 8 ] || { echo "testbed: name at most 8 characters" >&2; exit 2; }
STATE=/run/epmoe-testbed/$NAME
SW=$NAME-sw
MARK=0x77
RELAY_PORT=7999
RELAY=${EPMOE_RELAY:-$(cd "$(dirname "$0")/.." && pwd)/build/bin/epmoe-relay}

die() {
	echo "testbed: $*" >&2
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, cgroups)"

# --- CPU groups
cg_root() {
	if [ -w /sys/fs/cgroup/cpu/cgroup.procs ] && [ -e /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
		echo "v1 /sys/fs/cgroup/cpu/epmoe-testbed-$NAME"
	elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
		echo "v2 /sys/fs/cgroup/epmoe-testbed-$NAME"
	else
		echo "none -"
	fi
}

cg_make() { # HOST QUOTA
	set -- "$1" "$2" $(cg_root)
	[ "$3" != none ] || { [ "$2" = - ] || die "no CPU controller: --cpu unsupported"; return 0; }
	if [ "$3" = v2 ]; then
		grep -qw cpu "$(dirname "$4")/cgroup.subtree_control" 2>/dev/null ||
			echo +cpu >"$(dirname "$4")/cgroup.subtree_control"
		mkdir -p "$4"
		grep -qw cpu "$4/cgroup.subtree_control" 2>/dev/null || echo +cpu >"$4/cgroup.subtree_control"
	fi
	mkdir -p "$4/$1"
	[ "$2" = - ] && return 0
	us=$(awk -v q="$2" 'BEGIN { printf "%d", q * 100000 }')
	[ "$us" -ge 1000 ] || die "CPU quota $2 too small"
	if [ "$3" = v1 ]; then
		echo 100000 >"$4/$1/cpu.cfs_period_us"
		echo "$us" >"$4/$1/cpu.cfs_quota_us"
	else
		echo "$us 100000" >"$4/$1/cpu.max"
	fi
}

cg_procs() { # HOST: its pids
	set -- "$1" $(cg_root)
	[ "$2" != none ] && [ -f "$3/$1/cgroup.procs" ] && cat "$3/$1/cgroup.procs" || true
}

cg_enter() { # HOST: moves this shell into the host's group
	set -- "$1" $(cg_root)
	[ "$2" = none ] || echo $$ >"$3/$1/cgroup.procs"
}

# --- hosts
hosts() {
	[ -f "$STATE/hosts" ] || die "testbed '$NAME' is not up"
	cat "$STATE/hosts"
}

host_ok() {
	hosts | grep -qx "$1" || die "no host '$1' in testbed '$NAME' (hosts: $(hosts | tr '\n' ' '))"
}

host_ip() {
	echo "$(cat "$STATE/subnet").$((10 + ${1#h}))"
}

ns() { echo "$NAME-$1"; }

signal_host() { # HOST SIGNAL
	for p in $(cg_procs "$1"); do
		kill -s "$2" "$p" 2>/dev/null || true
	done
	# processes of the namespace outside the group (if any)
	for p in $(ip netns pids "$(ns "$1")" 2>/dev/null); do
		[ "$p" = "$(cat "$STATE/relay.$1.pid" 2>/dev/null)" ] && continue
		kill -s "$2" "$p" 2>/dev/null || true
	done
}

# Back to a plain link; a running relay stays, at delay 0, so that the
# connections through it live on.
unshape() { # HOST
	n=$(ns "$1")
	[ ! -f "$STATE/relay.$1.pid" ] || relay_set "$1" 0 0
	ip netns exec "$n" iptables -F 2>/dev/null || true
	tc -n "$n" qdisc del dev eth0 root 2>/dev/null || true
	tc -n "$SW" qdisc del dev "p${1#h}" root 2>/dev/null || true
}

# Sets HOST's delay and jitter; starts its relay (and the redirect rules)
# when it has none.  A relay started now sees only connections opened from
# now on: `up --relay` starts one on every host so that reshaping affects
# the connections already open.
relay_set() { # HOST DELAY JITTER
	n=$(ns "$1")
	[ -x "$RELAY" ] || die "no relay at $RELAY (make build/bin/epmoe-relay, or set EPMOE_RELAY)"
	echo "$2 $3" >"$STATE/relay.$1.params"
	if [ -f "$STATE/relay.$1.pid" ] && kill -0 "$(cat "$STATE/relay.$1.pid")" 2>/dev/null; then
		kill -HUP "$(cat "$STATE/relay.$1.pid")"
		return 0
	fi
	ip netns exec "$n" "$RELAY" --port $RELAY_PORT --params "$STATE/relay.$1.params" \
		--mark $MARK --seed "${1#h}" >"$STATE/relay.$1.log" 2>&1 &
	echo $! >"$STATE/relay.$1.pid"
	_ri=0
	until grep -q "epmoe-relay: port" "$STATE/relay.$1.log"; do
		_ri=$((_ri + 1))
		[ $_ri -lt 50 ] && kill -0 "$(cat "$STATE/relay.$1.pid")" 2>/dev/null ||
			die "the relay of $1 did not start: $(cat "$STATE/relay.$1.log")"
		sleep 0.1
	done
	ip netns exec "$n" iptables -t nat -F
	# the connections this host opens to the others (not the relay's own,
	# which carry its mark), and the ones it accepts from them
	ip netns exec "$n" iptables -t nat -A OUTPUT -d "$(host_ip "$1")" -j RETURN
	ip netns exec "$n" iptables -t nat -A OUTPUT -p tcp -d "$(cat "$STATE/subnet").0/24" \
		-m mark ! --mark $MARK -j REDIRECT --to-ports $RELAY_PORT
	ip netns exec "$n" iptables -t nat -A PREROUTING -i eth0 -p tcp -j REDIRECT --to-ports $RELAY_PORT
	[ -n "${RELAY_QUIET:-}" ] || [ -z "$(ip netns exec "$n" ss -Htn state established 2>/dev/null | grep -v ":$RELAY_PORT")" ] ||
		echo "testbed: $1 has connections open already: the delay applies to new ones only (use up --relay)" >&2
}

teardown() {
	[ -d "$STATE" ] || return 0
	if [ -f "$STATE/hosts" ]; then
		for h in $(cat "$STATE/hosts"); do
			signal_host "$h" KILL
			[ -f "$STATE/relay.$h.pid" ] && kill -KILL "$(cat "$STATE/relay.$h.pid")" 2>/dev/null || true
		done
	fi
	k=0
	while [ $k -lt 20 ]; do
		left=$(ip netns list | awk '{ print $1 }' | grep "^$NAME-" || true)
		[ -n "$left" ] || break
		for n in $left; do
			for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
			ip netns delete "$n" 2>>"$STATE/down.err" || true
		done
		k=$((k + 1))
		sleep 0.1
	done
	[ -z "$left" ] || echo "testbed: could not delete $left: $(cat "$STATE/down.err")" >&2
	set -- $(cg_root)
	if [ "$1" != none ] && [ -d "$2" ]; then
		for d in "$2"/*/; do
			[ -d "$d" ] || continue
			i=0
			while [ -s "$d/cgroup.procs" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
			rmdir "$d" 2>/dev/null || true
		done
		rmdir "$2" 2>/dev/null || true
	fi
	rm -rf "$STATE"
}

case $cmd in
up)
	[ $# -ge 1 ] || die "up N: the number of worker hosts"
	N=$1
	shift
	case $N in *[!0-9]* | "") die "up N: N must be a number" ;; esac
	[ "$N" -ge 1 ] && [ "$N" -le 64 ] || die "up N: 1..64 worker hosts"
	cpu=- rcpu=- subnet=${EPMOE_TESTBED_SUBNET:-10.77.0} relay=
	while [ $# -gt 0 ]; do
		case $1 in
		--cpu) cpu=$2; shift 2 ;;
		--router-cpu) rcpu=$2; shift 2 ;;
		--subnet) subnet=$2; shift 2 ;;
		--relay) relay=1; shift ;;
		*) die "up: unknown option $1" ;;
		esac
	done
	[ ! -d "$STATE" ] || die "testbed '$NAME' is already up (deploy/testbed.sh -n $NAME down)"
	command -v iptables >/dev/null || die "iptables is not installed"
	mkdir -p "$STATE"
	trap 'teardown; exit 1' EXIT
	echo "$subnet" >"$STATE/subnet"
	ip netns add "$SW"
	ip -n "$SW" link set lo up
	ip -n "$SW" link add br0 type bridge
	ip -n "$SW" link set br0 up
	: >"$STATE/hosts"
	i=0
	while [ $i -le "$N" ]; do
		h=h$i
		n=$(ns $h)
		ip netns add "$n"
		echo $h >>"$STATE/hosts"
		ip -n "$SW" link add "p$i" type veth peer name eth0 netns "$n"
		ip -n "$SW" link set "p$i" master br0 up
		ip -n "$n" link set lo up
		ip -n "$n" addr add "$(host_ip $h)/24" dev eth0
		ip -n "$n" link set eth0 up
		if [ $i -eq 0 ]; then cg_make $h "$rcpu"; else cg_make $h "$cpu"; fi
		[ -z "$relay" ] || RELAY_QUIET=1 relay_set $h 0 0
		i=$((i + 1))
	done
	trap - EXIT
	echo "testbed $NAME: router host h0 at $(host_ip h0), worker hosts h1..h$N at $(host_ip h1)..$(host_ip h$N)$([ "$cpu" = - ] || echo ", $cpu CPU each")"
	;;
down)
	teardown
	;;
exec)
	[ $# -ge 2 ] || die "exec HOST CMD..."
	host_ok "$1"
	h=$1
	shift
	cg_enter "$h"
	exec ip netns exec "$(ns "$h")" "$@"
	;;
client)
	[ $# -ge 1 ] || die "client CMD..."
	host_ok h0
	exec ip netns exec "$(ns h0)" "$@"
	;;
kill)
	host_ok "$1"
	signal_host "$1" "${2:-KILL}"
	;;
stop | cont)
	host_ok "$1"
	signal_host "$1" "$(echo "$cmd" | tr a-z A-Z)"
	;;
partition)
	host_ok "$1"
	ip -n "$SW" link set "p${1#h}" down
	;;
heal)
	host_ok "$1"
	ip -n "$SW" link set "p${1#h}" up
	;;
shape)
	[ $# -ge 2 ] || die "shape HOST delay=MS jitter=MS loss=PCT rate=RATE | clear"
	host_ok "$1"
	h=$1
	n=$(ns "$h")
	shift
	delay= jitter=0 loss= rate=
	for kv in "$@"; do
		case $kv in
		clear) unshape "$h"; exit 0 ;;
		delay=*) delay=${kv#delay=} ;;
		jitter=*) jitter=${kv#jitter=} ;;
		loss=*) loss=${kv#loss=} ;;
		rate=*) rate=${kv#rate=} ;;
		*) die "shape: unknown setting '$kv'" ;;
		esac
	done
	if [ -n "$rate" ]; then
		burst=$(awk -v r="$rate" 'BEGIN {
			n = r + 0; u = tolower(r); sub(/^[0-9.]+/, "", u)
			m = (u ~ /^g/) ? 1e9 : (u ~ /^m/) ? 1e6 : (u ~ /^k/) ? 1e3 : 1
			b = n * m / 8 / 100; if (b < 16384) b = 16384; printf "%d", b }')
		for dev in "$n eth0" "$SW p${h#h}"; do
			set -- $dev
			tc -n "$1" qdisc replace dev "$2" root tbf rate "$rate" burst "$burst" latency 100ms
		done
	fi
	if [ -n "$loss" ]; then
		p=$(awk -v l="$loss" 'BEGIN { if (l < 0 || l > 100) exit 1; printf "%.6f", l / 100 }') ||
			die "loss is a percentage"
		ip netns exec "$n" iptables -F
		ip netns exec "$n" iptables -A INPUT -i eth0 -m statistic --mode random --probability "$p" -j DROP
		ip netns exec "$n" iptables -A OUTPUT -o eth0 -m statistic --mode random --probability "$p" -j DROP
	fi
	if [ -n "$delay" ]; then
		[ -x "$RELAY" ] || die "no relay at $RELAY (make build/bin/epmoe-relay, or set EPMOE_RELAY)"
		relay_set "$h" "$delay" "$jitter"
	fi
	;;
ip)
	host_ok "$1"
	host_ip "$1"
	;;
hosts)
	hosts
	;;
status)
	[ -d "$STATE" ] || { echo "testbed $NAME: down"; exit 0; }
	for h in $(hosts); do
		n=$(ns "$h")
		link=$(ip -n "$SW" -o link show "p${h#h}" | grep -q 'state UP\|,UP' && echo up || echo down)
		printf "%s %s link %s, %s processes%s\n" "$h" "$(host_ip "$h")" "$link" \
			"$(cg_procs "$h" | wc -l)" \
			"$([ -f "$STATE/relay.$h.params" ] && echo ", delay/jitter $(cat "$STATE/relay.$h.params") ms")"
	done
	;;
*)
	die "unknown command '$cmd'"
	;;
esac
