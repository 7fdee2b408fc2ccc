#!/bin/sh
# The container deployment for real (`make test-deploy`, as root): a Docker
# engine (started here with --storage-driver vfs when none answers, and
# stopped again), the image built from deploy/Dockerfile on a Debian 12
# base (debian:bookworm-slim when a registry answers, else one made with
# debootstrap, cached in $EPMOE_DEPLOY_CACHE), then deploy/docker-compose.yml:
# up and healthy, completions and a stream through the published port,
# per-worker latency in /metrics for every worker container, a worker
# container killed under load and the service back, workers scaled 2 -> 3,
# the deployment with mutual TLS (docker-compose.tls.yml) serving while a
# plain-TCP worker container cannot join, and the same file as a stack on a one-node swarm serving a request.
# Everything it created is removed at the end, also on failure; the image
# and the base stay cached for the next run (rebuilt when a source changes).
#
# Prints each check and its figures; the last line is "N passed, N failed".
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
TEST_NAME=docker
TMPD=$(mktemp -d /tmp/epmoe-docker.XXXXXX) || exit 1
. "$top/tests/deploy/load.inc"
CACHE=${EPMOE_DEPLOY_CACHE:-/var/cache/epmoe-deploy}
IMAGE=${EPMOE_TEST_IMAGE:-epmoe:test}
BASE_IMAGE=epmoe-base:bookworm
PROJECT=epmoetest
STACK=epmoetest
passed=0 failed=0
DOCKERD_PID= SWARM_INIT= COMPOSE_UP= STACK_UP=

# The engine's own client: the Debian docker.io client matches the Debian
# engine this test installs (a newer client elsewhere on PATH may not).
[ -x /usr/bin/docker ] && PATH=/usr/bin:$PATH
export PATH

say() { echo "docker: $*"; }
T_START=$(date +%s)
ok() { passed=$((passed + 1)); say "ok [$(( $(date +%s) - T_START )) s]: $*"; }
fail() {
	failed=$((failed + 1))
	say "FAIL: $*"
	exit 1
}

teardown() {
	load_stop 2>/dev/null
	if [ -n "$STACK_UP" ]; then
		docker stack rm "$STACK" >/dev/null 2>&1
		i=0
		while [ -n "$(docker ps -aq -f label=com.docker.stack.namespace=$STACK)" ] && [ $i -lt 60 ]; do
			sleep 0.5; i=$((i + 1))
		done
		# its networks go a moment after its containers
		i=0
		while docker network ls -q -f label=com.docker.stack.namespace=$STACK | grep -q . && [ $i -lt 40 ]; do
			sleep 0.5; i=$((i + 1))
		done
	fi
	[ -n "$SWARM_INIT" ] && docker swarm leave --force >/dev/null 2>&1
	if [ -n "$COMPOSE_UP" ]; then
		docker rm -f "${PROJECT}_rogue" >/dev/null 2>&1
		(cd "$top/deploy" && docker-compose -p "$PROJECT" down -t 5 -v --remove-orphans >/dev/null 2>&1)
	fi
	if [ -n "$DOCKERD_PID" ]; then
		kill -TERM "$DOCKERD_PID" 2>/dev/null
		i=0
		while kill -0 "$DOCKERD_PID" 2>/dev/null && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
		kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
		# leave the host's network as it was before that dockerd
		for l in docker0 docker_gwbridge; do
			grep -qx "$l" "$TMPD/links.before" || ip link del "$l" 2>/dev/null
		done
		iptables-restore <"$TMPD/iptables.before" 2>/dev/null
		iptables -t nat -S | grep -q DOCKER && { iptables -t nat -F; iptables -t nat -X; } 2>/dev/null
		sysctl -qw net.ipv4.ip_forward="$(cat "$TMPD/ip_forward.before")" 2>/dev/null
		say "stopped the dockerd this test started (and restored the firewall and links it changed)"
	fi
	rm -rf "$TMPD"
	echo "$passed passed, $failed failed"
}
trap teardown EXIT
trap 'exit 130' INT TERM

if [ "$(id -u)" -ne 0 ]; then
	say "skipped: needs root (a Docker engine, debootstrap)"
	exit 0
fi

