/* The client library's NNG transport: one REQ socket per client, one
 * wire-framed ClientMsg per request and one ClientReply back; streaming by
 * polling with offsets. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "client_int.h"
#include "clock.h"
#include "epmoe.pb-c.h"
#include "err.h"
#include "wire.h"
#include "wire_nng.h"

/* ---- NNG ---- */

#define CANCEL_TIMEOUT_MS 1000

/* The HTTP status the router's HTTP API would give for an NNG status. */
static int
wire_status_http(int st)
{
	switch (st) {
	case EPMOE__STATUS__STATUS_OK: return 200;
	case EPMOE__STATUS__STATUS_INVALID:
	case EPMOE__STATUS__STATUS_PROTOCOL:
	case EPMOE__STATUS__STATUS_UNSUPPORTED: return 400;
	case EPMOE__STATUS__STATUS_NOT_FOUND: return 404;
	case EPMOE__STATUS__STATUS_STALE_PLACEMENT: return 409;
	case EPMOE__STATUS__STATUS_BUSY: return 429;
	case EPMOE__STATUS__STATUS_CANCELLED: return 499;
	case EPMOE__STATUS__STATUS_UNAVAILABLE: return 503;
	case EPMOE__STATUS__STATUS_TIMEOUT: return 504;
	}
	return 500;
}

int
cl_nng_open(struct epmoe_client *c, const char *url, char *errmsg, size_t size)
{
	int rv;

	if ((rv = nng_req0_open(&c->sock)) != 0) {
		epmoe_set_err(errmsg, size, "cannot open an NNG REQ socket: %s",
		        nng_strerror(rv));
		return wire_nng_err(rv);
	}
	c->sock_open = 1;
	/* A completion can take long: never let REQ resend it behind our
	 * back (the whole timeout plus a margin is "never" here). */
	nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME,
	        (nng_duration)c->o.timeout_ms + 60000);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, 50);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, 1000);
	nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO,
	        (nng_duration)c->o.connect_timeout_ms);
	/* a synchronous dial: "connection refused" now, not a timeout later */
	if ((rv = nng_dial(c->sock, url, NULL, 0)) != 0) {
		epmoe_set_err(errmsg, size, "cannot connect to %s: %s", url,
		        nng_strerror(rv));
		return rv == NNG_ENOMEM ? EPMOE_ENOMEM :
		        rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP ? EPMOE_EINVAL :
		        EPMOE_EIO;
	}
	return 0;
}

void
cl_nng_close(struct epmoe_client *c)
{
	if (c->sock_open)
		nng_close(c->sock);
	c->sock_open = 0;
}

/* Sends msg and waits up to timeout_ms for the reply.  An ErrorReply
 * becomes the error.  On success *out is the caller's
 * (epmoe__client_reply__free_unpacked). */
static int
nng_call(struct epmoe_client *c, Epmoe__ClientMsg *msg,
        Epmoe__ClientReply **out, uint32_t timeout_ms)
{
	ProtobufCMessage *hdr;
	Epmoe__ClientReply *rep;
	const float *rows;
	size_t n_floats;
	nng_msg *m;
	int rv, rc;

	msg->version = EPMOE_PROTO_VERSION;
	if (c->api_key != NULL)
		msg->api_key = c->api_key;
	if ((rc = wire_nng_pack(&m, WIRE_CLIENT, &msg->base, NULL, 0)) != 0)
		return cl_set_err(c, rc, 0, "cannot pack the request: %s",
		        wire_errmsg());
	nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, (nng_duration)timeout_ms);
	if ((rv = nng_sendmsg(c->sock, m, 0)) != 0) {
		nng_msg_free(m);
		return cl_set_err(c, rv == NNG_ETIMEDOUT ? EPMOE_ETIMEDOUT : EPMOE_EIO,
		        0, "%s: cannot send: %s", c->url, nng_strerror(rv));
	}
	if ((rv = nng_recvmsg(c->sock, &m, 0)) != 0) {
		if (rv == NNG_ETIMEDOUT)
			return cl_set_err(c, EPMOE_ETIMEDOUT, 0,
			        "%s: no reply within %u ms", c->url, timeout_ms);
		return cl_set_err(c, EPMOE_EIO, 0, "%s: %s", c->url, nng_strerror(rv));
	}
	rc = wire_nng_unpack(m, WIRE_CLIENT_REPLY, NULL, &hdr, &rows, &n_floats);
	if (rc != 0) {
		cl_set_err(c, rc == EPMOE_ENOMEM ? rc : EPMOE_EPROTO, 0,
		        "%s: bad reply: %s", c->url, wire_errmsg());
		nng_msg_free(m);
		return c->err.code;
	}
	nng_msg_free(m);
	rep = (Epmoe__ClientReply *)hdr;
	if (rep->msg_case == EPMOE__CLIENT_REPLY__MSG_ERROR) {
		const Epmoe__ErrorReply *er = rep->error;
		rc = wire_status_to_err(er->status);
		cl_set_err(c, rc ? rc : EPMOE_EPROTO, wire_status_http(er->status),
		        "%s", er->message[0] ? er->message : "error without a message");
		c->err.retry_after_ms = er->retry_after_ms;
		epmoe__client_reply__free_unpacked(rep, NULL);
		return c->err.code;
	}
	*out = rep;
	return 0;
}

