/* The router's core: model, tokenizer, engine, experts (in process, or the
 * worker cluster with its dispatch backend and local workers) and the
 * scheduler; and the prompt building the front ends share.  See router.h.
 * Loop thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "cluster.h"
#include "dispatch.h"
#include "err.h"
#include "gguf.h"
#include "log.h"
#include "router.h"
#include "spawn.h"

static void
on_reap(uv_timer_t *t)
{
	struct router *r = t->data;

	if (r->spawned)
		spawn_poll(r->spawned);
}

/* Expert -> worker map of the placement (first slot of each expert), for
 * ssr:lambda's worker balance and the worker-balance statistics. */
static void
load_worker_map(struct router *r)
{
	const struct placement *p = cluster_placement_acquire(r->cluster);
	const struct model_hparams *hp = &r->model->hp;
	uint16_t *map;

	if (p == NULL)
		return;
	map = calloc((size_t)hp->n_layer * hp->n_expert, sizeof(*map));
	if (map) {
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (uint32_t e = 0; e < hp->n_expert; e++) {
				int32_t s = placement_expert_slot(p, l, e, 0);
				int32_t w = s >= 0 ? placement_slot_worker(p, l, (uint32_t)s) : 0;
				map[(size_t)l * hp->n_expert + e] = (uint16_t)(w < 0 ? 0 : w);
			}
		r->worker_of = map;
		r->n_workers_map = (int)p->n_worker;
		engine_set_worker_map(r->engine, map, (int)p->n_worker);
	}
	cluster_placement_release(r->cluster, p);
}

/* The local workers of --workers N, restarted when they exit. */
static int
spawn_workers(struct router *r)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct spawn_cfg sc = { 0 };
	int rc;

	sc.router_url = cluster_control_url(r->cluster);
	sc.model_path = r->cfg.model_path;
	sc.n_workers = (uint32_t)r->cfg.workers;
	/* the workers share the machine: split its cores between them */
	sc.threads = ncpu > r->cfg.workers ? (int)(ncpu / r->cfg.workers) : 1;
	sc.log_json = r->cfg.log_json;
	sc.restart = true;
	if ((rc = spawn_start(&r->spawned, &sc)) != 0) {
		log_error("cannot start %d local workers: %s", r->cfg.workers,
		        epmoe_strerror(rc));
		return rc;
	}
	uv_timer_init(r->loop, &r->reap_timer);
	r->reap_timer.data = r;
	uv_timer_start(&r->reap_timer, on_reap, 500, 500);
	r->reap_timer_on = true;
	return 0;
}

/* The experts on workers: the cluster (control plane, placement, health),
 * the dispatch backend that replaces the in-process experts, and the
 * local workers. */
static int
start_workers(struct router *r)
{
	struct cluster_cfg cc = { 0 };
	struct dispatch_cfg dc = { 0 };
	char err[512] = "";
	int rc;

	cc.control_url = r->cfg.control_url;
	cc.model = r->model;
	cc.placement_file = r->cfg.placement;
	cc.experts_per_worker = r->cfg.experts_per_worker;
	cc.n_workers = (uint32_t)r->cfg.expect_workers;
	if ((rc = cluster_new(&r->cluster, &cc, err, sizeof(err))) != 0) {
		log_error("%s", err[0] ? err : epmoe_strerror(rc));
		return rc;
	}
	if ((rc = cluster_start(r->cluster)) != 0) {
		log_error("cannot listen for workers on %s: %s", r->cfg.control_url,
		        epmoe_strerror(rc));
		return rc;
	}
	dc.deadline_ms = r->cfg.expert_timeout_ms;
	if ((rc = dispatch_new(&r->dispatch, r->cluster, r->model, &dc)) != 0) {
		log_error("cannot create the expert dispatcher: %s", epmoe_strerror(rc));
		return rc;
	}
	engine_set_experts(r->engine, r->dispatch);
	if (r->cfg.workers > 0 && (rc = spawn_workers(r)) != 0)
		return rc;
	load_worker_map(r);
	log_info("expecting %d workers on %s%s", r->cfg.expect_workers,
	        cluster_control_url(r->cluster),
	        r->cfg.workers ? " (started locally)" : "");
	return 0;
}

