/* NNG sockets with explicit options; message buffer reuse.  See netsock.h. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/tls/tls.h>

#include "err.h"
#include "log.h"
#include "netsock.h"
#include "wire_nng.h"

/* PEM files are small; a larger one is not a certificate or a key. */
#define PEM_MAX ((size_t)1 << 20)

/* Two configurations with the same identity: NNG's mbedTLS engine has one
 * mode per configuration (dialers are TLS clients, listeners servers). */
struct netsock_tls {
	nng_tls_config *client;
	nng_tls_config *server;
};

static int
is_plain_tcp(const char *url)
{
	return strncmp(url, "tcp://", 6) == 0 || strncmp(url, "tcp4://", 7) == 0 ||
	        strncmp(url, "tcp6://", 7) == 0;
}

int
netsock_url_is_tls(const char *url)
{
	return url != NULL && (strncmp(url, "tls+tcp://", 10) == 0 ||
	        strncmp(url, "tls+tcp4://", 11) == 0 ||
	        strncmp(url, "tls+tcp6://", 11) == 0);
}

/* TCP below: the keepalive and bound-port options apply. */
static int
is_tcp(const char *url)
{
	return is_plain_tcp(url) || netsock_url_is_tls(url);
}

int
netsock_url_check(const char *url, const struct netsock_tls *tls, char *err,
        size_t err_len)
{
	if (url == NULL || *url == '\0') {
		epmoe_set_err(err, err_len, "empty URL");
		return EPMOE_EINVAL;
	}
	if (tls != NULL && is_plain_tcp(url)) {
		epmoe_set_err(err, err_len,
		        "%.200s: TLS is configured, so TCP URLs must be tls+tcp://", url);
		return EPMOE_EINVAL;
	}
	if (tls == NULL && netsock_url_is_tls(url)) {
		epmoe_set_err(err, err_len,
		        "%.200s: a tls+tcp:// URL needs --tls-cert, --tls-key and --tls-ca",
		        url);
		return EPMOE_EINVAL;
	}
	return 0;
}

/* Reads a whole PEM file, NUL-terminated (mbedTLS wants the NUL counted). */
static int
pem_read(const char *path, char **out, char *err, size_t err_len)
{
	FILE *f;
	char *buf;
	size_t n;
	int bad;

	if ((f = fopen(path, "re")) == NULL) {
		epmoe_set_err(err, err_len, "%s: %s", path, strerror(errno));
		return EPMOE_EIO;
	}
	if ((buf = malloc(PEM_MAX + 1)) == NULL) {
		fclose(f);
		epmoe_set_err(err, err_len, "out of memory");
		return EPMOE_ENOMEM;
	}
	n = fread(buf, 1, PEM_MAX + 1, f);
	bad = ferror(f);
	fclose(f);
	if (bad || n > PEM_MAX || n == 0) {
		epmoe_set_err(err, err_len, "%s: %s", path, bad ? "read error" :
		        n == 0 ? "empty file" : "larger than 1 MiB, not a PEM file");
		free(buf);
		return bad ? EPMOE_EIO : EPMOE_EINVAL;
	}
	buf[n] = '\0';
	*out = buf;
	return 0;
}

static int
tls_config(nng_tls_config **out, nng_tls_mode mode, const char *cert,
        const char *key, const char *ca_file, const char *cert_file,
        const char *key_file, char *err, size_t err_len)
{
	nng_tls_config *c;
	int rv;

	if ((rv = nng_tls_config_alloc(&c, mode)) != 0) {
		epmoe_set_err(err, err_len, "TLS: %s (is NNG built with TLS?)",
		        nng_strerror(rv));
		return rv == NNG_ENOMEM ? EPMOE_ENOMEM : EPMOE_ENOTSUP;
	}
	if ((rv = nng_tls_config_ca_file(c, ca_file)) != 0) {
		epmoe_set_err(err, err_len, "%s: not a usable CA certificate file (%s)",
		        ca_file, nng_strerror(rv));
		goto fail;
	}
	if ((rv = nng_tls_config_own_cert(c, cert, key, NULL)) != 0) {
		epmoe_set_err(err, err_len,
		        "%s / %s: not a usable certificate and matching private key (%s)",
		        cert_file, key_file, nng_strerror(rv));
		goto fail;
	}
	if ((rv = nng_tls_config_auth_mode(c, NNG_TLS_AUTH_MODE_REQUIRED)) != 0 ||
	        (rv = nng_tls_config_version(c, NNG_TLS_1_2, NNG_TLS_1_2)) != 0) {
		epmoe_set_err(err, err_len, "TLS: %s", nng_strerror(rv));
		goto fail;
	}
	*out = c;
	return 0;
fail:
	nng_tls_config_free(c);
	return rv == NNG_ENOMEM ? EPMOE_ENOMEM : EPMOE_EINVAL;
}

