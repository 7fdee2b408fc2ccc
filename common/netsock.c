/* NNG sockets with explicit options; message buffer reuse.  See netsock.h. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include "err.h"
#include "netsock.h"
#include "wire_nng.h"

static int
is_tcp(const char *url)
{
	return strncmp(url, "tcp://", 6) == 0 || strncmp(url, "tcp4://", 7) == 0 ||
	        strncmp(url, "tcp6://", 7) == 0;
}

/* NNG_EADDRINVAL / NNG_ENOTSUP from dialer/listener creation are bad URLs. */
static int
url_err(int rv)
{
	if (rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP || rv == NNG_EINVAL)
		return EPMOE_EINVAL;
	return wire_nng_err(rv);
}

int
netsock_req_dial(nng_socket *out, const char *url, size_t recv_max)
{
	nng_socket s;
	nng_dialer d;
	int rv;

	if (url == NULL || *url == '\0')
		return EPMOE_EINVAL;
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
	if ((rv = nng_dialer_create(&d, s, url)) != 0) {
		nng_close(s);
		return url_err(rv);
	}
	if ((rv = nng_dialer_set_size(d, NNG_OPT_RECVMAXSZ, recv_max)) != 0 ||
	        (rv = nng_dialer_set_ms(d, NNG_OPT_RECONNMINT,
	             NETSOCK_RECONN_MIN_MS)) != 0 ||
	        (rv = nng_dialer_set_ms(d, NNG_OPT_RECONNMAXT,
	             NETSOCK_RECONN_MAX_MS)) != 0 ||
	        (is_tcp(url) &&
	             (rv = nng_dialer_set_bool(d, NNG_OPT_TCP_KEEPALIVE, true)) != 0) ||
	        (rv = nng_dialer_start(d, NNG_FLAG_NONBLOCK)) != 0) {
		nng_close(s);
		return url_err(rv);
	}
	*out = s;
	return 0;
}

int
netsock_rep_listen(nng_socket *out, const char *url, size_t recv_max,
        char *bound, size_t bound_len)
{
	nng_socket s;
	nng_listener l;
	int rv, port = -1;

	if (url == NULL || *url == '\0')
		return EPMOE_EINVAL;
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
	if ((rv = nng_listener_set_size(l, NNG_OPT_RECVMAXSZ, recv_max)) != 0 ||
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