static int
load_model(struct router *r)
{
	const struct gguf_kv *kv;
	char err[512] = "";
	int rc;

	if ((rc = model_load(&r->model, r->cfg.model_path, err, sizeof(err))) != 0 ||
	        (rc = tok_load(&r->tok, r->model->gguf, err, sizeof(err))) != 0) {
		log_error("%s", err);
		return rc;
	}
	kv = gguf_find_kv(r->model->gguf, "tokenizer.chat_template");
	if (kv && kv->type == GGUF_TYPE_STRING &&
	        (r->chat_template = strndup(kv->v.str.ptr, kv->v.str.len)) == NULL)
		return EPMOE_ENOMEM;
	struct engine_opts eo = { .n_threads = r->cfg.threads, .n_ctx = r->cfg.n_ctx,
		.routing = r->cfg.routing, .kv_type = r->cfg.kv_type };
	if ((rc = engine_new(&r->engine, r->model, &eo, err, sizeof(err))) != 0) {
		log_error("%s", err[0] ? err : epmoe_strerror(rc));
		return rc;
	}
	if (r->cfg.max_tokens_limit == 0)
		r->cfg.max_tokens_limit = engine_n_ctx(r->engine);
	return 0;
}

/* The server's default policy must route prompts and decode steps; its
 * canonical spec tells requests that name it. */
static int
check_default_routing(struct router *r)
{
	const struct model_hparams *hp = &r->model->hp;
	struct route_model gate = { .n_experts = (int)hp->n_expert,
		.k = (int)hp->n_expert_used, .renorm = hp->expert_weights_norm,
		.n_layers = (int)hp->n_layer };
	struct gen_err ge;
	int rc;

	if ((rc = gen_check_routing(&gate, r->cfg.routing ? r->cfg.routing : "native", true,
	             r->default_routing, &ge)) != 0)
		log_error("--routing %s: %s", r->cfg.routing, ge.message);
	return rc;
}

int
router_start(struct router *r)
{
	int rc;

	r->created = (int64_t)time(NULL);
	r->boot_id = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	if ((rc = load_model(r)) != 0 || (rc = check_default_routing(r)) != 0)
		return rc;
	if (!r->cfg.local && (rc = start_workers(r)) != 0)
		return rc;
	if ((rc = sched_new(&r->sched, r->loop, r->engine, r->tok, &r->cfg.sched)) != 0) {
		log_error("cannot start the scheduler: %s", epmoe_strerror(rc));
		return rc;
	}
	return 0;
}

void
router_stop(struct router *r)
{
	/* fails what is pending; the events go out now */
	sched_stop(r->sched);
	if (r->reap_timer_on) {
		uv_timer_stop(&r->reap_timer);
		uv_close((uv_handle_t *)&r->reap_timer, NULL);
		r->reap_timer_on = false;
	}
	if (r->spawned) {
		spawn_stop(r->spawned, 5000);
		spawn_free(r->spawned);
		r->spawned = NULL;
	}
}

void
router_free(struct router *r)
{
	router_stop(r);
	sched_free(r->sched);
	r->sched = NULL;
	/* the dispatch backend before the cluster it uses, both after the
	 * engine's last step */
	if (r->engine)
		engine_set_experts(r->engine, NULL);
	if (r->dispatch) {
		r->dispatch->free(r->dispatch);
		r->dispatch = NULL;
	}
	cluster_free(r->cluster);
	r->cluster = NULL;
	engine_free(r->engine);
	tok_free(r->tok);
	free(r->chat_template);
	free(r->worker_of);
	model_free(r->model);
	r->engine = NULL;
	r->tok = NULL;
	r->chat_template = NULL;
	r->worker_of = NULL;
	r->model = NULL;
}

bool
router_ready(struct router *r)
{
	return !r->stopping && (r->cluster == NULL || cluster_ready(r->cluster));
}

int
router_tokenize(struct router *r, const char *text, size_t len,
        bool add_special, bool parse_special, int32_t **ids, size_t *n)
{
	unsigned flags = (add_special ? TOK_ADD_BOS : 0) |
	        (parse_special ? TOK_PARSE_SPECIAL : 0);
	return tok_encode(r->tok, text, len, flags, ids, n);
}

int
router_chat_prompt(struct router *r, const char *const *roles,
        const char *const *contents, size_t n, int32_t **ids, size_t *n_ids)
{
	struct chat_msg *msgs = calloc(n ? n : 1, sizeof(*msgs));
	char *text = NULL;
	int rc;

	if (msgs == NULL)
		return EPMOE_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		msgs[i].role = roles[i];
		msgs[i].content = contents[i];
	}
	rc = chat_apply(r->chat_template, msgs, n, true, &text);
	free(msgs);
	if (rc)
		return rc;
	/* the template writes the special tokens as text: parse them; BOS
	 * comes from the tokenizer's own rule unless the template wrote it */
	bool has_bos = false;
	int32_t bos = tok_bos(r->tok);
	if (bos != TOK_ID_NONE) {
		size_t bl;
		const char *bt = tok_token_text(r->tok, bos, &bl);
		has_bos = bt && bl && strncmp(text, bt, bl) == 0;
	}
	rc = router_tokenize(r, text, strlen(text), !has_bos, true, ids, n_ids);
	free(text);
	return rc;
}
