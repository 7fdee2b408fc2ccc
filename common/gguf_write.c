/* GGUF writer: collects metadata and tensor descriptions, then streams the
 * file out in one pass.
 *
 * Metadata is serialised as the setters are called.  Tensor data is either
 * copied at add time (small tensors) or produced by a fill callback while
 * writing, one tensor at a time into one reused scratch buffer, so a
 * multi-GB model never sits in memory.  The file is written to PATH.tmp
 * with large buffered writes and renamed over PATH only when complete; on
 * any failure the temporary file is removed.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "gguf.h"

#define MAX_NAME 63              /* llama.cpp rejects longer tensor names */
#define WBUF_SIZE (4u << 20)     /* output buffer for headers and padding */

struct bytes {
	uint8_t *p;
	size_t len;
	size_t cap;
};

struct wtensor {
	char *name;
	enum dtype type;
	uint32_t n_dims;
	uint64_t ne[GGUF_MAX_DIMS];
	size_t size;
	void *data; /* owned copy, or NULL when fill is used */
	gguf_fill_fn fill;
	void *ctx;
};

struct gguf_writer {
	uint32_t version;
	uint32_t alignment;
	struct bytes meta; /* serialised key-value pairs */
	uint64_t n_kv;
	char **keys;
	size_t keys_cap;
	struct wtensor *t;
	uint64_t n_t;
	uint64_t t_cap;
};

static int
bytes_put(struct bytes *b, const void *p, size_t n)
{
	if (n > b->cap - b->len) {
		size_t cap = b->cap ? b->cap : 256;
		uint8_t *np;

		while (cap - b->len < n) {
			if (cap > SIZE_MAX / 2)
				return EPMOE_ENOMEM;
			cap *= 2;
		}
		if ((np = realloc(b->p, cap)) == NULL)
			return EPMOE_ENOMEM;
		b->p = np;
		b->cap = cap;
	}
	if (n > 0)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

static int
bytes_u32(struct bytes *b, uint32_t v)
{
	return bytes_put(b, &v, 4);
}

static int
bytes_u64(struct bytes *b, uint64_t v)
{
	return bytes_put(b, &v, 8);
}

static int
bytes_str(struct bytes *b, const char *s)
{
	size_t n = strlen(s);
	int rc;

	if ((rc = bytes_u64(b, n)) != 0)
		return rc;
	return bytes_put(b, s, n);
}

int
gguf_writer_new(struct gguf_writer **out, uint32_t version)
{
	struct gguf_writer *w;

	if (version != 2 && version != 3)
		return EPMOE_EINVAL;
	if ((w = calloc(1, sizeof(*w))) == NULL)
		return EPMOE_ENOMEM;
	w->version = version;
	w->alignment = GGUF_DEFAULT_ALIGNMENT;
	*out = w;
	return 0;
}

void
gguf_writer_free(struct gguf_writer *w)
{
	if (w == NULL)
		return;
	for (uint64_t i = 0; i < w->n_kv; i++)
		free(w->keys[i]);
	free(w->keys);
	for (uint64_t i = 0; i < w->n_t; i++) {
		free(w->t[i].name);
		free(w->t[i].data);
	}
	free(w->t);
	free(w->meta.p);
	free(w);
}

/* Appends key and value type; on failure the metadata is rolled back by
 * the caller through mark. */
static int
kv_begin(struct gguf_writer *w, const char *key, enum gguf_type type,
        size_t *mark)
{
	int rc;

	if (key == NULL)
		return EPMOE_EINVAL;
	for (uint64_t i = 0; i < w->n_kv; i++) {
		if (strcmp(w->keys[i], key) == 0)
			return EPMOE_EINVAL;
	}
	if (w->n_kv == w->keys_cap) {
		size_t cap = w->keys_cap ? 2 * w->keys_cap : 32;
		char **nk = realloc(w->keys, cap * sizeof(*nk));

		if (nk == NULL)
			return EPMOE_ENOMEM;
		w->keys = nk;
		w->keys_cap = cap;
	}
	*mark = w->meta.len;
	if ((rc = bytes_str(&w->meta, key)) != 0 ||
	        (rc = bytes_u32(&w->meta, (uint32_t)type)) != 0) {
		w->meta.len = *mark;
		return rc;
	}
	return 0;
}

/* Commits the kv begun at mark if rc is 0, else rolls it back. */
static int
kv_end(struct gguf_writer *w, const char *key, size_t mark, int rc)
{
	if (rc == 0 && (w->keys[w->n_kv] = strdup(key)) == NULL)
		rc = EPMOE_ENOMEM;
	if (rc != 0) {
		w->meta.len = mark;
		return rc;
	}
	w->n_kv++;
	return 0;
}

static int
set_scalar(struct gguf_writer *w, const char *key, enum gguf_type type,
        const void *v, size_t n)
{
	size_t mark;
	int rc;

	if ((rc = kv_begin(w, key, type, &mark)) != 0)
		return rc;
	return kv_end(w, key, mark, bytes_put(&w->meta, v, n));
}

int
gguf_writer_set_u8(struct gguf_writer *w, const char *key, uint8_t v)
{
	return set_scalar(w, key, GGUF_TYPE_UINT8, &v, 1);
}

int
gguf_writer_set_i8(struct gguf_writer *w, const char *key, int8_t v)
{
	return set_scalar(w, key, GGUF_TYPE_INT8, &v, 1);
}

int
gguf_writer_set_u16(struct gguf_writer *w, const char *key, uint16_t v)
{
	return set_scalar(w, key, GGUF_TYPE_UINT16, &v, 2);
}

int
gguf_writer_set_i16(struct gguf_writer *w, const char *key, int16_t v)
{
	return set_scalar(w, key, GGUF_TYPE_INT16, &v, 2);
}

int
gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v)
{
	return set_scalar(w, key, GGUF_TYPE_UINT32, &v, 4);
}