/* One handshake with itself over 127.0.0.1: proves that the key matches
 * the certificate and that the certificate chains to the CA, which every
 * peer of the cluster will require (NNG loads a mismatched pair without a
 * word and only handshakes would fail, silently, later). */
static int
tls_selftest(const struct netsock_tls *t, char *err, size_t err_len)
{
	nng_socket rep, req;
	char bound[128];
	nng_msg *m = NULL;
	int rc, rv;

	if ((rc = netsock_rep_listen(&rep, "tls+tcp://127.0.0.1:0", 1024, t,
	             bound, sizeof(bound))) != 0) {
		epmoe_set_err(err, err_len, "TLS self-test: cannot listen on 127.0.0.1: %s",
		        epmoe_strerror(rc));
		return rc;
	}
	if ((rc = netsock_req_dial(&req, bound, 1024, t)) != 0) {
		nng_close(rep);
		epmoe_set_err(err, err_len, "TLS self-test: cannot dial: %s",
		        epmoe_strerror(rc));
		return rc;
	}
	nng_socket_set_ms(req, NNG_OPT_SENDTIMEO, 3000);
	nng_socket_set_ms(rep, NNG_OPT_RECVTIMEO, 3000);
	if ((rv = nng_send(req, "tls?", 4, 0)) == 0 &&
	        (rv = nng_recvmsg(rep, &m, 0)) == 0)
		nng_msg_free(m);
	netsock_close_bounded(req, 2000);
	netsock_close_bounded(rep, 2000);
	if (rv != 0) {
		epmoe_set_err(err, err_len,
		        "the certificate, key and CA do not work together (a TLS handshake with itself failed: %s): the key must be the certificate's and the certificate signed by the CA (check: openssl verify -CAfile CA CERT)",
		        nng_strerror(rv));
		return EPMOE_EINVAL;
	}
	return 0;
}

int
netsock_tls_new(struct netsock_tls **out, const char *cert_file,
        const char *key_file, const char *ca_file, char *err, size_t err_len)
{
	struct netsock_tls *t;
	char *cert = NULL, *key = NULL;
	int rc;

	if (cert_file == NULL || key_file == NULL || ca_file == NULL ||
	        !*cert_file || !*key_file || !*ca_file) {
		epmoe_set_err(err, err_len,
		        "TLS needs all three of --tls-cert, --tls-key and --tls-ca");
		return EPMOE_EINVAL;
	}
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		epmoe_set_err(err, err_len, "out of memory");
		return EPMOE_ENOMEM;
	}
	if ((rc = pem_read(cert_file, &cert, err, err_len)) != 0 ||
	        (rc = pem_read(key_file, &key, err, err_len)) != 0 ||
	        (rc = tls_config(&t->client, NNG_TLS_MODE_CLIENT, cert, key,
	             ca_file, cert_file, key_file, err, err_len)) != 0 ||
	        (rc = tls_config(&t->server, NNG_TLS_MODE_SERVER, cert, key,
	             ca_file, cert_file, key_file, err, err_len)) != 0) {
		netsock_tls_free(t);
		t = NULL;
	}
	if (key != NULL) {
		explicit_bzero(key, strlen(key));
		free(key);
	}
	free(cert);
	if (t == NULL)
		return rc;
	if ((rc = tls_selftest(t, err, err_len)) != 0) {
		netsock_tls_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

void
netsock_tls_free(struct netsock_tls *t)
{
	if (t == NULL)
		return;
	if (t->client != NULL)
		nng_tls_config_free(t->client);
	if (t->server != NULL)
		nng_tls_config_free(t->server);
	free(t);
}

/* a peer can announce URLs: their refusals are rate-limited */
static struct log_limit url_lim = LOG_LIMIT_INIT;

/* NNG_EADDRINVAL / NNG_ENOTSUP from dialer/listener creation are bad URLs. */
static int
url_err(int rv)
{
	if (rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP || rv == NNG_EINVAL)
		return EPMOE_EINVAL;
	return wire_nng_err(rv);
}

int
netsock_req_open(nng_socket *out, size_t recv_max)
{
	nng_socket s;
	int rv;

	if ((rv = nng_req0_open(&s)) != 0)
		return wire_nng_err(rv);
	if ((rv = nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, recv_max)) != 0 ||
	        (rv = nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME,
	             NNG_DURATION_INFINITE)) != 0 ||
	        (rv = nng_socket_set_ms(s, NNG_OPT_RECONNMINT,
	             NETSOCK_RECONN_MIN_MS)) != 0 ||
	        (rv = nng_socket_set_ms(s, NNG_OPT_RECONNMAXT,
	             NETSOCK_RECONN_MAX_MS)) != 0) {
		nng_close(s);
		return wire_nng_err(rv);
	}
	*out = s;
	return 0;
}

