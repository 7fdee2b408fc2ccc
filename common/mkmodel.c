/* mkmodel: writes random-weight MoE models in GGUF with llama.cpp's tensor
 * names, shapes and metadata keys for llama (Mixtral), qwen2moe and olmoe.
 *
 * Weights come from a counter-based scheme: each tensor is cut into fixed
 * chunks of CHUNK elements and chunk c of tensor T draws from xoshiro256+
 * seeded by splitmix64(seed, hash(T), c).  Chunks are generated in
 * parallel straight into the writer's buffer, so the bytes depend only on
 * the configuration, never on the thread count or scheduling.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "err.h"
#include "gguf.h"
#include "hash.h"
#include "mkmodel.h"
#include "rng.h"

#define CHUNK 65536 /* elements per independently seeded chunk (mult. of 32) */
#define MAX_THREADS 64
#define SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's word boundary */

/* ---- configuration ---- */

static const char *const arch_names[] = { "llama", "qwen2moe", "olmoe" };

int
mkmodel_arch_parse(const char *s, enum mkmodel_arch *out)
{
	for (int i = 0; i < 3; i++) {
		if (strcmp(s, arch_names[i]) == 0) {
			*out = (enum mkmodel_arch)i;
			return 0;
		}
	}
	if (strcmp(s, "mixtral") == 0) {
		*out = MKMODEL_LLAMA;
		return 0;
	}
	return EPMOE_EINVAL;
}

const char *
mkmodel_arch_name(enum mkmodel_arch a)
{
	return (unsigned)a < 3 ? arch_names[a] : "unknown";
}

int
mkmodel_preset(struct mkmodel_cfg *cfg, enum mkmodel_arch arch,
        const char *preset)
{
	struct mkmodel_cfg c = {
		.arch = arch,
		.n_ctx = 4096,
		.rope_base = 10000.0f,
		.rms_eps = 1e-5f,
		.dtype = DTYPE_F32,
		.seed = 1,
		.n_expert = 8,
		.n_expert_used = 2,
	};

	if ((unsigned)arch >= 3)
		return EPMOE_EINVAL;
	if (strcmp(preset, "tiny") == 0) {
		c.n_layer = 2;
		c.n_embd = 64;
		c.n_ff = 128;
		c.n_ff_shexp = 192;
		c.n_vocab = 512;
		c.n_head = 4;
		c.n_head_kv = 2;
	} else if (strcmp(preset, "small") == 0) {
		c.n_layer = 8;
		c.n_embd = 1024;
		c.n_ff = 2816;
		c.n_ff_shexp = 2816;
		c.n_vocab = 32000;
		c.n_head = 16;
		c.n_head_kv = 4;
	} else {
		return EPMOE_EINVAL;
	}
	/* OLMoE's q/k norms span the full width, so k is as wide as q. */
	if (arch == MKMODEL_OLMOE)
		c.n_head_kv = c.n_head;
	*cfg = c;
	return 0;
}

static int
verr(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL && err_len > 0) {
		va_start(ap, fmt);
		vsnprintf(err, err_len, fmt, ap);
		va_end(ap);
	}
	return EPMOE_EINVAL;
}

static int
check_range(char *err, size_t err_len, const char *what, uint32_t v,
        uint32_t lo, uint32_t hi)
{
	if (v < lo || v > hi)
		return verr(err, err_len, "%s is %u, must be in %u..%u", what, v,
		        lo, hi);
	return 0;
}

