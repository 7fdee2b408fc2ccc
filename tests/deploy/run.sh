#!/bin/sh
# `make test-deploy`: the deployment tests, as root.  Installs what they
# need (iptables, Docker, docker-compose, debootstrap: DEB_DEPLOY_PKGS in
# the Makefile), then runs the offline Kubernetes check, the testbed tests
# (tests/testbed/*.sh: several hosts in network namespaces) and the Docker
# test (tests/deploy/docker.sh), each under a time limit, and prints a
# summary.  They are not part of `make test`: together they take a few
# minutes and need root.  Not root: every test says it skips.
B=${EPMOE_BUILD:-build}
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
export EPMOE_BIN="$top/$B/bin" EPMOE_BUILD="$B"
if [ "$(id -u)" -eq 0 ] && [ -n "${DEB_DEPLOY_PKGS:-}" ]; then
	missing=
	for p in $DEB_DEPLOY_PKGS; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
	done
	if [ -n "$missing" ]; then
		echo "test-deploy: installing$missing"
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -q --no-install-recommends $missing >/dev/null || exit 1
	fi
fi
t_start=$(date +%s)
failed= n=0
for t in tests/deploy/k8s.sh tests/testbed/*.sh tests/deploy/docker.sh; do
	n=$((n + 1))
	name=$(basename "$t" .sh)
	echo "== deploy: $name"
	t0=$(date +%s)
	if ! timeout 600 sh "$t"; then
		failed="$failed $name"
	fi
	echo "   ($(( $(date +%s) - t0 )) s)"
done
echo
echo "test-deploy: $n suites in $(( $(date +%s) - t_start )) s"
if [ -n "$failed" ]; then
	echo "FAILED:$failed"
	echo "$((n - $(echo $failed | wc -w))) passed, $(echo $failed | wc -w) failed"
	exit 1
fi
echo "$n passed, 0 failed"