int
netsock_dial(nng_socket s, const char *url, size_t recv_max,
        const struct netsock_tls *tls, nng_dialer *out)
{
	nng_dialer d;
	char why[256];
	int rv;

	if (netsock_url_check(url, tls, why, sizeof(why)) != 0) {
		log_warn_limited(&url_lim, "%s", why);
		return EPMOE_EINVAL;
	}
	if ((rv = nng_dialer_create(&d, s, url)) != 0)
		return url_err(rv);
	if ((netsock_url_is_tls(url) &&
	             (rv = nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, tls->client)) != 0) ||
	        (rv = nng_dialer_set_size(d, NNG_OPT_RECVMAXSZ, recv_max)) != 0 ||
	        (rv = nng_dialer_set_ms(d, NNG_OPT_RECONNMINT,
	             NETSOCK_RECONN_MIN_MS)) != 0 ||
	        (rv = nng_dialer_set_ms(d, NNG_OPT_RECONNMAXT,
	             NETSOCK_RECONN_MAX_MS)) != 0 ||
	        (is_tcp(url) &&
	             (rv = nng_dialer_set_bool(d, NNG_OPT_TCP_KEEPALIVE, true)) != 0) ||
	        (rv = nng_dialer_start(d, NNG_FLAG_NONBLOCK)) != 0) {
		nng_dialer_close(d);
		return url_err(rv);
	}
	if (out != NULL)
		*out = d;
	return 0;
}

int
netsock_req_dial(nng_socket *out, const char *url, size_t recv_max,
        const struct netsock_tls *tls)
{
	nng_socket s;
	int rc;

	if (url == NULL || *url == '\0')
		return EPMOE_EINVAL;
	if ((rc = netsock_req_open(&s, recv_max)) != 0)
		return rc;
	if ((rc = netsock_dial(s, url, recv_max, tls, NULL)) != 0) {
		nng_close(s);
		return rc;
	}
	*out = s;
	return 0;
}

int
netsock_rep_listen(nng_socket *out, const char *url, size_t recv_max,
        const struct netsock_tls *tls, char *bound, size_t bound_len)
{
	nng_socket s;
	nng_listener l;
	char why[256];
	int rv, port = -1;

	if (netsock_url_check(url, tls, why, sizeof(why)) != 0) {
		log_warn_limited(&url_lim, "%s", why);
		return EPMOE_EINVAL;
	}
	if ((rv = nng_rep0_open(&s)) != 0)
		return wire_nng_err(rv);
	if ((rv = nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, recv_max)) != 0) {
		nng_close(s);
		return wire_nng_err(rv);
	}
	if ((rv = nng_listener_create(&l, s, url)) != 0) {
		nng_close(s);
		return url_err(rv);
	}
	if ((netsock_url_is_tls(url) &&
	             (rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, tls->server)) != 0) ||
	        (rv = nng_listener_set_size(l, NNG_OPT_RECVMAXSZ, recv_max)) != 0 ||
	        (is_tcp(url) &&
	             (rv = nng_listener_set_bool(l, NNG_OPT_TCP_KEEPALIVE, true)) != 0) ||
	        (rv = nng_listener_start(l, 0)) != 0) {
		nng_close(s);
		return url_err(rv);
	}
	if (is_tcp(url) &&
	        nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port) != 0)
		port = -1;
	if (bound != NULL && bound_len > 0) {
		const char *colon = strrchr(url, ':');
		const char *scheme_end = strstr(url, "://");
		int n;

		if (port >= 0 && colon != NULL && scheme_end != NULL &&
		        colon > scheme_end + 2)
			n = snprintf(bound, bound_len, "%.*s:%d",
			        (int)(colon - url), url, port);
		else
			n = snprintf(bound, bound_len, "%s", url);
		if (n < 0 || (size_t)n >= bound_len) {
			nng_close(s);
			return EPMOE_ERANGE;
		}
	}
	*out = s;
	return 0;
}