# --- packages and engine
missing=
for p in docker.io docker-compose debootstrap iptables curl; do
	dpkg-query -W -f='${Status}' $p 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
	say "installing:$missing"
	apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends $missing >"$TMPD/apt.log" 2>&1 ||
		{ tail -20 "$TMPD/apt.log"; fail "apt-get install$missing"; }
fi
if ! docker info >/dev/null 2>&1; then
	say "no Docker engine answers: starting dockerd --storage-driver vfs"
	ip -o link | awk -F': ' '{ print $2 }' >"$TMPD/links.before"
	iptables-save >"$TMPD/iptables.before"
	sysctl -n net.ipv4.ip_forward >"$TMPD/ip_forward.before"
	dockerd --storage-driver vfs -p "$TMPD/dockerd.pid" >"$TMPD/dockerd.log" 2>&1 &
	DOCKERD_PID=$!
	i=0
	until docker info >/dev/null 2>&1; do
		i=$((i + 1))
		if [ $i -gt 150 ] || ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
			tail -20 "$TMPD/dockerd.log"
			fail "dockerd did not answer within 30 s"
		fi
		sleep 0.2
	done
fi
ok "engine: $(docker version -f '{{.Server.Version}}') ($(docker info -f '{{.Driver}}') storage)"

# --- base image: the registry's debian:bookworm-slim, else debootstrap
BASE=
if docker image inspect debian:bookworm-slim >/dev/null 2>&1 ||
	timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
	BASE=debian:bookworm-slim
elif docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
	BASE=$BASE_IMAGE
else
	mkdir -p "$CACHE"
	if [ ! -s "$CACHE/bookworm-minbase.tar" ]; then
		say "no registry: building a Debian 12 base with debootstrap (about 2 minutes, cached in $CACHE)"
		t0=$(now_ms)
		rm -rf "$CACHE/rootfs"
		debootstrap --variant=minbase bookworm "$CACHE/rootfs" http://deb.debian.org/debian \
			>"$TMPD/debootstrap.log" 2>&1 || { tail -20 "$TMPD/debootstrap.log"; fail "debootstrap"; }
		rm -rf "$CACHE/rootfs/var/lib/apt/lists/"* "$CACHE/rootfs/var/cache/apt/archives/"*.deb
		tar -C "$CACHE/rootfs" -cf "$CACHE/bookworm-minbase.tar.tmp" . &&
			mv "$CACHE/bookworm-minbase.tar.tmp" "$CACHE/bookworm-minbase.tar" || fail "tar of the base"
		rm -rf "$CACHE/rootfs"
		say "debootstrap took $(( ($(now_ms) - t0) / 1000 )) s"
	fi
	docker import "$CACHE/bookworm-minbase.tar" "$BASE_IMAGE" >/dev/null || fail "docker import"
	BASE=$BASE_IMAGE
fi
ok "base image $BASE"

# --- the image; rebuilt only when what it is built from changed
src_hash=$(cd "$top" && tar -c --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
	Makefile proto common server worker client deploy/Dockerfile .dockerignore | sha256sum | cut -c1-16)
have=$(docker image inspect -f '{{index .Config.Labels "org.epmoe.source"}}' "$IMAGE" 2>/dev/null)
if [ "$have" = "$src_hash" ] && [ -z "${EPMOE_REBUILD:-}" ]; then
	ok "image $IMAGE is up to date (sources $src_hash): not rebuilt"
else
	t0=$(now_ms)
	DOCKER_BUILDKIT=1 docker build --progress=plain -f "$top/deploy/Dockerfile" --build-arg BASE="$BASE" \
		--label org.epmoe.source="$src_hash" -t "$IMAGE" "$top" >"$TMPD/build.log" 2>&1 ||
		{ tail -30 "$TMPD/build.log"; fail "docker build"; }
	ok "image $IMAGE built in $(( ($(now_ms) - t0) / 1000 )) s"
	# the previous image and old build cache (vfs keeps full copies)
	docker image prune -f >/dev/null 2>&1
	DOCKER_BUILDKIT=1 docker builder prune -f --keep-storage 2gb >/dev/null 2>&1
fi
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "image size $((size / 1048576)) MiB (base $(( $(docker image inspect -f '{{.Size}}' "$BASE") / 1048576 )) MiB)"
[ "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")" = epmoe ] || fail "the image does not run as a non-root user"
# one container for the three checks (each container is a full copy with vfs)
docker run --rm "$IMAGE" sh -c 'epmoe-router --help | grep -q EPMOE_DRAIN_TIMEOUT_S || exit 11
	command -v curl >/dev/null && exit 12
	epmoe health --timeout 500 >/dev/null 2>&1 && exit 13
	exit 0'
