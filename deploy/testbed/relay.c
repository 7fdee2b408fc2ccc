/* epmoe-relay: the testbed's delay line (deploy/testbed.sh).  This kernel
 * has no netem, so a host's TCP connections are redirected (iptables
 * REDIRECT, in the host's network namespace) to this relay, which
 * terminates each one, connects to the original destination
 * (SO_ORIGINAL_DST) with a socket mark the redirect rules skip, and holds
 * every chunk it reads for delay ± jitter ms before passing it on, in
 * each direction.
 *
 * How it differs from netem: it delays chunks of a byte stream, not
 * packets, and only TCP; the connection handshake and TCP's own
 * acknowledgements are not delayed (each side talks to a local socket);
 * jitter never reorders (a chunk is never released before the one read
 * before it); a chunk waits whole, so a large write arrives in pieces as
 * it was read.  It adds its own copy and wake-up cost: measure it at
 * delay 0 (`make bench-testbed` prints it against plain links).
 *
 * Memory is bounded: a direction stops reading once RELAY_MAX_QUEUED
 * bytes wait, and resumes when half have been written.  Delay and jitter
 * are read from --params FILE ("DELAY_MS JITTER_MS") at start and on
 * SIGHUP, so a link is reshaped without breaking its connections.
 *
 * Owns: its sockets and queued chunks.  Must not: touch anything but the
 * connections it accepted. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

/* <linux/netfilter_ipv4.h> clashes with <netinet/in.h> */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif

#define RELAY_CHUNK (64 * 1024)
#define RELAY_MAX_QUEUED (8u << 20)

struct chunk {
	struct chunk *next;
	uint64_t due_ms;
	size_t len;  /* 0: the reader's end of stream */
	uv_write_t wr;
	struct dir *d;
	char *buf;
};

struct conn;

/* One direction of a connection: bytes read from `from`, held, written
 * to `to`. */
struct dir {
	struct conn *c;
	uv_stream_t *from, *to;
	uv_timer_t timer;
	struct chunk *head, *tail;
	uint64_t last_due;
	size_t queued;   /* bytes read and not yet written */
	bool reading, eof_read, eof_sent;
};

struct conn {
	uv_tcp_t down;   /* the accepted side */
	uv_tcp_t up;     /* towards the original destination */
	uv_connect_t connect;
	struct dir d2u, u2d;
	int open_handles;
	bool closing;
};

static struct {
	double delay_ms, jitter_ms;
	const char *params;
	unsigned mark;
	uint64_t rng;
	uint64_t n_conns, n_fail;
} g;

static double
uniform(void)
{
	/* splitmix64: a different stream per relay through --seed */
	uint64_t z = (g.rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (double)(z >> 11) / 9007199254740992.0;
}

static int
read_params(void)
{
	FILE *f;
	double d, j;

	if (g.params == NULL)
		return 0;
	if ((f = fopen(g.params, "r")) == NULL) {
		fprintf(stderr, "epmoe-relay: %s: %s\n", g.params, strerror(errno));
		return -1;
	}
	if (fscanf(f, "%lf %lf", &d, &j) != 2 || d < 0 || j < 0 || d > 60000 || j > d) {
		fprintf(stderr, "epmoe-relay: %s: expected \"DELAY_MS JITTER_MS\" with "
		        "0 <= jitter <= delay <= 60000\n", g.params);
		fclose(f);
		return -1;
	}
	fclose(f);
	g.delay_ms = d;
	g.jitter_ms = j;
	return 0;
}

/* One of c's handles has closed; the last frees it. */
static void
conn_release(struct conn *c)
{
	if (--c->open_handles > 0)
		return;
	for (struct dir *d = &c->d2u; d; d = d == &c->d2u ? &c->u2d : NULL) {
		struct chunk *k = d->head, *n;
		for (; k; k = n) {
			n = k->next;
			free(k->buf);
			free(k);
		}
	}
	free(c);
}

/* The sockets' data is their conn, the timers' their dir. */
static void
on_closed(uv_handle_t *h)
{
	conn_release(h->data);
}

static void
on_timer_closed(uv_handle_t *h)
{
	conn_release(((struct dir *)h->data)->c);
}

static void
conn_close(struct conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	uv_close((uv_handle_t *)&c->down, on_closed);
	uv_close((uv_handle_t *)&c->up, on_closed);
	uv_close((uv_handle_t *)&c->d2u.timer, on_timer_closed);
	uv_close((uv_handle_t *)&c->u2d.timer, on_timer_closed);
}

static void dir_flush(struct dir *d);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void
on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	buf->base = malloc(RELAY_CHUNK);
	buf->len = buf->base ? RELAY_CHUNK : 0;
}

static void
dir_read_start(struct dir *d)
{
	if (!d->reading && !d->eof_read && !d->c->closing &&
	        uv_read_start(d->from, on_alloc, on_read) == 0)
		d->reading = true;
}

static void
on_timer(uv_timer_t *t)
{
	dir_flush(t->data);
}

