/* Placement maps: contiguous blocks, explicit counts, JSON files, and the
 * slot tables built from them.  See placement.h. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "placement.h"

/* What a placement is built from: the workers serving each (layer,
 * expert), owner lists of up to r_cap entries. */
struct plan {
	uint32_t L, E, W, r_cap;
	uint32_t *cnt; /* [L][E] */
	int32_t *wk;   /* [L][E][r_cap] */
};

static int
plan_init(struct plan *pl, uint32_t L, uint32_t E, uint32_t W, uint32_t r_cap)
{
	memset(pl, 0, sizeof(*pl));
	pl->L = L;
	pl->E = E;
	pl->W = W;
	pl->r_cap = r_cap;
	pl->cnt = calloc((size_t)L * E, sizeof(*pl->cnt));
	pl->wk = malloc((size_t)L * E * r_cap * sizeof(*pl->wk));
	if (pl->cnt == NULL || pl->wk == NULL) {
		free(pl->cnt);
		free(pl->wk);
		return EPMOE_ENOMEM;
	}
	return 0;
}

static void
plan_fini(struct plan *pl)
{
	free(pl->cnt);
	free(pl->wk);
}

void
placement_free(struct placement *p)
{
	if (p == NULL)
		return;
	free(p->slot_worker);
	free(p->phy2log);
	free(p->log2phy);
	free(p->logcnt);
	free(p);
}

/* Slot tables from a plan whose every (layer, expert) has >= 1 owner,
 * owners distinct and < W (checked by the callers). */
static int
plan_build(const struct plan *pl, struct placement **out)
{
	struct placement *p;
	uint32_t L = pl->L, E = pl->E, W = pl->W, S = 0, R = 1;
	uint32_t *start = NULL;
	int rc = EPMOE_ENOMEM;

	for (uint32_t l = 0; l < L; l++) {
		uint32_t s = 0;
		for (uint32_t e = 0; e < E; e++) {
			uint32_t c = pl->cnt[(size_t)l * E + e];
			s += c;
			if (c > R)
				R = c;
		}
		if (s > S)
			S = s;
	}
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return EPMOE_ENOMEM;
	p->epoch = 1;
	p->n_layer = L;
	p->n_expert = E;
	p->n_worker = W;
	p->n_slot = S;
	p->max_copies = R;
	p->slot_worker = malloc((size_t)L * S * sizeof(int32_t));
	p->phy2log = malloc((size_t)L * S * sizeof(int32_t));
	p->log2phy = malloc((size_t)L * E * R * sizeof(int32_t));
	p->logcnt = calloc((size_t)L * E, sizeof(int32_t));
	start = calloc((size_t)W + 1, sizeof(*start));
	if (!p->slot_worker || !p->phy2log || !p->log2phy || !p->logcnt || !start)
		goto out;
	memset(p->slot_worker, 0xff, (size_t)L * S * sizeof(int32_t));
	memset(p->phy2log, 0xff, (size_t)L * S * sizeof(int32_t));
	memset(p->log2phy, 0xff, (size_t)L * E * R * sizeof(int32_t));
	for (uint32_t l = 0; l < L; l++) {
		const uint32_t *cnt = pl->cnt + (size_t)l * E;
		const int32_t *wk = pl->wk + (size_t)l * E * pl->r_cap;
		int32_t *sw = p->slot_worker + (size_t)l * S;
		int32_t *se = p->phy2log + (size_t)l * S;

		/* counting sort of the (worker, expert) pairs by worker; experts
		 * are visited in ascending order so each worker's run is sorted */
		memset(start, 0, ((size_t)W + 1) * sizeof(*start));
		for (uint32_t e = 0; e < E; e++)
			for (uint32_t r = 0; r < cnt[e]; r++)
				start[wk[(size_t)e * pl->r_cap + r] + 1]++;
		for (uint32_t w = 0; w < W; w++)
			start[w + 1] += start[w];
		/* copies keep the order they were given in (log2phy[.][r] is
		 * the r-th owner listed), whatever their slot numbers */
		for (uint32_t e = 0; e < E; e++) {
			size_t i = (size_t)l * E + e;
			for (uint32_t r = 0; r < cnt[e]; r++) {
				int32_t w = wk[(size_t)e * pl->r_cap + r];
				uint32_t s = start[w]++;
				sw[s] = w;
				se[s] = (int32_t)e;
				p->log2phy[i * R + r] = (int32_t)s;
			}
			p->logcnt[i] = (int32_t)cnt[e];
		}
	}
	free(start);
	*out = p;
	return 0;
out:
	free(start);
	placement_free(p);
	return rc;
}