int
mkmodel_validate(const struct mkmodel_cfg *c, char *err, size_t err_len)
{
	int rc;

	if ((unsigned)c->arch >= 3)
		return verr(err, err_len, "unknown architecture %d", c->arch);
	if ((rc = check_range(err, err_len, "layers", c->n_layer, 1, 1024)) ||
	        (rc = check_range(err, err_len, "dim", c->n_embd, 2, 65536)) ||
	        (rc = check_range(err, err_len, "ff", c->n_ff, 1, 1u << 20)) ||
	        (rc = check_range(err, err_len, "experts", c->n_expert, 1,
	                 1024)) ||
	        (rc = check_range(err, err_len, "top-k", c->n_expert_used, 1,
	                 c->n_expert)) ||
	        (rc = check_range(err, err_len, "heads", c->n_head, 1,
	                 c->n_embd)) ||
	        (rc = check_range(err, err_len, "kv-heads", c->n_head_kv, 1,
	                 c->n_head)) ||
	        (rc = check_range(err, err_len, "vocab", c->n_vocab,
	                 MKMODEL_MIN_VOCAB, MKMODEL_MAX_VOCAB)) ||
	        (rc = check_range(err, err_len, "context length", c->n_ctx, 1,
	                 1u << 24)))
		return rc;
	if (c->arch == MKMODEL_QWEN2MOE &&
	        (rc = check_range(err, err_len, "shared-ff", c->n_ff_shexp, 1,
	                 1u << 20)))
		return rc;
	if (c->n_embd % c->n_head != 0)
		return verr(err, err_len,
		        "dim %u is not divisible by heads %u", c->n_embd,
		        c->n_head);
	if ((c->n_embd / c->n_head) % 2 != 0)
		return verr(err, err_len,
		        "head dim %u (dim / heads) must be even for RoPE",
		        c->n_embd / c->n_head);
	if (c->n_head % c->n_head_kv != 0)
		return verr(err, err_len,
		        "heads %u is not divisible by kv-heads %u", c->n_head,
		        c->n_head_kv);
	if (c->arch == MKMODEL_OLMOE && c->n_head_kv != c->n_head)
		return verr(err, err_len,
		        "olmoe needs kv-heads == heads (its k norm spans the "
		        "full width): got heads %u, kv-heads %u",
		        c->n_head, c->n_head_kv);
	if (c->dtype != DTYPE_F32 && c->dtype != DTYPE_F16 &&
	        c->dtype != DTYPE_BF16 && c->dtype != DTYPE_Q8_0)
		return verr(err, err_len,
		        "dtype %s not supported (f32, f16, bf16, q8_0)",
		        dtype_name(c->dtype));
	if (c->dtype == DTYPE_Q8_0 &&
	        (c->n_embd % QK8_0 != 0 || c->n_ff % QK8_0 != 0 ||
	                (c->arch == MKMODEL_QWEN2MOE &&
	                        c->n_ff_shexp % QK8_0 != 0)))
		return verr(err, err_len,
		        "q8_0 needs dim, ff and shared-ff to be multiples of %d",
		        QK8_0);
	if (!(c->rope_base > 0.0f) || !(c->rms_eps > 0.0f))
		return verr(err, err_len,
		        "rope base and rms eps must be positive");
	if (c->n_threads > MAX_THREADS)
		return verr(err, err_len, "threads is %u, at most %d",
		        c->n_threads, MAX_THREADS);
	if (memchr(c->name, '\0', sizeof(c->name)) == NULL)
		return verr(err, err_len, "name is not NUL-terminated");
	return 0;
}

/* ---- tensor list ---- */

enum init {
	INIT_NORMAL, /* std * z */
	INIT_NORM,   /* 1 + 0.1 z: RMSNorm weights */
};

struct tspec {
	char name[64];
	uint32_t n_dims;
	uint64_t ne[GGUF_MAX_DIMS];
	enum dtype type;
	enum init init;
	float std;
	/* filled at write time */
	uint64_t seed;
	uint32_t n_threads;
};

struct tlist {
	struct tspec *t;
	uint32_t n;
	uint32_t cap;
};

static int
tl_add(struct tlist *l, enum dtype type, enum init init, float std,
        uint32_t n_dims, uint64_t ne0, uint64_t ne1, uint64_t ne2,
        const char *fmt, ...)
{
	struct tspec *t;
	va_list ap;

	if (l->n == l->cap) {
		uint32_t cap = l->cap ? 2 * l->cap : 64;
		struct tspec *nt = realloc(l->t, cap * sizeof(*nt));

		if (nt == NULL)
			return EPMOE_ENOMEM;
		l->t = nt;
		l->cap = cap;
	}
	t = &l->t[l->n++];
	memset(t, 0, sizeof(*t));
	va_start(ap, fmt);
	vsnprintf(t->name, sizeof(t->name), fmt, ap);
	va_end(ap);
	t->n_dims = n_dims;
	t->ne[0] = ne0;
	t->ne[1] = ne1;
	t->ne[2] = ne2;
	t->ne[3] = 1;
	t->type = type;
	t->init = init;
	t->std = std;
	return 0;
}

/* Tensors in the order llama.cpp's converter writes them (and the files in
 * shared/testdata have).  GGUF shapes list the row length first:
 * a {n_in, n_out} matrix maps n_in inputs to n_out outputs. */
