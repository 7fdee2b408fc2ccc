/* The router's core: model, tokenizer, engine, experts (in process, or the
 * worker cluster with its dispatch backend and local workers) and the
 * scheduler; and the prompt building the front ends share.  See router.h.
 * Loop thread only. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "affinity.h"
#include "chat.h"
#include "cluster.h"
#include "dashboard.h"
#include "dispatch.h"
#include "err.h"
#include "gguf.h"
#include "log.h"
#include "netsock.h"
#include "router.h"
#include "spawn.h"

/* Cluster events (its control thread): a hung worker is queued for the
 * loop thread, which owns the local workers. */
static void
on_cluster_event(void *arg, const struct cluster_event *ev)
{
	struct router *r = arg;

	if (!ev->hung)
		return;
	pthread_mutex_lock(&r->hung_mu);
	if (r->n_hung < sizeof(r->hung) / sizeof(r->hung[0])) {
		snprintf(r->hung[r->n_hung].id, sizeof(r->hung[0].id), "%s", ev->id);
		r->hung[r->n_hung].silent_ms = ev->silent_ms;
		r->n_hung++;
	}
	pthread_mutex_unlock(&r->hung_mu);
}

/* Kills the local workers reported hung (spawn_poll restarts them). */
static void
kill_hung(struct router *r)
{
	struct router_hung h[8];
	uint32_t n;

	pthread_mutex_lock(&r->hung_mu);
	n = r->n_hung;
	memcpy(h, r->hung, n * sizeof(h[0]));
	r->n_hung = 0;
	pthread_mutex_unlock(&r->hung_mu);
	for (uint32_t i = 0; i < n; i++) {
		long pid = spawn_kill_id(r->spawned, h[i].id, SIGKILL, h[i].silent_ms);
		if (pid > 0)
			log_warn("worker %s (pid %ld) hung (silent for %u ms or missing its deadlines): killed, it will be restarted",
			        h[i].id, pid, h[i].silent_ms);
	}
}

static void
on_reap(uv_timer_t *t)
{
	struct router *r = t->data;

	if (r->spawned) {
		kill_hung(r);
		spawn_poll(r->spawned);
	}
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

static int group_experts(struct router *r, struct cluster_cfg *cc);

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
	if (r->tls != NULL) {
		sc.tls_cert = r->cfg.tls_cert;
		sc.tls_key = r->cfg.tls_key;
		sc.tls_ca = r->cfg.tls_ca;
	}
	if ((rc = spawn_start(&r->spawned, &sc)) != 0) {
		log_error("cannot start %d local workers: %s", r->cfg.workers,
		        epmoe_strerror(rc));
		return rc;
	}
	uv_timer_init(r->loop, &r->reap_timer);
	r->reap_timer.data = r;
	uv_timer_start(&r->reap_timer, on_reap, 200, 200);
	r->reap_timer_on = true;
	return 0;
}

/* Bytes of one expert's three matrices, as the model holds them or as a
 * Q8_0 copy. */
static uint64_t
expert_bytes(const struct model *m, bool q8)
{
	uint64_t n = 0;

	for (int k = MODEL_EXP_GATE; k <= MODEL_EXP_DOWN; k++) {
		struct tmat t = model_expert(&m->layers[0], &m->hp, (enum model_expert_mat)k, 0);
		n += (uint64_t)t.n_out * (q8 ? dtype_row_size(DTYPE_Q8_0, t.n_in) : t.row_size);
	}
	return n;
}

/* --replica-dtype q8_0 applies when a Q8_0 copy is smaller than the
 * model's experts and their rows split into Q8_0 blocks; otherwise it is
 * turned off with a warning (replicas stay exact). */