case $? in
0) ;;
11) fail "epmoe-router --help in the image" ;;
12) fail "the image has curl" ;;
13) fail "epmoe health with no router answered 0" ;;
*) fail "docker run of the image" ;;
esac
ok "image runs as user epmoe, has no curl; epmoe health fails with no router"

# --- compose
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
HTTP_PORT=$(free_port) NNG_PORT=$(free_port)
export EPMOE_IMAGE="$IMAGE" EPMOE_MODELS="$top/models" EPMOE_HTTP_PORT="$HTTP_PORT" \
	EPMOE_NNG_PORT="$NNG_PORT" EPMOE_N_WORKERS=2
URL=http://127.0.0.1:$HTTP_PORT
# (docker-compose warns on stderr about the Swarm-only deploy keys)
compose() { (cd "$top/deploy" && docker-compose -p "$PROJECT" "$@" 2>>"$TMPD/compose.err"); }
compose down -t 2 -v --remove-orphans >/dev/null 2>&1
COMPOSE_UP=1
t0=$(now_ms)
compose up -d --no-build >"$TMPD/up.log" 2>&1 || { cat "$TMPD/up.log"; tail -5 "$TMPD/compose.err"; fail "docker-compose up"; }
all_healthy() {
	n=0
	for c in $(compose ps -q); do
		[ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ] || return 1
		n=$((n + 1))
	done
	[ $n -ge "$1" ]
}
i=0
until all_healthy 3; do
	i=$((i + 1))
	[ $i -lt 600 ] || { compose logs --tail 20; fail "containers not healthy within 60 s"; }
	sleep 0.1
done
t_healthy=$(( $(now_ms) - t0 ))
wait_http "$URL/health" 200 60 >/dev/null
t_ready=$(( $(now_ms) - t0 ))
ok "compose up: 2 workers + router healthy in $((t_healthy / 1000)).$(( t_healthy % 1000 / 100 )) s, /health 200 in $((t_ready / 1000)).$(( t_ready % 1000 / 100 )) s"

for c in $(compose ps -q); do
	docker inspect -f '{{range .Mounts}}{{.Destination}}:{{.RW}} {{end}}' "$c" | grep -q '/models:false' ||
		fail "container $c: the model is not mounted read-only"
	[ "$(docker inspect -f '{{.HostConfig.NanoCpus}}' "$c")" -gt 0 ] || fail "container $c: no CPU limit"
	[ "$(docker inspect -f '{{.HostConfig.Memory}}' "$c")" -gt 0 ] || fail "container $c: no memory limit"
done
r=$(docker inspect -f '{{.HostConfig.RestartPolicy.Name}}' "$(compose ps -q router)")
[ "$r" = unless-stopped ] || fail "router restart policy $r"
ok "read-only model, CPU and memory limits on every container, restart unless-stopped"

body=$(curl -sf -m 60 "$URL/v1/completions" -H 'Content-Type: application/json' \
	-d '{"prompt": "In the beginning God", "max_tokens": 12}') || fail "completion"
echo "$body" | grep -q '"finish_reason":"length"' && echo "$body" | grep -q '"completion_tokens":12' ||
	fail "completion answer: $body"
curl -sfN -m 60 "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
	-d '{"messages": [{"role": "user", "content": "Who made the heaven?"}], "max_tokens": 10, "stream": true}' \
	>"$TMPD/stream" || fail "streaming request"
[ "$(grep -c '^data: {' "$TMPD/stream")" -ge 10 ] && grep -q '^data: \[DONE\]' "$TMPD/stream" ||
	fail "stream: $(head -c 300 "$TMPD/stream")"
if [ -x "$top/${EPMOE_BUILD:-build}/bin/epmoe" ]; then
	"$top/${EPMOE_BUILD:-build}/bin/epmoe" generate --server "tcp://127.0.0.1:$NNG_PORT" -n 6 -q --no-stream \
		"And the earth" >"$TMPD/nng" 2>&1 && [ -s "$TMPD/nng" ] || fail "NNG completion: $(cat "$TMPD/nng")"
	ok "completion, SSE stream (chat) and an NNG completion through the published ports"
else
	ok "completion and SSE stream (chat) through the published port"