int
placement_from_counts(struct placement **out, uint32_t n_layer,
        uint32_t n_expert, const uint32_t *counts, uint32_t n_worker,
        char *err, size_t err_len)
{
	struct plan pl;
	uint64_t sum = 0;
	int rc;

	if (n_layer == 0 || n_expert == 0 || n_worker == 0 ||
	        n_worker > PLACEMENT_MAX_WORKERS || counts == NULL) {
		epmoe_set_err(err, err_len, "placement needs 1..%d workers and a model with experts",
		        PLACEMENT_MAX_WORKERS);
		return EPMOE_EINVAL;
	}
	for (uint32_t w = 0; w < n_worker; w++)
		sum += counts[w];
	if (sum != n_expert) {
		epmoe_set_err(err, err_len, "experts per worker sum to %llu, the model has %u experts",
		        (unsigned long long)sum, n_expert);
		return EPMOE_EINVAL;
	}
	if ((rc = plan_init(&pl, n_layer, n_expert, n_worker, 1)) != 0)
		return rc;
	for (uint32_t l = 0; l < n_layer; l++) {
		uint32_t e = 0;
		for (uint32_t w = 0; w < n_worker; w++) {
			for (uint32_t i = 0; i < counts[w]; i++, e++) {
				pl.cnt[(size_t)l * n_expert + e] = 1;
				pl.wk[(size_t)l * n_expert + e] = (int32_t)w;
			}
		}
	}
	rc = plan_build(&pl, out);
	plan_fini(&pl);
	return rc;
}

int
placement_contiguous(struct placement **out, uint32_t n_layer,
        uint32_t n_expert, uint32_t n_worker)
{
	uint32_t *counts;
	int rc;

	if (n_worker == 0 || n_worker > n_expert ||
	        n_worker > PLACEMENT_MAX_WORKERS)
		return EPMOE_EINVAL;
	if ((counts = malloc(n_worker * sizeof(*counts))) == NULL)
		return EPMOE_ENOMEM;
	for (uint32_t w = 0; w < n_worker; w++)
		counts[w] = n_expert / n_worker + (w < n_expert % n_worker);
	rc = placement_from_counts(out, n_layer, n_expert, counts, n_worker,
	        NULL, 0);
	free(counts);
	return rc;
}

int
placement_parse_counts(const char *s, uint32_t **counts, uint32_t *n_worker,
        char *err, size_t err_len)
{
	uint32_t *c, n = 0, cap = 1;
	const char *p;

	if (s == NULL || *s == '\0') {
		epmoe_set_err(err, err_len, "empty experts-per-worker list");
		return EPMOE_EINVAL;
	}
	for (p = s; *p; p++)
		cap += *p == ',';
	if (cap > PLACEMENT_MAX_WORKERS) {
		epmoe_set_err(err, err_len, "more than %d workers in the experts-per-worker list",
		        PLACEMENT_MAX_WORKERS);
		return EPMOE_EINVAL;
	}
	if ((c = malloc(cap * sizeof(*c))) == NULL)
		return EPMOE_ENOMEM;
	p = s;
	for (;;) {
		char *end;
		unsigned long v;

		if (*p < '0' || *p > '9') {
			epmoe_set_err(err, err_len, "experts-per-worker list '%s': expected a number at position %zu",
			        s, (size_t)(p - s) + 1);
			free(c);
			return EPMOE_EINVAL;
		}
		errno = 0;
		v = strtoul(p, &end, 10);
		if (errno != 0 || v > 65536) {
			epmoe_set_err(err, err_len, "experts-per-worker list '%s': count out of range", s);
			free(c);
			return EPMOE_EINVAL;
		}
		c[n++] = (uint32_t)v;
		p = end;
		if (*p == '\0')
			break;
		if (*p != ',') {
			epmoe_set_err(err, err_len, "experts-per-worker list '%s': unexpected '%c'", s, *p);
			free(c);
			return EPMOE_EINVAL;
		}
		p++;
	}
	*counts = c;
	*n_worker = n;
	return 0;
}