/* A reply of the kind expected, else EPMOE_EPROTO (and rep is freed). */
static int
nng_expect(struct epmoe_client *c, Epmoe__ClientReply *rep, int kind)
{
	if ((int)rep->msg_case == kind)
		return 0;
	epmoe__client_reply__free_unpacked(rep, NULL);
	return cl_set_err(c, EPMOE_EPROTO, 0, "%s: reply of another kind (%d, "
	        "expected %d)", c->url, (int)rep->msg_case, kind);
}

static const char *
finish_name(int f)
{
	switch (f) {
	case EPMOE__FINISH_REASON__FINISH_STOP: return "stop";
	case EPMOE__FINISH_REASON__FINISH_LENGTH: return "length";
	case EPMOE__FINISH_REASON__FINISH_CANCELLED: return "cancelled";
	case EPMOE__FINISH_REASON__FINISH_ERROR: return "error";
	}
	return NULL;
}

/* Adds what a CompletionResponse holds beyond what a already has.  The
 * offsets make a repeated reply harmless; a gap is a protocol error. */
static int
nng_apply(struct epmoe_client *c, struct cl_acc *a,
        const Epmoe__CompletionResponse *cr)
{
	size_t skip, tskip, tlen;
	const char *finish;
	int rc;

	if (cr->status != EPMOE__STATUS__STATUS_OK || cr->error[0] != '\0') {
		rc = wire_status_to_err(cr->status);
		return cl_set_err(c, rc ? rc : EPMOE_EINTERNAL,
		        wire_status_http(cr->status), "%s",
		        cr->error[0] ? cr->error : "completion failed");
	}
	if (cr->token_offset > a->r.n_tokens || cr->text_offset > a->r.text_len)
		return cl_set_err(c, EPMOE_EPROTO, 0, "%s: reply skips output (offsets "
		        "%u/%llu, have %zu/%zu)", c->url, cr->token_offset,
		        (unsigned long long)cr->text_offset, a->r.n_tokens,
		        a->r.text_len);
	skip = a->r.n_tokens - cr->token_offset;
	tskip = a->r.text_len - (size_t)cr->text_offset;
	tlen = strlen(cr->text);
	if ((rc = cl_acc_set_str(a, &a->r.id, cr->request_id)) != 0 ||
	        (rc = cl_acc_set_str(a, &a->r.model, cr->model)) != 0)
		return rc;
	if (cr->usage != NULL && (cr->done ||
	        cr->finish_reason != EPMOE__FINISH_REASON__FINISH_NONE)) {
		a->r.has_usage = 1;
		a->r.prompt_tokens = cr->usage->prompt_tokens;
		a->r.completion_tokens = cr->usage->completion_tokens;
		a->r.has_cached = cr->usage->cached_tokens_opt_case ==
		        EPMOE__USAGE__CACHED_TOKENS_OPT_CACHED_TOKENS;
		a->r.cached_tokens = cr->usage->cached_tokens;
	}
	finish = finish_name(cr->finish_reason);
	if (finish == NULL && cr->done)
		finish = "stop";
	return cl_acc_add(a, tlen > tskip ? cr->text + tskip : NULL,
	        tlen > tskip ? tlen - tskip : 0,
	        cr->n_tokens > skip ? cr->tokens + skip : NULL,
	        cr->n_tokens > skip ? cr->n_tokens - skip : 0, finish);
}

static void
nng_cancel(struct epmoe_client *c, const char *id)
{
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__CancelRequest cr = EPMOE__CANCEL_REQUEST__INIT;
	Epmoe__ClientReply *rep;
	struct epmoe_error saved = c->err;

	cr.request_id = (char *)id;
	msg.msg_case = EPMOE__CLIENT_MSG__MSG_CANCEL;
	msg.cancel = &cr;
	if (nng_call(c, &msg, &rep, CANCEL_TIMEOUT_MS) == 0)
		epmoe__client_reply__free_unpacked(rep, NULL);
	c->err = saved; /* the cancel's own outcome does not matter */
}

static uint32_t
remaining_ms(double deadline)
{
	double r = (deadline - clock_now()) * 1000.0;

	return r <= 0 ? 0 : r > 4e9 ? 4000000000u : (uint32_t)r;
}