fi

# per-worker latency for every worker container
check_metrics() {
	want=$1
	curl -sf -m 5 "$URL/metrics" >"$TMPD/metrics" || fail "/metrics"
	k=0
	for c in $(compose ps -q worker); do
		h=$(docker inspect -f '{{.Config.Hostname}}' "$c")
		line=$(grep -E "^epmoe_worker_up\\{worker=\"[0-9]+\",id=\"$h-1\",node=\"$h\"\\} 1\$" "$TMPD/metrics") ||
			fail "/metrics has no live epmoe_worker_up for worker container $h: $(grep '^epmoe_worker_up' "$TMPD/metrics" | tr '\n' ' ')"
		w=$(echo "$line" | sed 's/.*worker="\([0-9]*\)".*/\1/')
		cnt=$(awk -v w="$w" '$1 == "epmoe_worker_request_seconds_count{worker=\"" w "\"}" { print $2 }' "$TMPD/metrics")
		[ "${cnt:-0}" -gt 0 ] || fail "no request latency for worker $w (container $h)"
		sum=$(awk -v w="$w" '$1 == "epmoe_worker_request_seconds_sum{worker=\"" w "\"}" { print $2 }' "$TMPD/metrics")
		say "  worker $w = container $h: $cnt expert batches, mean $(awk -v s="$sum" -v c="$cnt" 'BEGIN { printf "%.2f", 1000 * s / c }') ms"
		k=$((k + 1))
	done
	[ $k -eq "$want" ] || fail "$k worker containers, expected $want"
}
check_metrics 2
ok "/metrics: every worker container named in epmoe_worker_up, with its latency histogram"

# --- a worker container crashes under load (SIGKILL of its process)
load_start "$URL" 4 120 8
sleep 3
victim=$(compose ps -q worker | head -1)
vpid=$(docker inspect -f '{{.State.Pid}}' "$victim")
t_kill=$(now_ms)
kill -KILL "$vpid" || fail "cannot kill the worker's process"
i=0
until [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$URL/health")" = 503 ]; do
	i=$((i + 1))
	[ $i -lt 100 ] || break   # it may be back before we look
	sleep 0.05
done
t_rec=$(wait_http "$URL/health" 200 90)
t_back=$(now_ms)
sleep 3
load_stop
ok_after=$(load_count 200 "$t_back")
[ "$ok_after" -gt 0 ] || fail "no request succeeded after the worker came back"
say "  requests: $(load_count 200) ok, $(awk '$2 != 200' "$LOAD_LOG" | wc -l) failed (503 while the worker was down), $ok_after ok after recovery"
restarts=$(docker inspect -f '{{.RestartCount}}' "$victim")
[ "$restarts" -ge 1 ] || fail "the killed worker container was not restarted"
ok "worker container killed under load: restarted by Docker, service back (/health 200) $(( (t_back - t_kill) / 1000 )).$(( (t_back - t_kill) % 1000 / 100 )) s after the kill"

# --- scale the workers 2 -> 3 (the router restarts with the new placement)
export EPMOE_N_WORKERS=3
t0=$(now_ms)
compose up -d --no-build --scale worker=3 >"$TMPD/up3.log" 2>&1 || { cat "$TMPD/up3.log"; fail "scale to 3"; }
wait_http "$URL/health" 200 90 >/dev/null
t_scale=$(( $(now_ms) - t0 ))
curl -sf -m 5 "$URL/health" | grep -q '"n_workers":3' || fail "the router does not place over 3 workers"
for k in 1 2 3 4; do
	code=$(curl -s -o "$TMPD/scaled.json" -w '%{http_code}' -m 60 "$URL/v1/completions" \
		-H 'Content-Type: application/json' \
		-d '{"prompt": "And the LORD spake", "max_tokens": 8}')
	[ "$code" = 200 ] || { compose logs --tail 15 router; fail "completion $k after scaling: $code $(head -c 300 "$TMPD/scaled.json")"; }
done
check_metrics 3
ok "scaled to 3 workers: serving again $((t_scale / 1000)) s after 'up --scale worker=3', every worker takes batches"
compose down -t 10 -v >/dev/null 2>&1

# --- the same deployment with mutual TLS (docker-compose.tls.yml on top);
# a plain-TCP worker container on the backend network never registers
EPMOE_CERT_OWNER=10001 sh "$top/deploy/mkcerts.sh" "$TMPD/certs" router worker >/dev/null 2>&1 ||
	fail "deploy/mkcerts.sh"