static bool
replica_q8_useful(struct router *r)
{
	const struct model_hparams *hp = &r->model->hp;

	if (!r->cfg.replica_q8)
		return false;
	if (hp->n_embd % QK8_0 != 0 || hp->n_ff_exp % QK8_0 != 0) {
		log_warn("--replica-dtype q8_0: expert rows (%u, %u values) are not whole Q8_0 blocks of %d; replicas stay exact",
		        hp->n_embd, hp->n_ff_exp, QK8_0);
		r->cfg.replica_q8 = false;
	} else if (expert_bytes(r->model, true) >= expert_bytes(r->model, false)) {
		log_warn("--replica-dtype q8_0: the experts are already %s, no larger than Q8_0; replicas stay as they are",
		        dtype_name(model_expert(&r->model->layers[0], hp, MODEL_EXP_GATE, 0).type));
		r->cfg.replica_q8 = false;
	}
	return r->cfg.replica_q8;
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

	if ((r->cfg.tls_cert || r->cfg.tls_key || r->cfg.tls_ca) &&
	        (rc = netsock_tls_new(&r->tls, r->cfg.tls_cert, r->cfg.tls_key,
	             r->cfg.tls_ca, err, sizeof(err))) != 0) {
		log_error("%s", err);
		return rc;
	}
	if (netsock_url_check(r->cfg.control_url, r->tls, err, sizeof(err)) != 0) {
		log_error("--control %s", err);
		return EPMOE_EINVAL;
	}
	cc.control_url = r->cfg.control_url;
	cc.tls = r->tls;
	cc.model = r->model;
	cc.placement_file = r->cfg.placement;
	cc.experts_per_worker = r->cfg.experts_per_worker;
	cc.n_workers = (uint32_t)r->cfg.expect_workers;
	cc.heartbeat_ms = r->cfg.heartbeat_ms;
	cc.no_degraded = r->cfg.no_degraded;
	cc.elastic = r->cfg.elastic;
	cc.replica_q8 = replica_q8_useful(r);
	cc.max_workers = r->cfg.max_workers;
	if (cc.max_workers == 0 && r->cfg.elastic)
		cc.max_workers = 2 * (uint32_t)r->cfg.expect_workers;
	if ((rc = group_experts(r, &cc)) != 0)
		return rc;
	if ((rc = cluster_new(&r->cluster, &cc, err, sizeof(err))) != 0) {
		log_error("%s", err[0] ? err : epmoe_strerror(rc));
		return rc;
	}
	if (pthread_mutex_init(&r->hung_mu, NULL) != 0)
		return EPMOE_ENOMEM;
	r->hung_mu_ok = true;
	cluster_set_event_cb(r->cluster, on_cluster_event, r);
	if ((rc = cluster_start(r->cluster)) != 0) {
		log_error("cannot listen for workers on %s: %s", r->cfg.control_url,
		        epmoe_strerror(rc));
		return rc;
	}
	dc.timeout_ms = r->cfg.expert_timeout_ms;
	dc.floor_ms = r->cfg.deadline_floor_ms;
	dc.deadline_k = r->cfg.deadline_k;
	dc.hedge = r->cfg.hedge;
	dc.replica_seed = r->cfg.replica_seed;
	dc.llep = (r->cfg.balance & BAL_LLEP) != 0;
	dc.llep_cfg = (struct llep_cfg){ .alpha = r->cfg.llep_alpha,
		.lambda = r->cfg.llep_lambda, .m_min = r->cfg.llep_min_chunk ? r->cfg.llep_min_chunk : 4 };
	if (r->cfg.replica && replica_mode_parse(r->cfg.replica, &dc.replica) != 0) {
		log_error("--replica %s: expected static or dynamic", r->cfg.replica);
		return EPMOE_EINVAL;
	}
	if ((rc = dispatch_new(&r->dispatch, r->cluster, r->model, &dc)) != 0) {
		log_error("cannot create the expert dispatcher: %s", epmoe_strerror(rc));
		return rc;
	}
	engine_set_experts(r->engine, r->dispatch);
	if (r->cfg.workers > 0 && (rc = spawn_workers(r)) != 0)
		return rc;
	load_worker_map(r);
	log_info("expecting %d workers on %s%s; replica choice %s, batch deadline max(%u ms, %.1f x p99) up to %u ms, hedging %s",
	        r->cfg.expect_workers, cluster_control_url(r->cluster),
	        r->cfg.workers ? " (started locally)" : "", replica_mode_name(dc.replica),
	        dc.floor_ms ? dc.floor_ms : 200, dc.deadline_k > 0 ? dc.deadline_k : 3.0,
	        dc.timeout_ms, dc.hedge > 0 ? "on" : "off");
	return 0;
}