int
cl_nng_completion(struct epmoe_client *c, const char *prompt,
        const struct epmoe_chat_msg *msgs, size_t n_msgs,
        const struct epmoe_gen_params *p, struct cl_acc *a)
{
	static atomic_uint_fast64_t seq;
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__CompletionRequest req = EPMOE__COMPLETION_REQUEST__INIT;
	Epmoe__PollRequest poll = EPMOE__POLL_REQUEST__INIT;
	Epmoe__ChatMessage *cm = NULL, **cmp = NULL;
	Epmoe__ClientReply *rep = NULL;
	double deadline = a->t0 + c->o.timeout_ms / 1000.0;
	char rid[64], *id = NULL;
	int rc, done = 0;

	/* client-chosen id, unique enough across processes and threads */
	snprintf(rid, sizeof(rid), "cl-%x-%llx-%llx", (unsigned)getpid(),
	        (unsigned long long)(a->t0 * 1e6),
	        (unsigned long long)atomic_fetch_add(&seq, 1));
	req.request_id = rid;
	req.model = (char *)(p->model ? p->model : "");
	if (msgs != NULL) {
		cm = calloc(n_msgs, sizeof(*cm));
		cmp = calloc(n_msgs, sizeof(*cmp));
		if (cm == NULL || cmp == NULL) {
			rc = cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
			goto out;
		}
		for (size_t i = 0; i < n_msgs; i++) {
			epmoe__chat_message__init(&cm[i]);
			if (msgs[i].role == NULL || msgs[i].content == NULL) {
				rc = cl_set_err(c, EPMOE_EINVAL, 0, "a message without "
				        "role or content");
				goto out;
			}
			cm[i].role = (char *)msgs[i].role;
			cm[i].content = (char *)msgs[i].content;
			cmp[i] = &cm[i];
		}
		req.messages = cmp;
		req.n_messages = n_msgs;
	} else {
		req.prompt = (char *)prompt;
	}
	if (p->max_tokens >= 0)
		req.max_tokens = (uint32_t)p->max_tokens;
	if (!isnan(p->temperature)) {
		req.temperature_opt_case =
		        EPMOE__COMPLETION_REQUEST__TEMPERATURE_OPT_TEMPERATURE;
		req.temperature = p->temperature;
	}
	if (!isnan(p->top_p)) {
		req.top_p_opt_case = EPMOE__COMPLETION_REQUEST__TOP_P_OPT_TOP_P;
		req.top_p = p->top_p;
	}
	if (p->top_k > 0)
		req.top_k = (uint32_t)p->top_k;
	if (!isnan(p->min_p))
		req.min_p = p->min_p;
	if (p->has_seed) {
		req.seed_opt_case = EPMOE__COMPLETION_REQUEST__SEED_OPT_SEED;
		req.seed = p->seed;
	}
	req.stop = (char **)p->stop;
	req.n_stop = p->n_stop;
	req.routing_policy = (char *)(p->routing ? p->routing : "");
	req.ignore_eos = p->ignore_eos != 0;
	req.stream = p->stream != 0;
	msg.msg_case = EPMOE__CLIENT_MSG__MSG_COMPLETE;
	msg.complete = &req;
	if ((rc = nng_call(c, &msg, &rep, remaining_ms(deadline))) != 0)
		goto out;
	/* Each round: take what the reply adds, then poll from the new
	 * offsets.  Bounded by the deadline: every call waits at most the
	 * time left. */
	for (;;) {
		if ((rc = nng_expect(c, rep, EPMOE__CLIENT_REPLY__MSG_COMPLETION)) != 0) {
			rep = NULL;
			goto out;
		}
		if (id == NULL && rep->completion->request_id[0] != '\0' &&
		        (id = strdup(rep->completion->request_id)) == NULL) {
			rc = cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
			goto out;
		}
		rc = nng_apply(c, a, rep->completion);
		done = rep->completion->done;
		epmoe__client_reply__free_unpacked(rep, NULL);
		rep = NULL;
		if (rc != 0 || done)
			break;
		if (id == NULL) {
			rc = cl_set_err(c, EPMOE_EPROTO, 0, "%s: an unfinished completion "
			        "without a request id", c->url);
			break;
		}
		if (remaining_ms(deadline) == 0) {
			rc = cl_set_err(c, EPMOE_ETIMEDOUT, 0, "%s: no end of the "
			        "completion within %u ms", c->url, c->o.timeout_ms);
			break;
		}
		poll.request_id = id;
		poll.token_offset = (uint32_t)a->r.n_tokens;
		poll.text_offset = a->r.text_len;
		poll.wait_ms = c->o.poll_wait_ms;
		if (poll.wait_ms > remaining_ms(deadline))
			poll.wait_ms = remaining_ms(deadline);
		msg.msg_case = EPMOE__CLIENT_MSG__MSG_POLL;
		msg.poll = &poll;
		if ((rc = nng_call(c, &msg, &rep, remaining_ms(deadline) + 1)) != 0)
			break;
	}
	if (id != NULL && !done && (rc == EPMOE_ECANCELED || rc == EPMOE_ETIMEDOUT ||
	        rc == EPMOE_EPROTO || rc == EPMOE_ENOMEM))
		nng_cancel(c, id);
out:
	if (rep != NULL)
		epmoe__client_reply__free_unpacked(rep, NULL);
	free(id);
	free(cm);
	free(cmp);
	return rc;
}