/* A worker index from a JSON number: integral, in range. */
static int
json_worker(const cJSON *v, int32_t *out)
{
	double d;

	if (!cJSON_IsNumber(v))
		return EPMOE_EFORMAT;
	d = v->valuedouble;
	if (d < 0 || d >= PLACEMENT_MAX_WORKERS || d != (double)(int32_t)d)
		return EPMOE_EFORMAT;
	*out = (int32_t)d;
	return 0;
}

static int
parse_layer(const cJSON *lay, uint32_t li, struct plan *pl, uint32_t dst_l,
        int32_t *max_w, char *err, size_t err_len)
{
	const cJSON *ent;
	uint32_t e = 0, E = pl->E;

	if (!cJSON_IsArray(lay)) {
		epmoe_set_err(err, err_len, "layers[%u] is not an array", li);
		return EPMOE_EFORMAT;
	}
	if ((uint32_t)cJSON_GetArraySize(lay) != E) {
		epmoe_set_err(err, err_len, "layers[%u] has %d entries, the model has %u experts",
		        li, cJSON_GetArraySize(lay), E);
		return EPMOE_EFORMAT;
	}
	cJSON_ArrayForEach(ent, lay) {
		size_t i = (size_t)dst_l * E + e;
		int32_t *wk = pl->wk + i * pl->r_cap;
		uint32_t n = 0;

		if (cJSON_IsArray(ent)) {
			const cJSON *r;
			if (cJSON_GetArraySize(ent) < 1 ||
			        (uint32_t)cJSON_GetArraySize(ent) > pl->r_cap) {
				epmoe_set_err(err, err_len, "layers[%u][%u]: a replica list needs 1..%u workers",
				        li, e, pl->r_cap);
				return EPMOE_EFORMAT;
			}
			cJSON_ArrayForEach(r, ent) {
				if (json_worker(r, &wk[n]) != 0) {
					epmoe_set_err(err, err_len, "layers[%u][%u]: worker indices must be integers in [0, %d)",
					        li, e, PLACEMENT_MAX_WORKERS);
					return EPMOE_EFORMAT;
				}
				for (uint32_t k = 0; k < n; k++) {
					if (wk[k] == wk[n]) {
						epmoe_set_err(err, err_len, "layers[%u][%u]: worker %d listed twice",
						        li, e, wk[n]);
						return EPMOE_EFORMAT;
					}
				}
				n++;
			}
		} else if (json_worker(ent, &wk[0]) == 0) {
			n = 1;
		} else {
			epmoe_set_err(err, err_len, "layers[%u][%u]: expected a worker index or an array of them (integers in [0, %d))",
			        li, e, PLACEMENT_MAX_WORKERS);
			return EPMOE_EFORMAT;
		}
		for (uint32_t k = 0; k < n; k++)
			if (wk[k] > *max_w)
				*max_w = wk[k];
		pl->cnt[i] = n;
		e++;
	}
	return 0;
}

int
placement_from_json(struct placement **out, const char *json, size_t json_len,
        uint32_t n_layer, uint32_t n_expert, char *err, size_t err_len)
{
	cJSON *root;
	const cJSON *layers, *nw;
	struct plan pl;
	uint32_t n_given, r_cap = 1;
	int32_t max_w = -1;
	int rc;

	if (n_layer == 0 || n_expert == 0 || json == NULL)
		return EPMOE_EINVAL;
	if ((root = cJSON_ParseWithLength(json, json_len)) == NULL) {
		epmoe_set_err(err, err_len, "not valid JSON");
		return EPMOE_EFORMAT;
	}
	layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
	if (!cJSON_IsObject(root) || !cJSON_IsArray(layers)) {
		epmoe_set_err(err, err_len, "expected an object with a \"layers\" array");
		cJSON_Delete(root);
		return EPMOE_EFORMAT;
	}
	n_given = (uint32_t)cJSON_GetArraySize(layers);
	if (n_given != 1 && n_given != n_layer) {
		epmoe_set_err(err, err_len, "\"layers\" has %u entries; expected 1 (every layer) or %u",
		        n_given, n_layer);
		cJSON_Delete(root);
		return EPMOE_EFORMAT;
	}
	/* the longest replica list bounds the owner lists */
	{
		const cJSON *lay, *ent;
		cJSON_ArrayForEach(lay, layers) {
			if (!cJSON_IsArray(lay))
				continue;
			cJSON_ArrayForEach(ent, lay) {
				if (cJSON_IsArray(ent) &&
				        (uint32_t)cJSON_GetArraySize(ent) > r_cap)
					r_cap = (uint32_t)cJSON_GetArraySize(ent);
			}
		}
		if (r_cap > PLACEMENT_MAX_WORKERS)
			r_cap = PLACEMENT_MAX_WORKERS;
	}
	if ((rc = plan_init(&pl, n_layer, n_expert, 0, r_cap)) != 0) {
		cJSON_Delete(root);
		return rc;
	}
	for (uint32_t l = 0; l < n_layer; l++) {
		uint32_t li = n_given == 1 ? 0 : l;
		const cJSON *lay = cJSON_GetArrayItem(layers, (int)li);
		if ((rc = parse_layer(lay, li, &pl, l, &max_w, err, err_len)) != 0)
			goto out;
	}
	pl.W = (uint32_t)(max_w + 1);
	nw = cJSON_GetObjectItemCaseSensitive(root, "n_workers");
	if (nw != NULL) {
		int32_t w;
		if (json_worker(nw, &w) != 0 || w < 1 || w <= max_w) {
			epmoe_set_err(err, err_len, "\"n_workers\" must be an integer in (%d, %d]",
			        max_w, PLACEMENT_MAX_WORKERS - 1);
			rc = EPMOE_EFORMAT;
			goto out;
		}
		pl.W = (uint32_t)w;
	}
	rc = plan_build(&pl, out);
out:
	plan_fini(&pl);
	cJSON_Delete(root);
	return rc;
}