int
gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v)
{
	return set_scalar(w, key, GGUF_TYPE_INT32, &v, 4);
}

int
gguf_writer_set_u64(struct gguf_writer *w, const char *key, uint64_t v)
{
	return set_scalar(w, key, GGUF_TYPE_UINT64, &v, 8);
}

int
gguf_writer_set_i64(struct gguf_writer *w, const char *key, int64_t v)
{
	return set_scalar(w, key, GGUF_TYPE_INT64, &v, 8);
}

int
gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v)
{
	return set_scalar(w, key, GGUF_TYPE_FLOAT32, &v, 4);
}

int
gguf_writer_set_f64(struct gguf_writer *w, const char *key, double v)
{
	return set_scalar(w, key, GGUF_TYPE_FLOAT64, &v, 8);
}

int
gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v)
{
	uint8_t b = v ? 1 : 0;

	return set_scalar(w, key, GGUF_TYPE_BOOL, &b, 1);
}

int
gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v)
{
	size_t mark;
	int rc;

	if (v == NULL)
		return EPMOE_EINVAL;
	if ((rc = kv_begin(w, key, GGUF_TYPE_STRING, &mark)) != 0)
		return rc;
	return kv_end(w, key, mark, bytes_str(&w->meta, v));
}

static size_t
elem_size(enum gguf_type t)
{
	switch (t) {
	case GGUF_TYPE_UINT8:
	case GGUF_TYPE_INT8:
	case GGUF_TYPE_BOOL: return 1;
	case GGUF_TYPE_UINT16:
	case GGUF_TYPE_INT16: return 2;
	case GGUF_TYPE_UINT32:
	case GGUF_TYPE_INT32:
	case GGUF_TYPE_FLOAT32: return 4;
	case GGUF_TYPE_UINT64:
	case GGUF_TYPE_INT64:
	case GGUF_TYPE_FLOAT64: return 8;
	default: return 0;
	}
}

int
gguf_writer_set_arr(struct gguf_writer *w, const char *key,
        enum gguf_type elem_type, const void *data, uint64_t n)
{
	size_t es = elem_size(elem_type), mark;
	int rc;

	if (es == 0 || (n > 0 && data == NULL) || n > SIZE_MAX / es)
		return EPMOE_EINVAL;
	if ((rc = kv_begin(w, key, GGUF_TYPE_ARRAY, &mark)) != 0)
		return rc;
	if ((rc = bytes_u32(&w->meta, (uint32_t)elem_type)) == 0 &&
	        (rc = bytes_u64(&w->meta, n)) == 0)
		rc = bytes_put(&w->meta, data, (size_t)n * es);
	return kv_end(w, key, mark, rc);
}