static void
both_done(struct conn *c)
{
	if (c->d2u.eof_sent && c->u2d.eof_sent && c->d2u.queued == 0 && c->u2d.queued == 0)
		conn_close(c);
}

static void
on_shutdown(uv_shutdown_t *req, int status)
{
	struct dir *d = req->data;

	free(req);
	if (status != 0 && status != UV_ECANCELED)
		conn_close(d->c);
	else if (!d->c->closing)
		both_done(d->c);
}

static void
on_written(uv_write_t *wr, int status)
{
	struct chunk *k = wr->data;
	struct dir *d = k->d;

	d->queued -= k->len;
	free(k->buf);
	free(k);
	if (status != 0) {
		conn_close(d->c);
		return;
	}
	if (d->c->closing)
		return;
	if (d->queued < RELAY_MAX_QUEUED / 2)
		dir_read_start(d);
	both_done(d->c);
}

/* Writes every chunk that is due, then sleeps until the next one. */
static void
dir_flush(struct dir *d)
{
	uint64_t now;

	if (d->c->closing)
		return;
	uv_update_time(uv_default_loop());
	now = uv_now(uv_default_loop());
	while (d->head && d->head->due_ms <= now) {
		struct chunk *k = d->head;
		d->head = k->next;
		if (d->head == NULL)
			d->tail = NULL;
		if (k->len == 0) {
			uv_shutdown_t *sr = malloc(sizeof(*sr));
			free(k);
			d->eof_sent = true;
			if (sr == NULL || (sr->data = d, uv_shutdown(sr, d->to, on_shutdown)) != 0) {
				free(sr);
				conn_close(d->c);
				return;
			}
			continue;
		}
		uv_buf_t b = uv_buf_init(k->buf, (unsigned)k->len);
		k->wr.data = k;
		if (uv_write(&k->wr, d->to, &b, 1, on_written) != 0) {
			d->queued -= k->len;
			free(k->buf);
			free(k);
			conn_close(d->c);
			return;
		}
	}
	if (d->head)
		uv_timer_start(&d->timer, on_timer, d->head->due_ms - now, 0);
}

static void
dir_push(struct dir *d, char *buf, size_t len)
{
	struct chunk *k = calloc(1, sizeof(*k));
	uint64_t now = uv_now(uv_default_loop()), due;
	double hold = g.delay_ms;

	if (k == NULL) {
		free(buf);
		conn_close(d->c);
		return;
	}
	if (g.jitter_ms > 0)
		hold += (2 * uniform() - 1) * g.jitter_ms;
	due = now + (uint64_t)(hold + 0.5);
	if (due < d->last_due)
		due = d->last_due;  /* a byte stream keeps its order */
	d->last_due = due;
	k->due_ms = due;
	k->buf = buf;
	k->len = len;
	k->d = d;
	d->queued += len;
	if (d->tail)
		d->tail->next = k;
	else
		d->head = k;
	d->tail = k;
	if (d->head == k)
		dir_flush(d);
}

static void
on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	struct dir *d = s == (uv_stream_t *)&c->down ? &c->d2u : &c->u2d;

	if (n > 0) {
		dir_push(d, buf->base, (size_t)n);
		if (d->queued >= RELAY_MAX_QUEUED && d->reading) {
			uv_read_stop(s);
			d->reading = false;
		}
		return;
	}
	free(buf->base);
	if (n == 0)
		return;
	if (n == UV_EOF) {
		uv_read_stop(s);
		d->reading = false;
		d->eof_read = true;
		dir_push(d, NULL, 0);
		return;
	}
	conn_close(c);
}

static void
on_connected(uv_connect_t *req, int status)
{
	struct conn *c = req->data;

	if (c->closing)
		return;
	if (status != 0) {
		g.n_fail++;
		conn_close(c);
		return;
	}
	uv_tcp_nodelay(&c->up, 1);
	dir_read_start(&c->d2u);
	dir_read_start(&c->u2d);
}

static void
dir_init(struct conn *c, struct dir *d, uv_stream_t *from, uv_stream_t *to)
{
	d->c = c;
	d->from = from;
	d->to = to;
	uv_timer_init(uv_default_loop(), &d->timer);
	d->timer.data = d;
}