int
cl_nng_models(struct epmoe_client *c, char ***ids, size_t *n_ids)
{
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__ModelsRequest mr = EPMOE__MODELS_REQUEST__INIT;
	Epmoe__ClientReply *rep;
	char **v;
	int rc;

	msg.msg_case = EPMOE__CLIENT_MSG__MSG_MODELS;
	msg.models = &mr;
	if ((rc = nng_call(c, &msg, &rep, c->o.timeout_ms)) != 0 ||
	        (rc = nng_expect(c, rep, EPMOE__CLIENT_REPLY__MSG_MODELS)) != 0)
		return rc;
	if ((v = calloc(rep->models->n_models + 1, sizeof(*v))) == NULL)
		goto nomem;
	for (size_t i = 0; i < rep->models->n_models; i++)
		if ((v[i] = strdup(rep->models->models[i]->id)) == NULL) {
			epmoe_strv_free(v, i);
			goto nomem;
		}
	*ids = v;
	*n_ids = rep->models->n_models;
	epmoe__client_reply__free_unpacked(rep, NULL);
	return 0;
nomem:
	epmoe__client_reply__free_unpacked(rep, NULL);
	return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
}

int
cl_nng_health(struct epmoe_client *c, struct epmoe_health *h)
{
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__HealthRequest hr = EPMOE__HEALTH_REQUEST__INIT;
	Epmoe__ClientReply *rep;
	int rc;

	msg.msg_case = EPMOE__CLIENT_MSG__MSG_HEALTH;
	msg.health = &hr;
	if ((rc = nng_call(c, &msg, &rep, c->o.timeout_ms)) != 0 ||
	        (rc = nng_expect(c, rep, EPMOE__CLIENT_REPLY__MSG_HEALTH)) != 0)
		return rc;
	h->ok = rep->health->ok;
	snprintf(h->status, sizeof(h->status), "%s", rep->health->status[0] ?
	        rep->health->status : h->ok ? "ok" : "unavailable");
	epmoe__client_reply__free_unpacked(rep, NULL);
	return 0;
}

int
cl_nng_tokenize(struct epmoe_client *c, const char *text, int add_special,
        uint32_t **tokens, size_t *n_tokens)
{
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__TokenizeRequest tr = EPMOE__TOKENIZE_REQUEST__INIT;
	Epmoe__ClientReply *rep;
	uint32_t *v = NULL;
	size_t n;
	int rc;

	tr.text = (char *)text;
	tr.add_special = add_special != 0;
	msg.msg_case = EPMOE__CLIENT_MSG__MSG_TOKENIZE;
	msg.tokenize = &tr;
	if ((rc = nng_call(c, &msg, &rep, c->o.timeout_ms)) != 0 ||
	        (rc = nng_expect(c, rep, EPMOE__CLIENT_REPLY__MSG_TOKENIZE)) != 0)
		return rc;
	n = rep->tokenize->n_tokens;
	if (n > 0 && (v = malloc(n * sizeof(*v))) == NULL) {
		epmoe__client_reply__free_unpacked(rep, NULL);
		return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
	}
	if (n > 0)
		memcpy(v, rep->tokenize->tokens, n * sizeof(*v));
	epmoe__client_reply__free_unpacked(rep, NULL);
	*tokens = v;
	*n_tokens = n;
	return 0;
}

int
cl_nng_detokenize(struct epmoe_client *c, const uint32_t *tokens,
        size_t n_tokens, char **text)
{
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__DetokenizeRequest dr = EPMOE__DETOKENIZE_REQUEST__INIT;
	Epmoe__ClientReply *rep;
	char *s;
	int rc;

	dr.tokens = (uint32_t *)tokens;
	dr.n_tokens = n_tokens;
	msg.msg_case = EPMOE__CLIENT_MSG__MSG_DETOKENIZE;
	msg.detokenize = &dr;
	if ((rc = nng_call(c, &msg, &rep, c->o.timeout_ms)) != 0 ||
	        (rc = nng_expect(c, rep, EPMOE__CLIENT_REPLY__MSG_DETOKENIZE)) != 0)
		return rc;
	s = strdup(rep->detokenize->text);
	epmoe__client_reply__free_unpacked(rep, NULL);
	if (s == NULL)
		return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
	*text = s;
	return 0;
}