/* Load statistics always; re-placement when the experts are on workers. */
static int
start_balancer(struct router *r)
{
	const struct model_hparams *hp = &r->model->hp;
	struct bal_cfg bc = { .mode = r->cfg.balance, .window = r->cfg.eplb_window,
		.interval = r->cfg.eplb_interval, .threshold = r->cfg.eplb_threshold,
		.redundant = r->cfg.redundant_slots, .replica_ram_mb = r->cfg.replica_ram_mb,
		.hosts = r->cfg.hosts, .record_path = r->cfg.record_routing,
		.llep_lambda = r->cfg.llep_lambda, .llep_cache = r->cfg.llep_cache,
		.dash = r->dash };
	/* the replica budget buys copies at the size replicas are held */
	uint64_t eb = expert_bytes(r->model, r->cfg.replica_q8 && r->cluster);
	int rc;

	if ((rc = bal_new(&r->bal, &bc, hp->n_layer, hp->n_expert, r->cluster, eb)) != 0) {
		log_error("cannot start the balancer: %s", epmoe_strerror(rc));
		return rc;
	}
	if (r->cluster)
		log_info("balance %s: EPLB every %u steps above worker max/mean %.2f with %u redundant slots a layer (%.1f MiB a replica, %s), LLEP above %.2f",
		        bal_mode_name(r->cfg.balance), bc.interval ? bc.interval : 64,
		        bc.threshold > 0 ? bc.threshold : 1.10, bal_redundant(r->bal),
		        (double)eb / 1048576.0, r->cfg.replica_q8 ? "Q8_0" : "exact",
		        r->cfg.llep_lambda > 0 ? r->cfg.llep_lambda : 1.3);
	return 0;
}

int
router_spec_parse(const char *s, unsigned *out)
{
	static const struct { const char *name; unsigned bits; } parts[] = {
		{ "off", 0 }, { "predict", ROUTER_SPEC_PREDICT }, { "group", ROUTER_SPEC_GROUP },
		{ "cobatch", ROUTER_SPEC_COBATCH }, { "prefetch", ROUTER_SPEC_PREFETCH },
		{ "all", ROUTER_SPEC_ALL },
	};
	unsigned bits = 0;
	const char *p = s;

	if (s == NULL || *s == '\0')
		return EPMOE_EINVAL;
	while (*p) {
		size_t n = strcspn(p, "+,");
		size_t i;
		for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
			if (strlen(parts[i].name) == n && strncmp(p, parts[i].name, n) == 0)
				break;
		if (i == sizeof(parts) / sizeof(parts[0]))
			return EPMOE_EINVAL;
		bits |= parts[i].bits;
		p += n;
		if (*p && *++p == '\0')
			return EPMOE_EINVAL;
	}
	*out = bits;
	return 0;
}

const char *
router_spec_name(unsigned spec, char *buf, size_t len)
{
	static const char *names[] = { "predict", "group", "cobatch", "prefetch" };
	size_t at = 0;

	if (spec == 0)
		return "off";
	if ((spec & ROUTER_SPEC_ALL) == ROUTER_SPEC_ALL)
		return "all";
	buf[0] = '\0';
	for (int i = 0; i < 4; i++)
		if (spec & (1u << i))
			at += (size_t)snprintf(buf + at, at < len ? len - at : 0, "%s%s",
			        at ? "+" : "", names[i]);
	return buf;
}

/* The speculative pre-scheduler's affinity model: loaded from --affinity
 * (or empty, learnt online), attached to the engine with --spec predict,
 * cobatch or prefetch. */