int
gguf_writer_set_arr_str(struct gguf_writer *w, const char *key,
        const char *const *strs, uint64_t n)
{
	size_t mark;
	int rc;

	if (n > 0 && strs == NULL)
		return EPMOE_EINVAL;
	for (uint64_t i = 0; i < n; i++) {
		if (strs[i] == NULL)
			return EPMOE_EINVAL;
	}
	if ((rc = kv_begin(w, key, GGUF_TYPE_ARRAY, &mark)) != 0)
		return rc;
	if ((rc = bytes_u32(&w->meta, GGUF_TYPE_STRING)) == 0)
		rc = bytes_u64(&w->meta, n);
	for (uint64_t i = 0; rc == 0 && i < n; i++)
		rc = bytes_str(&w->meta, strs[i]);
	return kv_end(w, key, mark, rc);
}

int
gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf_kv *kv)
{
	char key[256];
	size_t mark, es;
	int rc = 0;

	if (kv->key.len >= sizeof(key) || memchr(kv->key.ptr, 0, (size_t)kv->key.len))
		return EPMOE_EINVAL;
	memcpy(key, kv->key.ptr, (size_t)kv->key.len);
	key[kv->key.len] = '\0';
	if ((rc = kv_begin(w, key, kv->type, &mark)) != 0)
		return rc;
	switch (kv->type) {
	case GGUF_TYPE_STRING:
		if ((rc = bytes_u64(&w->meta, kv->v.str.len)) == 0)
			rc = bytes_put(&w->meta, kv->v.str.ptr, (size_t)kv->v.str.len);
		break;
	case GGUF_TYPE_ARRAY:
		if ((rc = bytes_u32(&w->meta, (uint32_t)kv->v.arr.type)) != 0 ||
		        (rc = bytes_u64(&w->meta, kv->v.arr.n)) != 0)
			break;
		if (kv->v.arr.type == GGUF_TYPE_STRING) {
			for (uint64_t i = 0; rc == 0 && i < kv->v.arr.n; i++) {
				const struct gguf_str *s = &kv->v.arr.strs[i];
				if ((rc = bytes_u64(&w->meta, s->len)) == 0)
					rc = bytes_put(&w->meta, s->ptr, (size_t)s->len);
			}
		} else if ((es = elem_size(kv->v.arr.type)) == 0) {
			rc = EPMOE_EINVAL;
		} else {
			rc = bytes_put(&w->meta, kv->v.arr.data, (size_t)kv->v.arr.n * es);
		}
		break;
	default: {
		/* scalars: back to their own width, little-endian */
		uint8_t b[8];
		float f;
		es = elem_size(kv->type);
		if (kv->type == GGUF_TYPE_FLOAT32) {
			f = (float)kv->v.f64;
			memcpy(b, &f, 4);
		} else if (kv->type == GGUF_TYPE_FLOAT64) {
			memcpy(b, &kv->v.f64, 8);
		} else {
			memcpy(b, &kv->v.u64, 8); /* i64 shares the bytes */
		}
		rc = es ? bytes_put(&w->meta, b, es) : EPMOE_EINVAL;
	}
	}
	return kv_end(w, key, mark, rc);
}

int
gguf_writer_set_alignment(struct gguf_writer *w, uint32_t alignment)
{
	int rc;

	if (alignment == 0 || (alignment & (alignment - 1)) != 0 ||
	        alignment > (UINT32_C(1) << 30))
		return EPMOE_EINVAL;
	if ((rc = gguf_writer_set_u32(w, "general.alignment", alignment)) != 0)
		return rc;
	w->alignment = alignment;
	return 0;
}

/* Validates a tensor description and appends it (without data). */
static int
tensor_add(struct gguf_writer *w, const char *name, enum dtype type,
        uint32_t n_dims, const uint64_t *ne, struct wtensor **out)
{
	struct wtensor *t;
	uint64_t n = 1, bytes;

	if (name == NULL || name[0] == '\0' || strlen(name) > MAX_NAME ||
	        n_dims == 0 || n_dims > GGUF_MAX_DIMS || ne == NULL ||
	        !dtype_supported(type))
		return EPMOE_EINVAL;
	for (uint32_t d = 0; d < n_dims; d++) {
		if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX)
			return EPMOE_EINVAL;
		if (__builtin_mul_overflow(n, ne[d], &n) ||
		        n > (uint64_t)INT64_MAX)
			return EPMOE_ERANGE;
	}
	if (ne[0] % dtype_block_elems(type) != 0)
		return EPMOE_EINVAL;
	if (__builtin_mul_overflow(n / dtype_block_elems(type),
	            (uint64_t)dtype_block_size(type), &bytes) ||
	        bytes > SIZE_MAX - 4096)
		return EPMOE_ERANGE;
	for (uint64_t i = 0; i < w->n_t; i++) {
		if (strcmp(w->t[i].name, name) == 0)
			return EPMOE_EINVAL;
	}
	if (w->n_t == w->t_cap) {
		uint64_t cap = w->t_cap ? 2 * w->t_cap : 64;
		struct wtensor *nt = realloc(w->t, cap * sizeof(*nt));

		if (nt == NULL)
			return EPMOE_ENOMEM;
		w->t = nt;
		w->t_cap = cap;
	}
	t = &w->t[w->n_t];
	memset(t, 0, sizeof(*t));
	if ((t->name = strdup(name)) == NULL)
		return EPMOE_ENOMEM;
	t->type = type;
	t->n_dims = n_dims;
	for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
		t->ne[d] = d < n_dims ? ne[d] : 1;
	t->size = (size_t)bytes;
	*out = t;
	return 0;
}