static int
build_tensors(const struct mkmodel_cfg *c, struct tlist *l)
{
	const enum dtype F = DTYPE_F32, D = c->dtype;
	const uint64_t e = c->n_embd, ff = c->n_ff, sh = c->n_ff_shexp;
	const uint64_t kv = e / c->n_head * c->n_head_kv, ne = c->n_expert;
	const float se = 1.0f / sqrtf((float)e), sf = 1.0f / sqrtf((float)ff);
	int rc = 0;

	rc |= tl_add(l, D, INIT_NORMAL, 1.0f, 2, e, c->n_vocab, 1,
	        "token_embd.weight");
	for (uint32_t i = 0; i < c->n_layer && rc == 0; i++) {
		rc |= tl_add(l, F, INIT_NORM, 0, 1, e, 1, 1,
		        "blk.%u.attn_norm.weight", i);
		rc |= tl_add(l, D, INIT_NORMAL, se, 2, e, e, 1,
		        "blk.%u.attn_q.weight", i);
		rc |= tl_add(l, D, INIT_NORMAL, se, 2, e, kv, 1,
		        "blk.%u.attn_k.weight", i);
		rc |= tl_add(l, D, INIT_NORMAL, se, 2, e, kv, 1,
		        "blk.%u.attn_v.weight", i);
		if (c->arch == MKMODEL_QWEN2MOE) {
			rc |= tl_add(l, F, INIT_NORMAL, 0.02f, 1, e, 1, 1,
			        "blk.%u.attn_q.bias", i);
			rc |= tl_add(l, F, INIT_NORMAL, 0.02f, 1, kv, 1, 1,
			        "blk.%u.attn_k.bias", i);
			rc |= tl_add(l, F, INIT_NORMAL, 0.02f, 1, kv, 1, 1,
			        "blk.%u.attn_v.bias", i);
		}
		if (c->arch == MKMODEL_OLMOE) {
			rc |= tl_add(l, F, INIT_NORM, 0, 1, e, 1, 1,
			        "blk.%u.attn_q_norm.weight", i);
			rc |= tl_add(l, F, INIT_NORM, 0, 1, kv, 1, 1,
			        "blk.%u.attn_k_norm.weight", i);
		}
		rc |= tl_add(l, D, INIT_NORMAL, se, 2, e, e, 1,
		        "blk.%u.attn_output.weight", i);
		rc |= tl_add(l, F, INIT_NORM, 0, 1, e, 1, 1,
		        "blk.%u.ffn_norm.weight", i);
		/* router kept F32 as llama.cpp's converter and quantizer do;
		 * 2x the usual scale so routing is not near-uniform */
		rc |= tl_add(l, F, INIT_NORMAL, 2.0f * se, 2, e, ne, 1,
		        "blk.%u.ffn_gate_inp.weight", i);
		rc |= tl_add(l, D, INIT_NORMAL, se, 3, e, ff, ne,
		        "blk.%u.ffn_gate_exps.weight", i);
		rc |= tl_add(l, D, INIT_NORMAL, se, 3, e, ff, ne,
		        "blk.%u.ffn_up_exps.weight", i);
		rc |= tl_add(l, D, INIT_NORMAL, sf, 3, ff, e, ne,
		        "blk.%u.ffn_down_exps.weight", i);
		if (c->arch == MKMODEL_QWEN2MOE) {
			rc |= tl_add(l, F, INIT_NORMAL, se, 1, e, 1, 1,
			        "blk.%u.ffn_gate_inp_shexp.weight", i);
			rc |= tl_add(l, D, INIT_NORMAL, se, 2, e, sh, 1,
			        "blk.%u.ffn_gate_shexp.weight", i);
			rc |= tl_add(l, D, INIT_NORMAL, se, 2, e, sh, 1,
			        "blk.%u.ffn_up_shexp.weight", i);
			rc |= tl_add(l, D, INIT_NORMAL,
			        1.0f / sqrtf((float)sh), 2, sh, e, 1,
			        "blk.%u.ffn_down_shexp.weight", i);
		}
	}
	rc |= tl_add(l, F, INIT_NORM, 0, 1, e, 1, 1, "output_norm.weight");
	rc |= tl_add(l, D, INIT_NORMAL, se, 2, e, c->n_vocab, 1,
	        "output.weight");
	return rc ? EPMOE_ENOMEM : 0;
}

static uint64_t
tspec_elems(const struct tspec *t)
{
	return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}

