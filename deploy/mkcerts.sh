#!/bin/sh
# Makes the certificates of an epmoe cluster's mutual TLS with openssl:
# a private CA (DIR/ca.pem, DIR/ca.key) and, signed by it, one certificate
# and key per name (DIR/NAME.pem, DIR/NAME.key; default names: router
# worker).  Every certificate serves both TLS roles (the router listens for
# workers' control connections and dials their data sockets), so one set
# per process is all it needs:
#
#   deploy/mkcerts.sh certs router worker-0 worker-1
#   epmoe-router ... --tls-cert certs/router.pem --tls-key certs/router.key \
#       --tls-ca certs/ca.pem --control tls+tcp://0.0.0.0:5556
#   epmoe-worker ... --tls-cert certs/worker-0.pem --tls-key certs/worker-0.key \
#       --tls-ca certs/ca.pem --router tls+tcp://ROUTER:5556 \
#       --listen tls+tcp://0.0.0.0:7001
#
# An existing DIR/ca.pem + ca.key is reused (to add a worker later);
# existing certificates are kept.  Keys are ECDSA P-256 (fast handshakes),
# mode 600.  Subject alternative names: the name itself, localhost,
# 127.0.0.1 and whatever EPMOE_CERT_SANS adds ("DNS:a.example,IP:10.0.0.5").
# Peers trust any certificate the CA signed: keep ca.key off the hosts
# (only ca.pem is needed there).  EPMOE_CERT_DAYS sets the validity (825).
# EPMOE_CERT_OWNER=UID[:GID] hands the keys it makes to that user (the
# deployment image runs as uid 10001: EPMOE_CERT_OWNER=10001 for
# deploy/docker-compose.tls.yml).
set -eu
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
	sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
fi
command -v openssl >/dev/null 2>&1 || {
	echo "mkcerts: openssl is not installed (apt-get install openssl)" >&2
	exit 1
}
dir=$1
shift
[ $# -gt 0 ] || set -- router worker
days=${EPMOE_CERT_DAYS:-825}
umask 077
# a new folder is world-searchable (the files keep their own modes), so a
# service user such as the image's can reach its own key
[ -d "$dir" ] || { mkdir -p "$dir" && chmod 755 "$dir"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

if [ ! -f "$dir/ca.pem" ] || [ ! -f "$dir/ca.key" ]; then
	openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key" 2>/dev/null
	cat > "$tmp/ca.ext" <<EXT
[req]
distinguished_name = dn
prompt = no
[dn]
CN = epmoe cluster CA
[v3]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EXT
	openssl req -new -x509 -key "$dir/ca.key" -sha256 -days "$days" \
		-config "$tmp/ca.ext" -extensions v3 -out "$dir/ca.pem"
	echo "mkcerts: made the CA $dir/ca.pem"
fi
chmod 644 "$dir/ca.pem"

for name in "$@"; do
	case $name in
	*[!A-Za-z0-9._-]*|'') echo "mkcerts: bad name '$name'" >&2; exit 2 ;;
	esac
	if [ -f "$dir/$name.pem" ] && [ -f "$dir/$name.key" ]; then
		echo "mkcerts: keeping $dir/$name.pem"
		continue
	fi
	sans="DNS:$name,DNS:localhost,IP:127.0.0.1"
	[ -n "${EPMOE_CERT_SANS:-}" ] && sans="$sans,$EPMOE_CERT_SANS"
	cat > "$tmp/leaf.ext" <<EXT
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $name
[v3]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = $sans
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
	openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key" 2>/dev/null
	openssl req -new -key "$dir/$name.key" -config "$tmp/leaf.ext" \
		-out "$tmp/$name.csr"
	openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca.pem" \
		-CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 12)" \
		-sha256 -days "$days" -extfile "$tmp/leaf.ext" -extensions v3 \
		-out "$dir/$name.pem" 2>/dev/null
	chmod 600 "$dir/$name.key"
	chmod 644 "$dir/$name.pem"
	if [ -n "${EPMOE_CERT_OWNER:-}" ]; then
		chown "$EPMOE_CERT_OWNER" "$dir/$name.key" "$dir/$name.pem" ||
			{ echo "mkcerts: cannot chown to $EPMOE_CERT_OWNER" >&2; exit 1; }
	fi
	echo "mkcerts: made $dir/$name.pem ($sans)"
done