static int
load_affinity(struct router *r)
{
	const struct model_hparams *hp = &r->model->hp;
	char err[512] = "";
	int rc;

	if (!(r->cfg.spec & ROUTER_SPEC_ALL))
		return 0;
	if (r->cfg.affinity && *r->cfg.affinity) {
		if ((rc = affinity_load_file(&r->affinity, r->cfg.affinity, hp->n_layer,
		             hp->n_expert, hp->n_vocab, err, sizeof(err))) != 0) {
			log_error("--affinity: %s", err);
			return rc;
		}
	} else if ((rc = affinity_new(&r->affinity, hp->n_layer, hp->n_expert,
	                 hp->n_vocab, 0)) != 0) {
		log_error("cannot create the affinity model: %s", epmoe_strerror(rc));
		return rc;
	}
	/* co-batching and prefetch hints plan with the predictions, so they
	 * feed the model */
	if (r->cfg.spec & (ROUTER_SPEC_PREDICT | ROUTER_SPEC_COBATCH | ROUTER_SPEC_PREFETCH))
		engine_set_affinity(r->engine, r->affinity);
	if ((r->cfg.spec & ROUTER_SPEC_PREFETCH) &&
	        (rc = engine_set_prefetch(r->engine, true)) != 0) {
		log_error("cannot set up prefetch hints: %s", epmoe_strerror(rc));
		return rc;
	}
	if (r->cfg.spec & ROUTER_SPEC_COBATCH)
		engine_set_microbatch(r->engine, true, true);
	return 0;
}

/* --spec group: experts often chosen together by one token share a
 * worker (balanced co-clustering of the affinity file's counts), when
 * the placement is otherwise the default even split. */
static int
group_experts(struct router *r, struct cluster_cfg *cc)
{
	const struct model_hparams *hp = &r->model->hp;
	int rc;

	if (!(r->cfg.spec & ROUTER_SPEC_GROUP) || r->affinity == NULL)
		return 0;
	if ((r->cfg.placement && *r->cfg.placement) ||
	        (r->cfg.experts_per_worker && *r->cfg.experts_per_worker)) {
		log_info("spec: --placement / --experts-per-worker given; no expert grouping");
		return 0;
	}
	if (r->cfg.affinity == NULL || *r->cfg.affinity == '\0') {
		log_info("spec: no --affinity file; no expert grouping");
		return 0;
	}
	if (cc->n_workers == 0 || cc->n_workers > hp->n_expert)
		return 0;
	r->grouped = malloc((size_t)hp->n_layer * hp->n_expert * sizeof(*r->grouped));
	if (r->grouped == NULL)
		return EPMOE_ENOMEM;
	if ((rc = affinity_group(r->affinity, cc->n_workers, 0.2, r->grouped)) != 0) {
		log_error("spec: expert grouping failed: %s", epmoe_strerror(rc));
		return rc;
	}
	cc->worker_of = r->grouped;
	log_info("spec: experts grouped by co-activation over %u workers", cc->n_workers);
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
	return load_affinity(r);
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
	if ((rc = dash_new(&r->dash)) != 0)
		return rc;
	if ((rc = load_model(r)) != 0 || (rc = check_default_routing(r)) != 0)
		return rc;
	if (!r->cfg.local && (rc = start_workers(r)) != 0)
		return rc;
	if ((rc = start_balancer(r)) != 0)
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
	if (r->cluster)
		cluster_closing(r->cluster);
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
	bal_free(r->bal);
	r->bal = NULL;
	cluster_free(r->cluster);
	r->cluster = NULL;
	if (r->hung_mu_ok) {
		pthread_mutex_destroy(&r->hung_mu);
		r->hung_mu_ok = false;
	}
	netsock_tls_free(r->tls);
	r->tls = NULL;
	engine_free(r->engine);
	affinity_free(r->affinity);
	free(r->grouped);
	r->affinity = NULL;
	r->grouped = NULL;
	tok_free(r->tok);
	free(r->chat_template);
	free(r->worker_of);
	model_free(r->model);
	dash_free(r->dash);
	r->dash = NULL;
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