int
placement_load_file(struct placement **out, const char *path, uint32_t n_layer,
        uint32_t n_expert, char *err, size_t err_len)
{
	FILE *f;
	char *buf;
	long n;
	int rc;

	if ((f = fopen(path, "rb")) == NULL) {
		epmoe_set_err(err, err_len, "%s: %s", path, strerror(errno));
		return EPMOE_EIO;
	}
	if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
	        fseek(f, 0, SEEK_SET) != 0) {
		epmoe_set_err(err, err_len, "%s: cannot read", path);
		fclose(f);
		return EPMOE_EIO;
	}
	if (n > (64L << 20)) {
		epmoe_set_err(err, err_len, "%s: larger than 64 MiB", path);
		fclose(f);
		return EPMOE_EFORMAT;
	}
	if ((buf = malloc((size_t)n + 1)) == NULL) {
		fclose(f);
		return EPMOE_ENOMEM;
	}
	if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
		epmoe_set_err(err, err_len, "%s: cannot read", path);
		free(buf);
		fclose(f);
		return EPMOE_EIO;
	}
	fclose(f);
	buf[n] = '\0';
	rc = placement_from_json(out, buf, (size_t)n, n_layer, n_expert, err,
	        err_len);
	if (rc != 0 && err && err_len) {
		/* prefix the path to the parser's message */
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", err);
		epmoe_set_err(err, err_len, "%s: %s", path, msg);
	}
	free(buf);
	return rc;
}

int
placement_to_json(const struct placement *p, cJSON **out)
{
	cJSON *root, *layers;

	if ((root = cJSON_CreateObject()) == NULL)
		return EPMOE_ENOMEM;
	if (!cJSON_AddNumberToObject(root, "epoch", (double)p->epoch) ||
	        !cJSON_AddNumberToObject(root, "n_workers", p->n_worker) ||
	        !cJSON_AddNumberToObject(root, "n_layers", p->n_layer) ||
	        !cJSON_AddNumberToObject(root, "n_experts", p->n_expert) ||
	        !cJSON_AddNumberToObject(root, "n_slots", p->n_slot) ||
	        (layers = cJSON_AddArrayToObject(root, "layers")) == NULL)
		goto nomem;
	for (uint32_t l = 0; l < p->n_layer; l++) {
		cJSON *lay = cJSON_CreateArray();
		if (lay == NULL)
			goto nomem;
		cJSON_AddItemToArray(layers, lay);
		for (uint32_t e = 0; e < p->n_expert; e++) {
			uint32_t n = placement_expert_copies(p, l, e);
			cJSON *v;
			if (n == 1) {
				v = cJSON_CreateNumber(placement_slot_worker(p, l,
				        (uint32_t)placement_expert_slot(p, l, e, 0)));
			} else {
				v = cJSON_CreateArray();
				for (uint32_t r = 0; v && r < n; r++) {
					cJSON *x = cJSON_CreateNumber(placement_slot_worker(p,
					        l, (uint32_t)placement_expert_slot(p, l, e, r)));
					if (x == NULL) {
						cJSON_Delete(v);
						v = NULL;
						break;
					}
					cJSON_AddItemToArray(v, x);
				}
			}
			if (v == NULL)
				goto nomem;
			cJSON_AddItemToArray(lay, v);
		}
	}
	*out = root;
	return 0;
nomem:
	cJSON_Delete(root);
	return EPMOE_ENOMEM;
}