static void
on_accept(uv_stream_t *server, int status)
{
	struct sockaddr_storage dst;
	socklen_t dlen = sizeof(dst);
	struct conn *c;
	uv_os_fd_t fd;
	int s;

	if (status != 0 || (c = calloc(1, sizeof(*c))) == NULL)
		return;
	uv_tcp_init(uv_default_loop(), &c->down);
	c->down.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->down) != 0) {
		c->open_handles = 1;
		c->closing = true;
		uv_close((uv_handle_t *)&c->down, on_closed);
		return;
	}
	c->open_handles = 4;
	uv_tcp_init(uv_default_loop(), &c->up);
	c->up.data = c;
	dir_init(c, &c->d2u, (uv_stream_t *)&c->down, (uv_stream_t *)&c->up);
	dir_init(c, &c->u2d, (uv_stream_t *)&c->up, (uv_stream_t *)&c->down);
	uv_tcp_nodelay(&c->down, 1);
	g.n_conns++;
	/* where the connection was going before the redirect */
	if (uv_fileno((uv_handle_t *)&c->down, &fd) != 0 ||
	        getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &dst, &dlen) != 0) {
		fprintf(stderr, "epmoe-relay: no original destination (not redirected?)\n");
		conn_close(c);
		return;
	}
	/* our own socket, marked so that the redirect rules let it pass */
	if ((s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	        (g.mark && setsockopt(s, SOL_SOCKET, SO_MARK, &g.mark, sizeof(g.mark)) != 0) ||
	        uv_tcp_open(&c->up, s) != 0) {
		fprintf(stderr, "epmoe-relay: cannot open the upstream socket: %s\n", strerror(errno));
		if (s >= 0)
			close(s);
		conn_close(c);
		return;
	}
	c->connect.data = c;
	if (uv_tcp_connect(&c->connect, &c->up, (struct sockaddr *)&dst, on_connected) != 0) {
		g.n_fail++;
		conn_close(c);
	}
}

static void
on_hup(uv_signal_t *h, int sig)
{
	if (read_params() == 0)
		fprintf(stderr, "epmoe-relay: delay %.1f ms, jitter %.1f ms\n", g.delay_ms, g.jitter_ms);
}

static void
on_term(uv_signal_t *h, int sig)
{
	uv_stop(uv_default_loop());
}

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe-relay --port P [--params FILE | --delay MS [--jitter MS]]\n"
	        "                   [--mark N] [--seed S]\n"
	        "Relays TCP connections redirected to port P (iptables REDIRECT) to their\n"
	        "original destination, holding each chunk for delay +- jitter ms in each\n"
	        "direction (see the comment at the top of deploy/testbed/relay.c).\n"
	        "  --params FILE  \"DELAY_MS JITTER_MS\", read again on SIGHUP\n"
	        "  --mark N       SO_MARK of the relay's own connections (default 0x77)\n");
}

static int
number(const char *s, double lo, double hi, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "params", required_argument, NULL, 'f' },
		{ "delay", required_argument, NULL, 'd' },
		{ "jitter", required_argument, NULL, 'j' },
		{ "mark", required_argument, NULL, 'm' },
		{ "seed", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct sockaddr_in addr;
	uv_tcp_t server;
	uv_signal_t hup, term, intr;
	double port = 0, v;
	int o;

	g.mark = 0x77;
	g.rng = 0x5eed;
	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (o) {
		case 'p':
			if (number(optarg, 1, 65535, &port) != 0)
				goto bad;
			break;
		case 'f': g.params = optarg; break;
		case 'd':
			if (number(optarg, 0, 60000, &g.delay_ms) != 0)
				goto bad;
			break;
		case 'j':
			if (number(optarg, 0, 60000, &g.jitter_ms) != 0)
				goto bad;
			break;
		case 'm':
			if (number(optarg, 0, (double)UINT_MAX, &v) != 0)
				goto bad;
			g.mark = (unsigned)v;
			break;
		case 's':
			if (number(optarg, 0, 1e15, &v) != 0)
				goto bad;
			g.rng = (uint64_t)v;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc || port == 0 || g.jitter_ms > g.delay_ms) {
		usage(stderr);
		return 2;
	}
	if (read_params() != 0)
		return 1;
	signal(SIGPIPE, SIG_IGN);
	uv_tcp_init(uv_default_loop(), &server);
	uv_ip4_addr("0.0.0.0", (int)port, &addr);
	if ((o = uv_tcp_bind(&server, (struct sockaddr *)&addr, 0)) != 0 ||
	        (o = uv_listen((uv_stream_t *)&server, 256, on_accept)) != 0) {
		fprintf(stderr, "epmoe-relay: cannot listen on port %d: %s\n", (int)port, uv_strerror(o));
		return 1;
	}
	uv_signal_init(uv_default_loop(), &hup);
	uv_signal_start(&hup, on_hup, SIGHUP);
	uv_signal_init(uv_default_loop(), &term);
	uv_signal_start(&term, on_term, SIGTERM);
	uv_signal_init(uv_default_loop(), &intr);
	uv_signal_start(&intr, on_term, SIGINT);
	fprintf(stderr, "epmoe-relay: port %d, delay %.1f ms, jitter %.1f ms, mark 0x%x\n",
	        (int)port, g.delay_ms, g.jitter_ms, g.mark);
	uv_run(uv_default_loop(), UV_RUN_DEFAULT);
	fprintf(stderr, "epmoe-relay: stopped after %llu connections (%llu could not connect)\n",
	        (unsigned long long)g.n_conns, (unsigned long long)g.n_fail);
	return 0;
bad:
	fprintf(stderr, "epmoe-relay: bad value for %s: '%s'\n", argv[optind - 1], optarg);
	return 2;
}