export EPMOE_CERTS="$TMPD/certs" EPMOE_N_WORKERS=2 \
	COMPOSE_FILE=docker-compose.yml:docker-compose.override.yml:docker-compose.tls.yml
t0=$(now_ms)
compose up -d --no-build >"$TMPD/up-tls.log" 2>&1 || { cat "$TMPD/up-tls.log"; tail -5 "$TMPD/compose.err"; compose logs --tail 5; fail "docker-compose up with TLS"; }
wait_http "$URL/health" 200 90 >/dev/null || { compose logs --tail 10; fail "TLS deployment not ready"; }
t_tls=$(( $(now_ms) - t0 ))
docker run -d --name "${PROJECT}_rogue" --network "${PROJECT}_backend" -e EPMOE_ROUTER=tcp://router:5556 \
	-e EPMOE_MODEL=/models/kjv-moe-best.gguf -e EPMOE_LISTEN=tcp://0.0.0.0:7001 -e EPMOE_WORKER_ID=rogue \
	-v "$top/models:/models:ro" "$IMAGE" epmoe-worker >/dev/null 2>&1 || fail "docker run of a plain worker"
for k in 1 2 3; do
	curl -sf -m 60 "$URL/v1/completions" -H 'Content-Type: application/json' \
		-d '{"prompt": "And God said", "max_tokens": 8}' | grep -q '"completion_tokens":8' ||
		fail "completion $k over the TLS deployment"
done
sleep 2
for c in $(compose ps -q worker); do
	docker logs "$c" 2>&1 | grep -q 'registered with router tls+tcp://router:5556' ||
		fail "worker container $c did not register over TLS: $(docker logs --tail 3 "$c" 2>&1)"
done
# (a worker the router heard would be registered or refused: all places are taken)
docker logs "${PROJECT}_rogue" 2>&1 | grep -q 'registered with router\|refused this worker' &&
	fail "the router answered a plain-TCP worker: $(docker logs --tail 2 "${PROJECT}_rogue" 2>&1)"
curl -sf -m 5 "$URL/metrics" | grep -q 'id="rogue' && fail "the plain-TCP worker is in /metrics"
docker rm -f "${PROJECT}_rogue" >/dev/null 2>&1
ok "compose with TLS (docker-compose.tls.yml): serving $((t_tls / 1000)).$(( t_tls % 1000 / 100 )) s after up, workers registered over tls+tcp://, the router never answered a plain-TCP worker container"
compose down -t 10 -v >/dev/null 2>&1
unset COMPOSE_FILE EPMOE_CERTS
COMPOSE_UP=

# --- the same file as a stack on a one-node swarm
if [ "$(docker info -f '{{.Swarm.LocalNodeState}}')" != active ]; then
	docker swarm init --advertise-addr 127.0.0.1 >/dev/null 2>&1 || fail "docker swarm init"
	SWARM_INIT=1
fi
node=$(docker info -f '{{.Swarm.NodeID}}')
docker node update --label-add epmoe.router=true --label-add epmoe.worker=true "$node" >/dev/null ||
	fail "node labels"
export EPMOE_N_WORKERS=2 EPMOE_HTTP_PORT="$(free_port)"
URL=http://127.0.0.1:$EPMOE_HTTP_PORT
STACK_UP=1
t0=$(now_ms)
docker stack deploy --resolve-image never -c "$top/deploy/docker-compose.yml" "$STACK" >"$TMPD/stack.log" 2>&1 ||
	{ cat "$TMPD/stack.log"; fail "docker stack deploy"; }
wait_http "$URL/health" 200 120 >/dev/null
t_stack=$(( $(now_ms) - t0 ))
body=$(curl -sf -m 60 "$URL/v1/completions" -H 'Content-Type: application/json' \
	-d '{"prompt": "In the beginning", "max_tokens": 6}') || fail "stack completion"
echo "$body" | grep -q '"completion_tokens":6' || fail "stack completion: $body"
n_run=$(docker service ls -f label=com.docker.stack.namespace=$STACK --format '{{.Name}} {{.Replicas}}' | tr '\n' ' ')
ok "stack on a one-node swarm: ready in $((t_stack / 1000)) s, served a completion ($n_run)"