uint32_t
placement_worker_slots(const struct placement *p, uint32_t w)
{
	uint32_t n = 0;

	for (size_t i = 0; i < (size_t)p->n_layer * p->n_slot; i++)
		n += p->slot_worker[i] == (int32_t)w;
	return n;
}

bool
placement_has(const struct placement *p, uint32_t l, uint32_t e, uint32_t w)
{
	for (uint32_t r = 0; r < placement_expert_copies(p, l, e); r++)
		if (placement_slot_worker(p, l, (uint32_t)placement_expert_slot(p, l, e,
		        r)) == (int32_t)w)
			return true;
	return false;
}

int
placement_build(struct placement **out, uint32_t n_layer, uint32_t n_expert,
        uint32_t n_worker, const uint32_t *cnt, const int32_t *owners,
        uint32_t r_cap)
{
	struct plan pl;
	int rc;

	if (n_layer == 0 || n_expert == 0 || n_worker == 0 ||
	        n_worker > PLACEMENT_MAX_WORKERS || r_cap == 0)
		return EPMOE_EINVAL;
	for (size_t i = 0; i < (size_t)n_layer * n_expert; i++) {
		const int32_t *o = owners + i * r_cap;
		if (cnt[i] < 1 || cnt[i] > r_cap)
			return EPMOE_EINVAL;
		for (uint32_t r = 0; r < cnt[i]; r++) {
			if (o[r] < 0 || (uint32_t)o[r] >= n_worker)
				return EPMOE_EINVAL;
			for (uint32_t q = 0; q < r; q++)
				if (o[q] == o[r])
					return EPMOE_EINVAL;
		}
	}
	if ((rc = plan_init(&pl, n_layer, n_expert, n_worker, r_cap)) != 0)
		return rc;
	memcpy(pl.cnt, cnt, (size_t)n_layer * n_expert * sizeof(*cnt));
	memcpy(pl.wk, owners, (size_t)n_layer * n_expert * r_cap * sizeof(*owners));
	rc = plan_build(&pl, out);
	plan_fini(&pl);
	return rc;
}

bool
placement_layer_equal(const struct placement *a, const struct placement *b,
        uint32_t l)
{
	if (a->n_expert != b->n_expert || l >= a->n_layer || l >= b->n_layer)
		return false;
	for (uint32_t e = 0; e < a->n_expert; e++) {
		uint32_t n = placement_expert_copies(a, l, e);
		if (n != placement_expert_copies(b, l, e))
			return false;
		for (uint32_t r = 0; r < n; r++)
			if (placement_slot_worker(a, l, (uint32_t)placement_expert_slot(a, l, e, r)) !=
			        placement_slot_worker(b, l, (uint32_t)placement_expert_slot(b, l, e, r)))
				return false;
	}
	return true;
}

/* Owner lists of a map's layer l into the plan's layer l. */
static void
plan_take_layer(struct plan *pl, const struct placement *p, uint32_t l)
{
	for (uint32_t e = 0; e < p->n_expert; e++) {
		size_t i = (size_t)l * pl->E + e;
		uint32_t n = placement_expert_copies(p, l, e);
		pl->cnt[i] = n;
		for (uint32_t r = 0; r < n; r++)
			pl->wk[i * pl->r_cap + r] = placement_slot_worker(p, l,
			        (uint32_t)placement_expert_slot(p, l, e, r));
	}
}

int
placement_mix(struct placement **out, const struct placement *base,
        const struct placement *other, const bool *take)
{
	uint32_t L = base->n_layer, E = base->n_expert;
	uint32_t W = base->n_worker > other->n_worker ? base->n_worker : other->n_worker;
	uint32_t R = base->max_copies > other->max_copies ? base->max_copies :
	        other->max_copies;
	struct plan pl;
	int rc;

	if (other->n_layer != L || other->n_expert != E)
		return EPMOE_EINVAL;
	if ((rc = plan_init(&pl, L, E, W, R)) != 0)
		return rc;
	for (uint32_t l = 0; l < L; l++)
		plan_take_layer(&pl, take[l] ? other : base, l);
	rc = plan_build(&pl, out);
	plan_fini(&pl);
	return rc;
}