uint64_t
mkmodel_data_size(const struct mkmodel_cfg *c)
{
	struct tlist l = { 0 };
	uint64_t total = 0;

	if (build_tensors(c, &l) == 0) {
		for (uint32_t i = 0; i < l.n; i++)
			total += (dtype_row_size(l.t[i].type, tspec_elems(&l.t[i])) +
			                 GGUF_DEFAULT_ALIGNMENT - 1) &
			        ~(uint64_t)(GGUF_DEFAULT_ALIGNMENT - 1);
	}
	free(l.t);
	return total;
}

/* ---- random numbers ---- */

struct xoshiro {
	uint64_t s[4];
};

static uint64_t
rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* xoshiro256+ (Blackman & Vigna, "Scrambled linear pseudorandom number
 * generators", 2018): fast; its weak low bits do not matter here. */
static inline uint64_t
xo_next(struct xoshiro *x)
{
	uint64_t *s = x->s, r = s[0] + s[3], t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

/* Approximately standard normal: the sum of four 16-bit uniforms (Irwin-
 * Hall, n = 4), centred and scaled to unit variance; tails end at 3.46. */
static inline float
normalish(struct xoshiro *x)
{
	uint64_t r = xo_next(x);
	uint32_t u = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
	        (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);

	/* mean 4 * 32767.5; std 65536 / sqrt(3) */
	return ((float)u - 131070.0f) * (1.0f / 37837.227f);
}

/* ---- parallel fill ---- */

struct fill_job {
	const struct tspec *t;
	uint8_t *dst;
	uint64_t n;        /* elements */
	uint64_t n_chunks;
	atomic_uint_fast64_t next;
	atomic_int failed;
};

static void
gen_chunk(const struct fill_job *j, uint64_t c, float *tmp)
{
	const struct tspec *t = j->t;
	uint64_t start = c * CHUNK;
	size_t n = (size_t)(j->n - start < CHUNK ? j->n - start : CHUNK);
	float *out = t->type == DTYPE_F32 ?
	        (float *)(void *)(j->dst + start * 4) : tmp;
	uint64_t sm = t->seed ^ (c * 0xd1b54a32d192ed03ull);
	struct xoshiro x;

	for (int i = 0; i < 4; i++)
		x.s[i] = rng_splitmix64(&sm);
	if (t->init == INIT_NORM) {
		for (size_t i = 0; i < n; i++)
			out[i] = 1.0f + 0.1f * normalish(&x);
	} else {
		for (size_t i = 0; i < n; i++)
			out[i] = t->std * normalish(&x);
	}
	/* CHUNK is a multiple of the Q8_0 block and every row length is
	 * too, so chunk boundaries fall on block boundaries. */
	if (t->type != DTYPE_F32)
		dtype_row_from_f32(t->type, tmp,
		        j->dst + dtype_row_size(t->type, start), n);
}

static void *
fill_worker(void *arg)
{
	struct fill_job *j = arg;
	float *tmp = NULL;
	uint64_t c;

	if (j->t->type != DTYPE_F32 &&
	        (tmp = malloc(CHUNK * sizeof(float))) == NULL) {
		atomic_store(&j->failed, 1);
		return NULL;
	}
	while ((c = atomic_fetch_add(&j->next, 1)) < j->n_chunks)
		gen_chunk(j, c, tmp);
	free(tmp);
	return NULL;
}

static int
fill_tensor(void *ctx, void *dst, size_t size)
{
	const struct tspec *t = ctx;
	struct fill_job j = { .t = t, .dst = dst, .n = tspec_elems(t) };
	pthread_t th[MAX_THREADS];
	uint32_t n_th, started = 0;

	if (size != dtype_row_size(t->type, j.n))
		return EPMOE_EINTERNAL;
	j.n_chunks = (j.n + CHUNK - 1) / CHUNK;
	atomic_init(&j.next, 0);
	atomic_init(&j.failed, 0);
	n_th = t->n_threads;
	if (n_th > j.n_chunks)
		n_th = (uint32_t)j.n_chunks;
	for (uint32_t i = 1; i < n_th; i++) {
		if (pthread_create(&th[started], NULL, fill_worker, &j) != 0)
			break; /* fewer threads: same bytes, just slower */
		started++;
	}
	fill_worker(&j);
	for (uint32_t i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	return atomic_load(&j.failed) ? EPMOE_ENOMEM : 0;
}

/* ---- vocabulary ---- */

/* Frequent English words, most frequent first.  The first ones (through
 * "then") give exactly the vocabulary of the 512-token files in
 * shared/testdata. */
static const char words_text[] =
        "the of and to in is it you that he was for on are with as I his "
        "they be at one have this from or had by hot word but what some we "
        "can out other were all there when up use your how said an each "
        "she which do their time if will way about many then them write "
        "would like so these her long make thing see him two has look more "
        "day could go come did number sound no most people my over know "
        "water than call first who may down side been now find any new "
        "work part take get place made live where after back little only "
        "round man year came show every good me give our under name very "
        "through just form sentence great think say help low line differ "
        "turn cause much mean before move right boy old too same tell does "
        "set three want air well also play small end put home read hand "
        "port large spell add even land here must big high such follow act "
        "why ask men change went light kind off need house picture try us "
        "again animal point mother world near build self earth father head "
        "stand own page should country found answer school grow study still "
        "learn plant cover food sun four between state keep eye never last "
        "let thought city tree cross farm hard start might story saw far "
        "sea draw left late run not while press close night real life few "
        "north open seem together next white children begin got walk "
        "example ease paper group always music those both mark often letter "
        "until mile river car feet care second book carry took science eat "
        "room friend began idea fish mountain stop once base hear horse cut "
        "sure watch color face wood main enough plain girl usual young "
        "ready above ever red list though feel talk bird soon body dog "
        "family direct pose leave song measure door product black short "
        "numeral class wind question happen complete ship area half rock "
        "order fire south problem piece told knew pass since top whole king "
        "space heard best hour better true during hundred five remember "
        "step early hold west ground interest reach fast verb sing listen "
        "six table travel less morning ten simple several vowel toward war "
        "lay against pattern slow center love person money serve appear "
        "road map rain rule govern pull cold notice voice unit power town "
        "fine certain fly fall lead cry dark machine note wait plan figure "
        "star box noun field rest correct able pound done beauty drive "
        "stood contain front teach week final gave green oh quick develop "
        "ocean warm free minute strong special mind behind clear tail "
        "produce fact street inch multiply nothing course stay wheel full "
        "force blue object decide surface deep moon island foot system busy "
        "test record boat common gold possible plane stead dry wonder laugh "
        "thousand ago ran check game shape equate miss brought heat snow "
        "tire bring yes distant fill east paint language among hello brown "
        "fox jump lazy because into its also new only than being another "
        "however made used using such same both through between under "
        "against during without within along following across behind "
        "beyond plus except up down again further once here there why "
        "how all any both each few more most other some such only own same "
        "so than too very can will just should now model data value "
        "system information program computer function number result "
        "process language question government company business market "
        "history country research report service problem group level "
        "public national local general social political economic human "
        "natural energy health school student teacher science science "
        "art music city state street house family child woman women man "
        "men people life world year month week today tomorrow yesterday "
        "morning evening night always sometimes never often usually";

/* Common suffixes and word pieces that follow other pieces. */
static const char suffix_text[] =
        "s ed ing er es ly ion tion al ent ment ness est ous ive able ful "
        "less ity ic ism ist ize ship ance ence ure ry ty th nd st re le "
        "ers ings ted ated ation ations ally ical ies ier iest ward wards "
        "'s 't 're 've 'll 'd n't";

/* Letters by English frequency, for ordering n-grams. */
static const char letter_rank[] = "etaoinshrdlcumwfgypbvkjxqz";

struct vb {
	uint32_t cap;      /* tokens wanted */
	uint32_t n;
	size_t *off;       /* token i at arena + off[i] */
	char *arena;
	size_t alen;
	size_t acap;
	uint32_t *set;     /* open addressing, token index + 1 */
	uint32_t set_mask;
};

#define VB_FULL 1

static int
vb_add(struct vb *b, const char *s, size_t len)
{
	uint64_t h;

	if (b->n == b->cap)
		return VB_FULL;
	h = hash_fnv1a(s, len, HASH_FNV1A_INIT);
	for (h &= b->set_mask; b->set[h] != 0; h = (h + 1) & b->set_mask) {
		const char *o = b->arena + b->off[b->set[h] - 1];

		if (strlen(o) == len && memcmp(o, s, len) == 0)
			return 0;
	}
	if (len + 1 > b->acap - b->alen) {
		size_t cap = b->acap ? b->acap : 4096;
		char *na;

		while (len + 1 > cap - b->alen)
			cap *= 2;
		if ((na = realloc(b->arena, cap)) == NULL)
			return EPMOE_ENOMEM;
		b->arena = na;
		b->acap = cap;
	}
	memcpy(b->arena + b->alen, s, len);
	b->arena[b->alen + len] = '\0';
	b->off[b->n] = b->alen;
	b->alen += len + 1;
	b->set[h] = ++b->n;
	return b->n == b->cap ? VB_FULL : 0;
}

static int
vb_adds(struct vb *b, const char *s)
{
	return vb_add(b, s, strlen(s));
}

/* Adds pre + w[0..k) for k = 1..len(w): every prefix, so SentencePiece's
 * pairwise merges can reach the whole word. */
static int
vb_add_prefixes(struct vb *b, const char *pre, const char *w, size_t wlen,
        int capitalise)
{
	char buf[96];
	size_t pl = strlen(pre);
	int rc;

	if (pl + wlen >= sizeof(buf))
		return 0;
	memcpy(buf, pre, pl);
	memcpy(buf + pl, w, wlen);
	if (capitalise && buf[pl] >= 'a' && buf[pl] <= 'z')
		buf[pl] = (char)(buf[pl] - 'a' + 'A');
	for (size_t k = 1; k <= wlen; k++) {
		if ((rc = vb_add(b, buf, pl + k)) != 0)
			return rc;
	}
	return 0;
}

/* Calls vb_add_prefixes for each space-separated word of text (the first
 * max_words only). */
static int
vb_add_words(struct vb *b, const char *text, const char *pre, int capitalise,
        uint32_t max_words)
{
	const char *p = text;
	uint32_t n = 0;
	int rc;

	while (*p && n < max_words) {
		const char *e = strchr(p, ' ');
		size_t len = e ? (size_t)(e - p) : strlen(p);

		if (len > 0) {
			if ((rc = vb_add_prefixes(b, pre, p, len, capitalise)) != 0)
				return rc;
			n++;
		}
		p += len;
		while (*p == ' ')
			p++;
	}
	return 0;
}

/* All lowercase n-grams (n = 2..4), prefixed by pre, in increasing order of
 * the sum of their letters' frequency ranks (so "th", "he", "in" come long
 * before "qz"). */
static int
vb_add_ngrams(struct vb *b, const char *pre, int n)
{
	char buf[16];
	size_t pl = strlen(pre);
	int idx[4], rc;

	memcpy(buf, pre, pl);
	for (int sum = 0; sum <= 25 * n; sum++) {
		/* enumerate idx[0..n) with the given sum, lexicographically */
		for (int i = 0; i < n; i++)
			idx[i] = 0;
		for (;;) {
			int s = 0;

			for (int i = 0; i < n - 1; i++)
				s += idx[i];
			if (sum - s >= 0 && sum - s <= 25) {
				idx[n - 1] = sum - s;
				for (int i = 0; i < n; i++)
					buf[pl + (size_t)i] = letter_rank[idx[i]];
				if ((rc = vb_add(b, buf, pl + (size_t)n)) != 0)
					return rc;
			}
			/* next combination of the first n-1 indices */
			int i = n - 2;

			while (i >= 0 && ++idx[i] > 25)
				idx[i--] = 0;
			if (i < 0)
				break;
		}
	}
	return 0;
}

static int
vb_fill(struct vb *b)
{
	static const char upper[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
	static const char digits[] = "0123456789";
	static const char punct[] = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
	static const char *const extra[] = {
		SPACE "(", SPACE "\"", SPACE "'", SPACE "-", SPACE "[",
		SPACE "$", "..", "...", "--", "),", ").", "\",", "\".",
		"\n", "\n\n", SPACE SPACE, SPACE SPACE SPACE SPACE,
	};
	char buf[8];
	int rc;

#define TRY(x)                          \
	do {                            \
		if ((rc = (x)) != 0)    \
			return rc;      \
	} while (0)
	TRY(vb_adds(b, SPACE));
	for (int c = 'a'; c <= 'z'; c++)
		TRY(vb_add(b, (char[]){ (char)c }, 1));
	for (const char *p = upper; *p; p++)
		TRY(vb_add(b, p, 1));
	for (const char *p = digits; *p; p++)
		TRY(vb_add(b, p, 1));
	for (const char *p = punct; *p; p++)
		TRY(vb_add(b, p, 1));
	for (int c = 'a'; c <= 'z'; c++) {
		snprintf(buf, sizeof(buf), SPACE "%c", c);
		TRY(vb_adds(b, buf));
	}
	for (const char *p = upper; *p; p++) {
		snprintf(buf, sizeof(buf), SPACE "%c", *p);
		TRY(vb_adds(b, buf));
	}
	TRY(vb_add_words(b, words_text, SPACE, 0, UINT32_MAX));
	TRY(vb_add_words(b, suffix_text, "", 0, UINT32_MAX));
	TRY(vb_add_words(b, words_text, SPACE, 1, 300));
	for (const char *p = digits; *p; p++) {
		snprintf(buf, sizeof(buf), SPACE "%c", *p);
		TRY(vb_adds(b, buf));
	}
	for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++)
		TRY(vb_adds(b, extra[i]));
	TRY(vb_add_words(b, words_text, "", 0, UINT32_MAX));
	TRY(vb_add_ngrams(b, "", 2));
	TRY(vb_add_ngrams(b, SPACE, 2));
	TRY(vb_add_ngrams(b, "", 3));
	TRY(vb_add_ngrams(b, SPACE, 3));
	TRY(vb_add_words(b, words_text, SPACE, 1, UINT32_MAX));
	TRY(vb_add_ngrams(b, "", 4));
	TRY(vb_add_ngrams(b, SPACE, 4));
#undef TRY
	return 0;
}

void
mkmodel_vocab_fini(struct mkmodel_vocab *v)
{
	if (v == NULL)
		return;
	free(v->tokens);
	free(v->scores);
	free(v->types);
	free(v->arena);
	memset(v, 0, sizeof(*v));
}

int
mkmodel_vocab_init(struct mkmodel_vocab *v, uint32_t n_vocab)
{
	struct vb b = { .cap = n_vocab };
	uint32_t cap = 1024;
	char buf[8];
	int rc;

	memset(v, 0, sizeof(*v));
	if (n_vocab < MKMODEL_MIN_VOCAB || n_vocab > MKMODEL_MAX_VOCAB)
		return EPMOE_EINVAL;
	while (cap < 2 * n_vocab)
		cap *= 2;
	b.set_mask = cap - 1;
	if ((b.set = calloc(cap, sizeof(*b.set))) == NULL ||
	        (b.off = malloc(n_vocab * sizeof(*b.off))) == NULL) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	vb_adds(&b, "<unk>");
	vb_adds(&b, "<s>");
	vb_adds(&b, "</s>");
	for (int i = 0; i < 256; i++) {
		snprintf(buf, sizeof(buf), "<0x%02X>", i);
		vb_adds(&b, buf);
	}
	rc = vb_fill(&b);
	if (rc < 0)
		goto out;
	if (b.n != n_vocab) {
		rc = EPMOE_EINTERNAL; /* the sources above hold > max vocab */
		goto out;
	}
	v->n = n_vocab;
	v->tokens = malloc(n_vocab * sizeof(*v->tokens));
	v->scores = malloc(n_vocab * sizeof(*v->scores));
	v->types = malloc(n_vocab * sizeof(*v->types));
	if (v->tokens == NULL || v->scores == NULL || v->types == NULL) {
		rc = EPMOE_ENOMEM;
		mkmodel_vocab_fini(v);
		goto out;
	}
	v->arena = b.arena;
	b.arena = NULL;
	for (uint32_t i = 0; i < n_vocab; i++) {
		v->tokens[i] = v->arena + b.off[i];
		if (i < 259) {
			v->scores[i] = 0.0f;
			v->types[i] = i == 0 ? 2 : i < 3 ? 3 : 6;
		} else {
			v->scores[i] = -(float)(i - 258);
			v->types[i] = 1;
		}
	}
	rc = 0;
out:
	free(b.set);
	free(b.off);
	free(b.arena);
	return rc;
}

/* ---- writing ---- */

static uint32_t
file_type(enum dtype t)
{
	/* llama.cpp's LLAMA_FTYPE_* */
	switch (t) {
	case DTYPE_F16: return 1;
	case DTYPE_Q8_0: return 7;
	case DTYPE_BF16: return 32;
	default: return 0;
	}
}

static int
set_metadata(struct gguf_writer *w, const struct mkmodel_cfg *c,
        const struct mkmodel_vocab *v)
{
	const char *a = mkmodel_arch_name(c->arch);
	char key[96], name[64];
	int rc = 0;

#define K(suffix) (snprintf(key, sizeof(key), "%s." suffix, a), key)
	if (c->name[0] != '\0')
		snprintf(name, sizeof(name), "%s", c->name);
	else
		snprintf(name, sizeof(name), "mkmodel-%s-%ux%ux%u-d%u", a,
		        c->n_layer, c->n_expert, c->n_ff, c->n_embd);
	rc |= gguf_writer_set_str(w, "general.architecture", a);
	rc |= gguf_writer_set_str(w, "general.name", name);
	rc |= gguf_writer_set_u32(w, "general.file_type", file_type(c->dtype));
	rc |= gguf_writer_set_u32(w, K("context_length"), c->n_ctx);
	rc |= gguf_writer_set_u32(w, K("embedding_length"), c->n_embd);
	rc |= gguf_writer_set_u32(w, K("block_count"), c->n_layer);
	/* qwen2moe's feed_forward_length is the shared expert's width */
	rc |= gguf_writer_set_u32(w, K("feed_forward_length"),
	        c->arch == MKMODEL_QWEN2MOE ? c->n_ff_shexp : c->n_ff);
	rc |= gguf_writer_set_u32(w, K("attention.head_count"), c->n_head);
	rc |= gguf_writer_set_u32(w, K("attention.head_count_kv"),
	        c->n_head_kv);
	rc |= gguf_writer_set_f32(w, K("rope.freq_base"), c->rope_base);
	rc |= gguf_writer_set_f32(w, K("attention.layer_norm_rms_epsilon"),
	        c->rms_eps);
	rc |= gguf_writer_set_u32(w, K("rope.dimension_count"),
	        c->n_embd / c->n_head);
	rc |= gguf_writer_set_u32(w, K("expert_count"), c->n_expert);
	rc |= gguf_writer_set_u32(w, K("expert_used_count"), c->n_expert_used);
	rc |= gguf_writer_set_u32(w, K("vocab_size"), c->n_vocab);
	if (c->arch == MKMODEL_QWEN2MOE) {
		rc |= gguf_writer_set_u32(w, K("expert_feed_forward_length"),
		        c->n_ff);
		rc |= gguf_writer_set_u32(w,
		        K("expert_shared_feed_forward_length"), c->n_ff_shexp);
	}
#undef K
	rc |= gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
	rc |= gguf_writer_set_str(w, "tokenizer.ggml.pre", "default");
	rc |= gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens",
	        (const char *const *)v->tokens, v->n);
	rc |= gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32,
	        v->scores, v->n);
	rc |= gguf_writer_set_arr(w, "tokenizer.ggml.token_type",
	        GGUF_TYPE_INT32, v->types, v->n);
	rc |= gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
	rc |= gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
	rc |= gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
	rc |= gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
	rc |= gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", false);
	rc |= gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix", true);
	/* keys are fixed and unique, so only allocation can fail */
	return rc ? EPMOE_ENOMEM : 0;
}

int
mkmodel_write(const struct mkmodel_cfg *c, const char *path, char *err,
        size_t err_len)
{
	struct mkmodel_vocab v = { 0 };
	struct gguf_writer *w = NULL;
	struct tlist l = { 0 };
	uint32_t n_th = c->n_threads;
	int rc;

	if ((rc = mkmodel_validate(c, err, err_len)) != 0)
		return rc;
	if (n_th == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		n_th = n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (uint32_t)n;
	}
	if ((rc = mkmodel_vocab_init(&v, c->n_vocab)) != 0 ||
	        (rc = build_tensors(c, &l)) != 0 ||
	        (rc = gguf_writer_new(&w, 3)) != 0 ||
	        (rc = set_metadata(w, c, &v)) != 0)
		goto fail;
	for (uint32_t i = 0; i < l.n; i++) {
		struct tspec *t = &l.t[i];
		uint64_t s = c->seed ^ hash_fnv1a(t->name, strlen(t->name), HASH_FNV1A_INIT);

		t->seed = rng_splitmix64(&s);
		t->n_threads = n_th;
		if ((rc = gguf_writer_add_tensor_fn(w, t->name, t->type,
		             t->n_dims, t->ne, fill_tensor, t)) != 0)
			goto fail;
	}
	rc = gguf_writer_write(w, path, err, err_len);
	goto out;
fail:
	if (err != NULL && err_len > 0)
		snprintf(err, err_len, "%s: %s", path, epmoe_strerror(rc));
out:
	gguf_writer_free(w);
	free(l.t);
	mkmodel_vocab_fini(&v);
	return rc;
}
