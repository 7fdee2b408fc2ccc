/* NNG sockets with epmoe's options set explicitly (reliability.md §8.2),
 * shared by the router's control plane / dispatcher and the worker:
 *
 *   - NNG_OPT_RECVMAXSZ on the socket and on every listener and dialer
 *     (NNG 1.5.2 defaults to unlimited);
 *   - dialers reconnect after 100 ms, backing off to 2 s;
 *   - TCP keepalive on (tcp:// only; liveness still comes from heartbeats
 *     and aio deadlines);
 *   - REQ automatic resend disabled (NNG_DURATION_INFINITE): a request
 *     whose peer disconnects fails with NNG_ECONNRESET instead of being
 *     silently resent, and every request carries its own aio deadline.
 *
 * Mutual TLS (netsock_tls_new): every dial and listen takes the
 * process's TLS identity or NULL.  With one, a URL must be tls+tcp://
 * (a plain tcp:// URL is refused, so no socket of a secured cluster
 * speaks in the clear by mistake; ipc:// and inproc:// stay allowed: they
 * never leave the machine) and the peer must present a certificate that
 * chains to the CA, both ways: a listener refuses a dialer without one, a
 * dialer refuses a listener without one.  Names in certificates are not
 * checked: the CA is the cluster's own (deploy/mkcerts.sh) and any
 * certificate it signed is a member.  Without one, tls+tcp:// is refused.
 *
 * Also a buffer-reusing variant of wire_nng_new for hot paths.  Nothing
 * here sends or receives.
 */
#ifndef EPMOE_NETSOCK_H
#define EPMOE_NETSOCK_H

#include <stddef.h>
#include <stdint.h>

#include <nng/nng.h>

#include "wire.h"

#define NETSOCK_DATA_RECV_MAX ((size_t)256 << 20)
#define NETSOCK_CTL_RECV_MAX ((size_t)16 << 20)
#define NETSOCK_RECONN_MIN_MS 100
#define NETSOCK_RECONN_MAX_MS 2000

struct netsock_tls;

/* Loads a TLS identity: cert_file (PEM, the certificate and optionally its
 * chain), key_file (PEM private key, unencrypted) and ca_file (PEM, the
 * CA(s) a peer's certificate must chain to).  On success *out is the
 * caller's (netsock_tls_free) and may be shared by any number of sockets
 * and threads.  Returns 0 or EPMOE_EINVAL / EPMOE_EIO / EPMOE_ENOMEM with
 * a one-line reason naming the file in err. */
int netsock_tls_new(struct netsock_tls **out, const char *cert_file,
        const char *key_file, const char *ca_file, char *err, size_t err_len);
void netsock_tls_free(struct netsock_tls *t);

/* Whether url is tls+tcp:// (or tls+tcp4/6). */
int netsock_url_is_tls(const char *url);

/* Checks that url fits tls (see the file comment): 0, or EPMOE_EINVAL with
 * a reason in err. */
int netsock_url_check(const char *url, const struct netsock_tls *tls,
        char *err, size_t err_len);

/* Opens a REQ socket and dials url without blocking (NNG keeps retrying in
 * the background until the peer listens).  On success *out is the
 * caller's: nng_close() it.  Returns 0 or an EPMOE_E* code (EPMOE_EINVAL
 * for a malformed URL, an unknown transport or a URL that does not fit
 * tls, see netsock_url_check). */
int netsock_req_dial(nng_socket *out, const char *url, size_t recv_max,
        const struct netsock_tls *tls);

/* The two halves of netsock_req_dial: a REQ socket with the options and no
 * dialer, and a non-blocking dialer with the options on a socket (to
 * point a long-lived socket at a new address: dial the new one, then
 * nng_dialer_close the old one).
 *
 * NNG 1.5.2 caveat: nng_close() of a socket while another thread is
 * blocked in an operation on it can crash NNG (a taskq thread locks a
 * destroyed mutex; nanomsg/nng#2110 is the same family).  Close a socket
 * only once no other thread uses it; to move a peer, swap dialers. */
int netsock_req_open(nng_socket *out, size_t recv_max);
int netsock_dial(nng_socket s, const char *url, size_t recv_max,
        const struct netsock_tls *tls, nng_dialer *out);

/* nng_close(s), but waits at most timeout_ms for it: NNG 1.5.2 can
 * deadlock in nng_close when a peer's message arrives while the socket's
 * pipes are torn down (nanomsg/nng#1543, #1813; fixed in NNG 1.8).  After
 * the timeout the close goes on in a detached thread and a warning is
 * logged, so a shutdown never hangs on it.  Returns 0, or EPMOE_ETIMEDOUT
 * when the close was abandoned. */
int netsock_close_bounded(nng_socket s, uint32_t timeout_ms);

/* Opens a REP socket listening on url.  The URL actually bound goes to
 * bound (a tcp port 0 is replaced by the port the kernel chose).  On
 * success *out is the caller's.  Returns 0 or an EPMOE_E* code
 * (EPMOE_EIO when the address is in use). */
int netsock_rep_listen(nng_socket *out, const char *url, size_t recv_max,
        const struct netsock_tls *tls, char *bound, size_t bound_len);

/* Packs a frame (wire_pack_begin) into *msg, reusing *msg's buffer when it
 * is not NULL (cleared and resized: no allocation when it is large
 * enough), else allocating one.  *rows_out is where the n_floats floats
 * go.  On failure *msg is still the caller's (its content is undefined).
 * Returns 0 or the wire_nng_new errors. */
int netsock_msg_pack(nng_msg **msg, int kind, const ProtobufCMessage *hdr,
        size_t n_floats, float **rows_out);

#endif