int
gguf_writer_add_tensor(struct gguf_writer *w, const char *name,
        enum dtype type, uint32_t n_dims, const uint64_t *ne,
        const void *data, size_t size)
{
	struct wtensor *t;
	int rc;

	if (data == NULL)
		return EPMOE_EINVAL;
	if ((rc = tensor_add(w, name, type, n_dims, ne, &t)) != 0)
		return rc;
	if (t->size != size) {
		free(t->name);
		return EPMOE_EINVAL;
	}
	if ((t->data = malloc(size)) == NULL) {
		free(t->name);
		return EPMOE_ENOMEM;
	}
	memcpy(t->data, data, size);
	w->n_t++;
	return 0;
}

int
gguf_writer_add_tensor_fn(struct gguf_writer *w, const char *name,
        enum dtype type, uint32_t n_dims, const uint64_t *ne,
        gguf_fill_fn fill, void *ctx)
{
	struct wtensor *t;
	int rc;

	if (fill == NULL)
		return EPMOE_EINVAL;
	if ((rc = tensor_add(w, name, type, n_dims, ne, &t)) != 0)
		return rc;
	t->fill = fill;
	t->ctx = ctx;
	w->n_t++;
	return 0;
}

/* ---- output ---- */

struct out {
	int fd;
	uint8_t *buf;
	size_t len;
	uint64_t pos; /* bytes of the file produced so far */
	int errno_; /* first write error */
};