int
placement_dup(struct placement **out, const struct placement *p)
{
	struct plan pl;
	int rc;

	if ((rc = plan_init(&pl, p->n_layer, p->n_expert, p->n_worker,
	             p->max_copies)) != 0)
		return rc;
	for (uint32_t l = 0; l < p->n_layer; l++)
		plan_take_layer(&pl, p, l);
	rc = plan_build(&pl, out);
	plan_fini(&pl);
	if (rc == 0)
		(*out)->epoch = p->epoch;
	return rc;
}

int
placement_copy_edit(struct placement **out, const struct placement *p, uint32_t l,
        uint32_t e, uint32_t w, bool add)
{
	struct plan pl;
	size_t i;
	int32_t *own;
	uint32_t r;
	int rc;

	if (l >= p->n_layer || e >= p->n_expert || w >= p->n_worker)
		return EPMOE_EINVAL;
	if ((rc = plan_init(&pl, p->n_layer, p->n_expert, p->n_worker,
	             p->max_copies + 1)) != 0)
		return rc;
	for (uint32_t k = 0; k < p->n_layer; k++)
		plan_take_layer(&pl, p, k);
	i = (size_t)l * p->n_expert + e;
	own = pl.wk + i * pl.r_cap;
	for (r = 0; r < pl.cnt[i] && own[r] != (int32_t)w; r++)
		;
	if (add && r == pl.cnt[i]) {
		own[pl.cnt[i]++] = (int32_t)w;
	} else if (!add && r < pl.cnt[i] && pl.cnt[i] > 1) {
		memmove(own + r, own + r + 1, (pl.cnt[i] - r - 1) * sizeof(*own));
		pl.cnt[i]--;
	} else {
		plan_fini(&pl);
		return EPMOE_EINVAL;
	}
	rc = plan_build(&pl, out);
	plan_fini(&pl);
	return rc;
}

int
placement_cover(struct placement **out, const struct placement *home,
        const bool *up, const bool *lost, const struct placement *prev,
        uint32_t *n_extra)
{
	uint32_t L = home->n_layer, E = home->n_expert, W = home->n_worker;
	uint32_t *per_w = NULL, extra = 0;
	struct plan pl;
	bool any_up = false;
	int rc;

	for (uint32_t w = 0; w < W; w++)
		any_up |= up[w];
	if ((rc = plan_init(&pl, L, E, W, home->max_copies + 1)) != 0)
		return rc;
	if ((per_w = calloc(W, sizeof(*per_w))) == NULL) {
		plan_fini(&pl);
		return EPMOE_ENOMEM;
	}
	for (uint32_t l = 0; l < L; l++) {
		plan_take_layer(&pl, home, l);
		memset(per_w, 0, W * sizeof(*per_w));
		for (uint32_t e = 0; e < E; e++) {
			size_t i = (size_t)l * E + e;
			for (uint32_t r = 0; r < pl.cnt[i]; r++)
				per_w[pl.wk[i * pl.r_cap + r]]++;
		}
		for (uint32_t e = 0; any_up && e < E; e++) {
			size_t i = (size_t)l * E + e;
			int32_t *o = pl.wk + i * pl.r_cap, pick = -1;
			bool covered = false, gone = false;

			for (uint32_t r = 0; r < pl.cnt[i] && !covered; r++) {
				covered = up[o[r]];
				gone |= lost == NULL || lost[o[r]];
			}
			if (covered || !gone)
				continue;
			/* the previous map's extra copy, if still up */
			for (uint32_t r = 0; prev && pick < 0 &&
			        r < placement_expert_copies(prev, l, e); r++) {
				int32_t w = placement_slot_worker(prev, l,
				        (uint32_t)placement_expert_slot(prev, l, e, r));
				if (w >= 0 && (uint32_t)w < W && up[w] &&
				        !placement_has(home, l, e, (uint32_t)w))
					pick = w;
			}
			if (pick < 0) {
				for (uint32_t w = 0; w < W; w++)
					if (up[w] && (pick < 0 || per_w[w] < per_w[pick]))
						pick = (int32_t)w;
			}
			o[pl.cnt[i]++] = pick;
			per_w[pick]++;
			extra++;
		}
	}
	rc = plan_build(&pl, out);
	plan_fini(&pl);
	free(per_w);
	if (rc == 0 && n_extra)
		*n_extra = extra;
	return rc;
}