int
netsock_msg_pack(nng_msg **msg, int kind, const ProtobufCMessage *hdr,
        size_t n_floats, float **rows_out)
{
	nng_msg *m = *msg;
	size_t size, len;
	float *rows;
	int rv;

	if (m == NULL)
		return wire_nng_new(msg, kind, hdr, n_floats, rows_out);
	if ((size = wire_msg_size(hdr, n_floats)) == 0)
		return hdr == NULL ? EPMOE_EINVAL : EPMOE_ERANGE;
	nng_msg_header_clear(m);
	nng_msg_clear(m);
	/* a body that is not float-aligned (never seen with nng 1.5.2, see
	 * wire_nng.h) or a failed resize: start from a fresh message */
	if (((uintptr_t)nng_msg_body(m) & 3) != 0 ||
	        nng_msg_realloc(m, size) != 0 ||
	        ((uintptr_t)nng_msg_body(m) & 3) != 0) {
		nng_msg *fresh;
		if ((rv = wire_nng_new(&fresh, kind, hdr, n_floats, rows_out)) != 0)
			return rv;
		nng_msg_free(m);
		*msg = fresh;
		return 0;
	}
	rv = wire_pack_begin(nng_msg_body(m), nng_msg_len(m), kind, hdr,
	        n_floats, &rows, &len);
	if (rv != 0)
		return rv;
	*rows_out = rows;
	return 0;
}

/* Shared by netsock_close_bounded and its closer thread; the last of the
 * two to finish frees it. */
struct closer {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	nng_socket s;
	int refs;
	bool done;
};

static void
closer_rele(struct closer *c)
{
	int left;

	pthread_mutex_lock(&c->mu);
	left = --c->refs;
	pthread_mutex_unlock(&c->mu);
	if (left == 0) {
		pthread_cond_destroy(&c->cv);
		pthread_mutex_destroy(&c->mu);
		free(c);
	}
}

static void *
closer_main(void *arg)
{
	struct closer *c = arg;

	nng_close(c->s);
	pthread_mutex_lock(&c->mu);
	c->done = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	closer_rele(c);
	return NULL;
}

int
netsock_close_bounded(nng_socket s, uint32_t timeout_ms)
{
	struct closer *c;
	struct timespec until;
	pthread_condattr_t ca;
	pthread_attr_t ta;
	pthread_t th;
	bool done;

	if ((c = calloc(1, sizeof(*c))) == NULL) {
		nng_close(s);
		return 0;
	}
	pthread_mutex_init(&c->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cv, &ca);
	pthread_condattr_destroy(&ca);
	c->s = s;
	c->refs = 2;
	pthread_attr_init(&ta);
	pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&th, &ta, closer_main, c) != 0) {
		pthread_attr_destroy(&ta);
		c->refs = 1;
		closer_rele(c);
		nng_close(s);
		return 0;
	}
	pthread_attr_destroy(&ta);
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&c->mu);
	while (!c->done &&
	        pthread_cond_timedwait(&c->cv, &c->mu, &until) != ETIMEDOUT)
		;
	done = c->done;
	pthread_mutex_unlock(&c->mu);
	closer_rele(c);
	if (!done) {
		log_warn("nng_close of socket %d did not finish in %u ms (an NNG 1.5.2 close deadlock, nanomsg/nng#1813): left to a background thread",
		        nng_socket_id(s), timeout_ms);
		return EPMOE_ETIMEDOUT;
	}
	return 0;
}