static int
write_all(struct out *o, const void *p, size_t n)
{
	const uint8_t *c = p;

	while (n > 0) {
		ssize_t k = write(o->fd, c, n > (1u << 30) ? (1u << 30) : n);

		if (k < 0) {
			if (errno == EINTR)
				continue;
			o->errno_ = errno;
			return EPMOE_EIO;
		}
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

static int
out_flush(struct out *o)
{
	int rc = write_all(o, o->buf, o->len);

	o->len = 0;
	return rc;
}

static int
out_put(struct out *o, const void *p, size_t n)
{
	int rc;

	o->pos += n;
	if (n >= WBUF_SIZE) {
		if ((rc = out_flush(o)) != 0)
			return rc;
		return write_all(o, p, n);
	}
	if (n > WBUF_SIZE - o->len && (rc = out_flush(o)) != 0)
		return rc;
	memcpy(o->buf + o->len, p, n);
	o->len += n;
	return 0;
}

static int
out_pad(struct out *o, uint32_t alignment)
{
	static const uint8_t zeros[64];
	size_t n = (size_t)((alignment - o->pos % alignment) % alignment);
	int rc;

	while (n > 0) {
		size_t k = n < sizeof(zeros) ? n : sizeof(zeros);

		if ((rc = out_put(o, zeros, k)) != 0)
			return rc;
		n -= k;
	}
	return 0;
}

static uint64_t
align_up(uint64_t x, uint32_t a)
{
	return (x + a - 1) & ~(uint64_t)(a - 1);
}

static int
werr(char *err, size_t err_len, int code, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL && err_len > 0) {
		va_start(ap, fmt);
		vsnprintf(err, err_len, fmt, ap);
		va_end(ap);
	}
	return code;
}

static int
write_header(struct gguf_writer *w, struct out *o)
{
	struct bytes b = { 0 };
	uint64_t off = 0;
	int rc;

	if ((rc = bytes_u32(&b, GGUF_MAGIC)) != 0 ||
	        (rc = bytes_u32(&b, w->version)) != 0 ||
	        (rc = bytes_u64(&b, w->n_t)) != 0 ||
	        (rc = bytes_u64(&b, w->n_kv)) != 0)
		goto out;
	if ((rc = out_put(o, b.p, b.len)) != 0 ||
	        (rc = out_put(o, w->meta.p, w->meta.len)) != 0)
		goto out;
	for (uint64_t i = 0; i < w->n_t; i++) {
		const struct wtensor *t = &w->t[i];

		b.len = 0;
		if ((rc = bytes_str(&b, t->name)) != 0 ||
		        (rc = bytes_u32(&b, t->n_dims)) != 0)
			goto out;
		for (uint32_t d = 0; d < t->n_dims; d++) {
			if ((rc = bytes_u64(&b, t->ne[d])) != 0)
				goto out;
		}
		if ((rc = bytes_u32(&b, (uint32_t)t->type)) != 0 ||
		        (rc = bytes_u64(&b, off)) != 0 ||
		        (rc = out_put(o, b.p, b.len)) != 0)
			goto out;
		off = align_up(off + t->size, w->alignment);
	}
	rc = out_pad(o, w->alignment);
out:
	free(b.p);
	return rc;
}

/* Streams header, metadata, tensor infos and data to o.  On a fill error,
 * *bad names the tensor. */
static int
write_body(struct gguf_writer *w, struct out *o, const struct wtensor **bad)
{
	size_t scratch_len = 0;
	uint8_t *scratch = NULL;
	int rc;

	for (uint64_t i = 0; i < w->n_t; i++) {
		if (w->t[i].fill != NULL && w->t[i].size > scratch_len)
			scratch_len = w->t[i].size;
	}
	if (scratch_len > 0 && (scratch = malloc(scratch_len)) == NULL)
		return EPMOE_ENOMEM;
	if ((rc = write_header(w, o)) != 0)
		goto out;
	for (uint64_t i = 0; i < w->n_t; i++) {
		const struct wtensor *t = &w->t[i];
		const void *data = t->data;

		if (t->fill != NULL) {
			/* zeroed so a fill that skips bytes still gives a
			 * deterministic file */
			memset(scratch, 0, t->size);
			if ((rc = t->fill(t->ctx, scratch, t->size)) != 0) {
				*bad = t;
				goto out;
			}
			data = scratch;
		}
		if ((rc = out_put(o, data, t->size)) != 0 ||
		        (rc = out_pad(o, w->alignment)) != 0)
			goto out;
	}
	rc = out_flush(o);
out:
	free(scratch);
	return rc;
}

int
gguf_writer_write(struct gguf_writer *w, const char *path, char *err,
        size_t err_len)
{
	struct out o = { .fd = -1 };
	const struct wtensor *bad = NULL;
	char *tmp;
	int rc;

	if (err != NULL && err_len > 0)
		err[0] = '\0';
	if (path == NULL)
		return EPMOE_EINVAL;
	if ((tmp = malloc(strlen(path) + 5)) == NULL ||
	        (o.buf = malloc(WBUF_SIZE)) == NULL) {
		free(tmp);
		return werr(err, err_len, EPMOE_ENOMEM, "%s: out of memory",
		        path);
	}
	strcpy(tmp, path);
	strcat(tmp, ".tmp");
	if ((o.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	             0644)) < 0) {
		rc = werr(err, err_len, epmoe_err_from_errno(errno),
		        "%s: open: %s", tmp, strerror(errno));
		goto out;
	}
	rc = write_body(w, &o, &bad);
	if (close(o.fd) != 0 && rc == 0) {
		o.errno_ = errno;
		rc = EPMOE_EIO;
	}
	o.fd = -1;
	if (rc == 0 && rename(tmp, path) != 0) {
		rc = werr(err, err_len, EPMOE_EIO, "%s: rename from %s: %s",
		        path, tmp, strerror(errno));
		unlink(tmp);
		goto out;
	}
	if (rc != 0) {
		if (bad != NULL)
			werr(err, err_len, rc, "%s: tensor '%s': fill failed: %s",
			        path, bad->name, epmoe_strerror(rc));
		else if (o.errno_ != 0)
			werr(err, err_len, rc, "%s: write: %s", tmp,
			        strerror(o.errno_));
		else
			werr(err, err_len, rc, "%s: %s", path,
			        epmoe_strerror(rc));
		unlink(tmp);
	}
out:
	if (o.fd >= 0)
		close(o.fd);
	free(o.buf);
	free(tmp);
	return rc;
}
