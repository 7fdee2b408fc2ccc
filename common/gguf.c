/* GGUF reader: maps a file read-only, validates every field before trusting
 * it, and indexes keys and tensors by name.
 *
 * Nothing read from the file is used as a size, count or offset before it
 * has been checked against the bytes actually present, so a corrupt or
 * hostile file yields EPMOE_EFORMAT / EPMOE_ENOTSUP and a one-line message,
 * never a crash or a huge allocation.  The reader never copies tensor data.
 * The writer lives in gguf_write.c, tensor conversions in gguf_conv.c.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "gguf.h"
#include "strmap.h"

/* Smallest possible encodings, used to bound allocations by the bytes
 * actually present: a kv is key length (8) + type (4) + at least one value
 * byte; a tensor info is name length (8) + n_dims (4) + one dim (8) +
 * type (4) + offset (8).  With R bytes left, at most R / min entries can
 * be complete, so a count of 2^60 costs no more memory than a real one:
 * parsing runs out of bytes and reports the entry that was cut. */
#define KV_MIN_BYTES 13
#define TINFO_MIN_BYTES 32
/* Indices are uint32_t; no real file comes near this. */
#define MAX_COUNT (UINT32_C(1) << 30)

/* The gguf_file handed out is the first member, so gguf_close can find the
 * private part.  The name maps give the index of each key and tensor. */
struct gguf_priv {
	struct gguf_file f;
	uint64_t kv_alloc; /* entries allocated in f.kv / f.tensors; less */
	uint64_t t_alloc;  /* than the counts while a bad file is parsed */
	struct strmap kv_names;
	struct strmap t_names;
};

struct parse {
	const char *path;
	char *err;
	size_t err_len;
	const uint8_t *base;
	size_t size;
	size_t pos;
};

/* Internal result meaning "ran past the end of the file"; the caller that
 * knows the context (which kv, which tensor) turns it into a message. */
#define TRUNC 1

static int
fail(struct parse *ps, int code, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (ps->err == NULL || ps->err_len == 0)
		return code;
	n = snprintf(ps->err, ps->err_len, "%s: ", ps->path);
	if (n < 0 || (size_t)n >= ps->err_len)
		return code;
	va_start(ap, fmt);
	vsnprintf(ps->err + n, ps->err_len - (size_t)n, fmt, ap);
	va_end(ap);
	return code;
}

/* Copies s into buf for a message: at most 48 bytes, non-printable bytes
 * shown as '?', so one corrupt name cannot break the one-line message. */
static const char *
str_show(struct gguf_str s, char *buf, size_t buf_len)
{
	size_t n = s.len < 48 ? (size_t)s.len : 48, j = 0;

	assert(buf_len >= 52);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s.ptr[i];
		buf[j++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	if (s.len > n) {
		memcpy(buf + j, "...", 3);
		j += 3;
	}
	buf[j] = '\0';
	return buf;
}

static uint64_t
rem(const struct parse *ps)
{
	return ps->size - ps->pos;
}

static int
rd_bytes(struct parse *ps, uint64_t n, const uint8_t **out)
{
	if (n > rem(ps))
		return TRUNC;
	*out = ps->base + ps->pos;
	ps->pos += (size_t)n;
	return 0;
}

static int
rd_u32(struct parse *ps, uint32_t *v)
{
	const uint8_t *p;

	if (rd_bytes(ps, 4, &p))
		return TRUNC;
	memcpy(v, p, 4);
	return 0;
}

static int
rd_u64(struct parse *ps, uint64_t *v)
{
	const uint8_t *p;

	if (rd_bytes(ps, 8, &p))
		return TRUNC;
	memcpy(v, p, 8);
	return 0;
}

static int
rd_str(struct parse *ps, struct gguf_str *s)
{
	const uint8_t *p;
	uint64_t n;

	if (rd_u64(ps, &n) || rd_bytes(ps, n, &p))
		return TRUNC;
	s->len = n;
	s->ptr = (const char *)p;
	return 0;
}

/* Bytes of one packed element of a numeric type; 0 for STRING, ARRAY and
 * unknown types. */
static size_t
scalar_size(uint32_t t)
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

/* Decodes one packed little-endian numeric value of type t at p into kv's
 * union (u64 / i64 / f64 by kind). */
static void
scalar_decode(struct gguf_kv *kv, uint32_t t, const uint8_t *p)
{
	uint8_t u8;
	int8_t i8;
	uint16_t u16;
	int16_t i16;
	uint32_t u32;
	int32_t i32;
	float f32;

	switch (t) {
	case GGUF_TYPE_UINT8:
	case GGUF_TYPE_BOOL: memcpy(&u8, p, 1); kv->v.u64 = u8; break;
	case GGUF_TYPE_INT8: memcpy(&i8, p, 1); kv->v.i64 = i8; break;
	case GGUF_TYPE_UINT16: memcpy(&u16, p, 2); kv->v.u64 = u16; break;
	case GGUF_TYPE_INT16: memcpy(&i16, p, 2); kv->v.i64 = i16; break;
	case GGUF_TYPE_UINT32: memcpy(&u32, p, 4); kv->v.u64 = u32; break;
	case GGUF_TYPE_INT32: memcpy(&i32, p, 4); kv->v.i64 = i32; break;
	case GGUF_TYPE_FLOAT32: memcpy(&f32, p, 4); kv->v.f64 = f32; break;
	case GGUF_TYPE_UINT64: memcpy(&kv->v.u64, p, 8); break;
	case GGUF_TYPE_INT64: memcpy(&kv->v.i64, p, 8); break;
	case GGUF_TYPE_FLOAT64: memcpy(&kv->v.f64, p, 8); break;
	default: assert(0);
	}
}

static int
is_unsigned_type(enum gguf_type t)
{
	return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 ||
	        t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_UINT64;
}

static int
is_signed_type(enum gguf_type t)
{
	return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 ||
	        t == GGUF_TYPE_INT32 || t == GGUF_TYPE_INT64;
}

static int
is_float_type(enum gguf_type t)
{
	return t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64;
}

/* ---- metadata ---- */

static int
parse_bool(struct parse *ps, uint8_t v, const char *what)
{
	if (v > 1)
		return fail(ps, EPMOE_EFORMAT, "%s: bool value %u is not 0 or 1",
		        what, v);
	return 0;
}

/* Reads the value of kv (its type already read).  Returns 0, TRUNC, or an
 * error code with the message written. */
static int
parse_value(struct parse *ps, struct gguf_kv *kv, const char *what)
{
	const uint8_t *p;
	uint32_t et;
	uint64_t n;
	size_t es;

	if (kv->type == GGUF_TYPE_STRING)
		return rd_str(ps, &kv->v.str);
	if (kv->type != GGUF_TYPE_ARRAY) {
		es = scalar_size(kv->type);
		if (es == 0)
			return fail(ps, EPMOE_EFORMAT,
			        "%s: unknown value type %u", what,
			        (unsigned)kv->type);
		if (rd_bytes(ps, es, &p))
			return TRUNC;
		scalar_decode(kv, kv->type, p);
		if (kv->type == GGUF_TYPE_BOOL)
			return parse_bool(ps, p[0], what);
		return 0;
	}
	if (rd_u32(ps, &et) || rd_u64(ps, &n))
		return TRUNC;
	if (et == GGUF_TYPE_ARRAY)
		return fail(ps, EPMOE_EFORMAT,
		        "%s: nested arrays are not supported", what);
	kv->v.arr.type = (enum gguf_type)et;
	kv->v.arr.n = n;
	if (et == GGUF_TYPE_STRING) {
		/* Each element takes at least its 8-byte length. */
		if (n > rem(ps) / 8)
			return TRUNC;
		if (n > 0 &&
		        (kv->v.arr.strs = malloc(n * sizeof(struct gguf_str))) ==
		                NULL)
			return fail(ps, EPMOE_ENOMEM, "%s: out of memory", what);
		for (uint64_t i = 0; i < n; i++) {
			if (rd_str(ps, &kv->v.arr.strs[i]))
				return TRUNC;
		}
		kv->v.arr.data = kv->v.arr.strs;
		return 0;
	}
	es = scalar_size(et);
	if (es == 0)
		return fail(ps, EPMOE_EFORMAT,
		        "%s: unknown array element type %u", what, et);
	if (n > rem(ps) / es || rd_bytes(ps, n * es, &p))
		return TRUNC;
	kv->v.arr.data = p;
	if (et == GGUF_TYPE_BOOL) {
		for (uint64_t i = 0; i < n; i++) {
			if (p[i] > 1)
				return fail(ps, EPMOE_EFORMAT,
				        "%s: element %" PRIu64
				        ": bool value %u is not 0 or 1",
				        what, i, p[i]);
		}
	}
	return 0;
}

static int
parse_kvs(struct parse *ps, struct gguf_priv *g)
{
	struct gguf_file *f = &g->f;
	char kbuf[64], what[96];
	int rc;

	for (uint64_t i = 0; i < f->n_kv; i++) {
		struct gguf_kv *kv = &f->kv[i];
		uint32_t t;

		if (i >= g->kv_alloc) /* cannot happen: bytes ran out first */
			return fail(ps, EPMOE_EFORMAT,
			        "truncated: key-value pair %" PRIu64 " of %" PRIu64
			        " extends past end of file (size %zu)",
			        i + 1, f->n_kv, ps->size);
		snprintf(what, sizeof(what), "key-value pair %" PRIu64
		        " of %" PRIu64, i + 1, f->n_kv);
		if (rd_str(ps, &kv->key))
			goto trunc;
		snprintf(what, sizeof(what), "key '%s'",
		        str_show(kv->key, kbuf, sizeof(kbuf)));
		rc = strmap_put(&g->kv_names, kv->key.ptr, kv->key.len, (int32_t)i, NULL);
		if (rc == 1)
			return fail(ps, EPMOE_EFORMAT, "duplicate %s", what);
		if (rc < 0)
			return fail(ps, rc, "%s: %s", what, epmoe_strerror(rc));
		if (rd_u32(ps, &t))
			goto trunc;
		if (t >= GGUF_TYPE_COUNT)
			return fail(ps, EPMOE_EFORMAT, "%s: unknown value type %u",
			        what, t);
		kv->type = (enum gguf_type)t;
		if ((rc = parse_value(ps, kv, what)) == TRUNC)
			goto trunc;
		if (rc != 0)
			return rc;
		continue;
trunc:
		return fail(ps, EPMOE_EFORMAT,
		        "truncated: key-value pair %" PRIu64 " of %" PRIu64
		        "%s%s%s extends past end of file (size %zu)",
		        i + 1, f->n_kv, kv->key.ptr ? " ('" : "",
		        kv->key.ptr ? str_show(kv->key, kbuf, sizeof(kbuf)) : "",
		        kv->key.ptr ? "')" : "", ps->size);
	}
	return 0;
}

static int
read_alignment(struct parse *ps, struct gguf_priv *g)
{
	const struct gguf_kv *kv = gguf_find_kv(&g->f, "general.alignment");
	uint64_t a;

	g->f.alignment = GGUF_DEFAULT_ALIGNMENT;
	if (kv == NULL)
		return 0;
	if (is_unsigned_type(kv->type))
		a = kv->v.u64;
	else if (is_signed_type(kv->type) && kv->v.i64 >= 0)
		a = (uint64_t)kv->v.i64;
	else
		return fail(ps, EPMOE_EFORMAT,
		        "general.alignment has type %s, not an integer",
		        gguf_type_name(kv->type));
	if (a == 0 || (a & (a - 1)) != 0 || a > (UINT32_C(1) << 30))
		return fail(ps, EPMOE_EFORMAT,
		        "general.alignment %" PRIu64
		        " is not a power of two in 1..2^30", a);
	g->f.alignment = (uint32_t)a;
	return 0;
}

/* Allocates room for min(count, remaining / min_bytes + 1) entries and a
 * name table for them (see KV_MIN_BYTES). */
static int
alloc_entries(struct parse *ps, void **arr, size_t elem, uint64_t count,
        uint64_t min_bytes, uint64_t *n_alloc, struct strmap *names,
        const char *what)
{
	uint64_t n = rem(ps) / min_bytes + 1;

	if (n > count)
		n = count;
	if (n > MAX_COUNT)
		return fail(ps, EPMOE_ERANGE, "more than %u %s", MAX_COUNT, what);
	if ((*arr = calloc(n ? n : 1, elem)) == NULL ||
	        strmap_init(names, n) != 0)
		return fail(ps, EPMOE_ENOMEM, "out of memory");
	*n_alloc = n;
	return 0;
}

/* ---- tensor infos ---- */

/* Types whose block size is known open (so `epmoe inspect` shows any
 * llama.cpp file); whether epmoe can compute with them is the model
 * loader's question (dtype_supported). */
static int
unsupported_type(struct parse *ps, const char *what, uint32_t t)
{
	return fail(ps, EPMOE_ENOTSUP,
	        "%s has tensor type %s, whose layout is not known "
	        "(supported: %s)",
	        what, dtype_name((enum dtype)t), dtype_supported_list());
}

static int
parse_tensor_info(struct parse *ps, struct gguf_priv *g, uint64_t i)
{
	struct gguf_file *f = &g->f;
	struct gguf_tensor *t = &f->tensors[i];
	char nbuf[64], what[96];
	uint32_t type;
	uint64_t n = 1;
	int rc;
	size_t blk;

	if (rd_str(ps, &t->name))
		return TRUNC;
	snprintf(what, sizeof(what), "tensor '%s' (%" PRIu64 " of %" PRIu64 ")",
	        str_show(t->name, nbuf, sizeof(nbuf)), i + 1, f->n_tensors);
	rc = strmap_put(&g->t_names, t->name.ptr, t->name.len, (int32_t)i, NULL);
	if (rc == 1)
		return fail(ps, EPMOE_EFORMAT, "duplicate tensor name in %s",
		        what);
	if (rc < 0)
		return fail(ps, rc, "%s: %s", what, epmoe_strerror(rc));
	if (rd_u32(ps, &t->n_dims))
		return TRUNC;
	if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
		return fail(ps, EPMOE_EFORMAT, "%s: n_dims %u is not in 1..%d",
		        what, t->n_dims, GGUF_MAX_DIMS);
	for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
		t->ne[d] = 1;
	for (uint32_t d = 0; d < t->n_dims; d++) {
		if (rd_u64(ps, &t->ne[d]))
			return TRUNC;
	}
	if (rd_u32(ps, &type) || rd_u64(ps, &t->offset))
		return TRUNC;
	for (uint32_t d = 0; d < t->n_dims; d++) {
		if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX)
			return fail(ps, EPMOE_EFORMAT,
			        "%s: dimension %u is %" PRIu64 " (must be 1..2^63-1)",
			        what, d, t->ne[d]);
		if (__builtin_mul_overflow(n, t->ne[d], &n) ||
		        n > (uint64_t)INT64_MAX)
			return fail(ps, EPMOE_EFORMAT,
			        "%s: element count overflows", what);
	}
	t->n_elements = n;
	if (dtype_block_size((enum dtype)type) == 0)
		return unsupported_type(ps, what, type);
	t->type = (enum dtype)type;
	blk = dtype_block_elems(t->type);
	if (t->ne[0] % blk != 0)
		return fail(ps, EPMOE_EFORMAT,
		        "%s: row length %" PRIu64
		        " is not a multiple of the %s block size %zu",
		        what, t->ne[0], dtype_name(t->type), blk);
	if (__builtin_mul_overflow(n / blk, (uint64_t)dtype_block_size(t->type),
	            &n) ||
	        n > SIZE_MAX)
		return fail(ps, EPMOE_EFORMAT, "%s: byte size overflows", what);
	t->size = (size_t)n;
	return 0;
}

static int
parse_tensors(struct parse *ps, struct gguf_priv *g)
{
	struct gguf_file *f = &g->f;
	char nbuf[64];
	uint64_t avail;
	int rc;

	if ((rc = alloc_entries(ps, (void **)&f->tensors, sizeof(*f->tensors),
	             f->n_tensors, TINFO_MIN_BYTES, &g->t_alloc, &g->t_names,
	             "tensors")) != 0)
		return rc;
	for (uint64_t i = 0; i < f->n_tensors; i++) {
		if (i >= g->t_alloc ||
		        (rc = parse_tensor_info(ps, g, i)) == TRUNC)
			return fail(ps, EPMOE_EFORMAT,
			        "truncated: tensor info %" PRIu64 " of %" PRIu64
			        " extends past end of file (size %zu)",
			        i + 1, f->n_tensors, ps->size);
		if (rc != 0)
			return rc;
	}
	if ((rc = read_alignment(ps, g)) != 0)
		return rc;
	/* pos <= size, and size fits in size_t, so this cannot overflow a
	 * uint64_t. */
	f->data_offset = ((uint64_t)ps->pos + f->alignment - 1) &
	        ~(uint64_t)(f->alignment - 1);
	if (f->n_tensors == 0)
		return 0;
	if (f->data_offset > ps->size)
		return fail(ps, EPMOE_EFORMAT,
		        "truncated: data section at offset %" PRIu64
		        " starts past end of file (size %zu)",
		        f->data_offset, ps->size);
	avail = ps->size - f->data_offset;
	for (uint64_t i = 0; i < f->n_tensors; i++) {
		struct gguf_tensor *t = &f->tensors[i];

		if (t->offset % f->alignment != 0)
			return fail(ps, EPMOE_EFORMAT,
			        "tensor '%s' (%" PRIu64 " of %" PRIu64
			        "): offset %" PRIu64
			        " is not a multiple of the alignment %u",
			        str_show(t->name, nbuf, sizeof(nbuf)), i + 1,
			        f->n_tensors, t->offset, f->alignment);
		if (t->offset > avail || t->size > avail - t->offset)
			return fail(ps, EPMOE_EFORMAT,
			        "truncated: tensor '%s' (%" PRIu64 " of %" PRIu64
			        ") data at offset %" PRIu64 ", %zu bytes, "
			        "extends past end of file (size %zu)",
			        str_show(t->name, nbuf, sizeof(nbuf)), i + 1,
			        f->n_tensors, f->data_offset + t->offset,
			        t->size, ps->size);
		t->data = ps->base + f->data_offset + t->offset;
	}
	return 0;
}

/* ---- open / close ---- */

static int
parse_header(struct parse *ps, struct gguf_priv *g)
{
	struct gguf_file *f = &g->f;
	uint32_t magic;
	int rc;

	if (rd_u32(ps, &magic))
		goto trunc;
	if (magic != GGUF_MAGIC)
		return fail(ps, EPMOE_EFORMAT,
		        "not a GGUF file (magic 0x%08x, expected 0x%08x \"GGUF\")",
		        magic, GGUF_MAGIC);
	if (rd_u32(ps, &f->version))
		goto trunc;
	if (f->version != 2 && f->version != 3) {
		if (f->version == 0x02000000 || f->version == 0x03000000)
			return fail(ps, EPMOE_ENOTSUP,
			        "big-endian GGUF files are not supported");
		return fail(ps, EPMOE_ENOTSUP,
		        "unsupported GGUF version %u (supported: 2, 3)",
		        f->version);
	}
	if (rd_u64(ps, &f->n_tensors) || rd_u64(ps, &f->n_kv))
		goto trunc;
	if ((rc = alloc_entries(ps, (void **)&f->kv, sizeof(*f->kv), f->n_kv,
	             KV_MIN_BYTES, &g->kv_alloc, &g->kv_names,
	             "key-value pairs")) != 0)
		return rc;
	if ((rc = parse_kvs(ps, g)) != 0)
		return rc;
	return parse_tensors(ps, g);

trunc:
	return fail(ps, EPMOE_EFORMAT,
	        "truncated: header extends past end of file (size %zu)",
	        ps->size);
}

int
gguf_open(struct gguf_file **out, const char *path, char *err, size_t err_len)
{
	struct parse ps = { .path = path, .err = err, .err_len = err_len };
	struct gguf_priv *g;
	struct stat st;
	void *map;
	int fd, rc;

	if (err != NULL && err_len > 0)
		err[0] = '\0';
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return fail(&ps, epmoe_err_from_errno(errno), "open: %s",
		        strerror(errno));
	if (fstat(fd, &st) != 0) {
		rc = fail(&ps, EPMOE_EIO, "fstat: %s", strerror(errno));
		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return fail(&ps, EPMOE_EINVAL, "not a regular file");
	}
	if ((uint64_t)st.st_size > SIZE_MAX) {
		close(fd);
		return fail(&ps, EPMOE_ERANGE, "file too large to map");
	}
	if (st.st_size == 0) {
		close(fd);
		return fail(&ps, EPMOE_EFORMAT,
		        "truncated: header extends past end of file (size 0)");
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	rc = errno;
	close(fd);
	if (map == MAP_FAILED)
		return fail(&ps, epmoe_err_from_errno(rc), "mmap: %s",
		        strerror(rc));
	if ((g = calloc(1, sizeof(*g))) == NULL ||
	        (g->f.path = strdup(path)) == NULL) {
		free(g);
		munmap(map, (size_t)st.st_size);
		return fail(&ps, EPMOE_ENOMEM, "out of memory");
	}
	g->f.base = map;
	g->f.file_size = (size_t)st.st_size;
	ps.base = map;
	ps.size = (size_t)st.st_size;
	if ((rc = parse_header(&ps, g)) != 0) {
		gguf_close(&g->f);
		return rc;
	}
	*out = &g->f;
	return 0;
}

void
gguf_close(struct gguf_file *f)
{
	struct gguf_priv *g = (struct gguf_priv *)f;

	if (f == NULL)
		return;
	if (f->kv != NULL) {
		for (uint64_t i = 0; i < g->kv_alloc; i++) {
			if (f->kv[i].type == GGUF_TYPE_ARRAY)
				free(f->kv[i].v.arr.strs);
		}
	}
	free(f->kv);
	free(f->tensors);
	strmap_fini(&g->kv_names);
	strmap_fini(&g->t_names);
	if (f->base != NULL)
		munmap((void *)f->base, f->file_size);
	free(f->path);
	free(g);
}

/* ---- lookups ---- */

const struct gguf_kv *
gguf_find_kv(const struct gguf_file *f, const char *key)
{
	const struct gguf_priv *g = (const struct gguf_priv *)f;
	int32_t i = strmap_get(&g->kv_names, key, strlen(key));

	return i >= 0 ? &f->kv[i] : NULL;
}

const struct gguf_tensor *
gguf_find_tensor(const struct gguf_file *f, const char *name)
{
	const struct gguf_priv *g = (const struct gguf_priv *)f;
	int32_t i = strmap_get(&g->t_names, name, strlen(name));

	return i >= 0 ? &f->tensors[i] : NULL;
}

/* Integer value of kv as a signed 128-bit-free pair: ok when kv is an
 * integer; *neg set for negative values. */
static int
kv_int(const struct gguf_kv *kv, uint64_t *mag, int *neg)
{
	if (is_unsigned_type(kv->type)) {
		*mag = kv->v.u64;
		*neg = 0;
		return 0;
	}
	if (is_signed_type(kv->type)) {
		*neg = kv->v.i64 < 0;
		*mag = *neg ? (uint64_t)0 - (uint64_t)kv->v.i64 :
		              (uint64_t)kv->v.i64;
		return 0;
	}
	return EPMOE_EFORMAT;
}

int
gguf_get_u64(const struct gguf_file *g, const char *key, uint64_t *out)
{
	const struct gguf_kv *kv = gguf_find_kv(g, key);
	uint64_t m;
	int neg;

	if (kv == NULL)
		return EPMOE_ENOENT;
	if (kv_int(kv, &m, &neg) != 0 || neg)
		return EPMOE_EFORMAT;
	*out = m;
	return 0;
}

int
gguf_get_u32(const struct gguf_file *g, const char *key, uint32_t *out)
{
	uint64_t v;
	int rc;

	if ((rc = gguf_get_u64(g, key, &v)) != 0)
		return rc;
	if (v > UINT32_MAX)
		return EPMOE_EFORMAT;
	*out = (uint32_t)v;
	return 0;
}

int
gguf_get_i64(const struct gguf_file *g, const char *key, int64_t *out)
{
	const struct gguf_kv *kv = gguf_find_kv(g, key);
	uint64_t m;
	int neg;

	if (kv == NULL)
		return EPMOE_ENOENT;
	if (kv_int(kv, &m, &neg) != 0)
		return EPMOE_EFORMAT;
	if (neg) {
		if (m > (uint64_t)INT64_MAX + 1)
			return EPMOE_EFORMAT;
		*out = (int64_t)(0 - m);
	} else {
		if (m > (uint64_t)INT64_MAX)
			return EPMOE_EFORMAT;
		*out = (int64_t)m;
	}
	return 0;
}

int
gguf_get_f32(const struct gguf_file *g, const char *key, float *out)
{
	const struct gguf_kv *kv = gguf_find_kv(g, key);

	if (kv == NULL)
		return EPMOE_ENOENT;
	if (is_float_type(kv->type))
		*out = (float)kv->v.f64;
	else if (is_unsigned_type(kv->type))
		*out = (float)kv->v.u64;
	else if (is_signed_type(kv->type))
		*out = (float)kv->v.i64;
	else
		return EPMOE_EFORMAT;
	return 0;
}

int
gguf_get_bool(const struct gguf_file *g, const char *key, bool *out)
{
	const struct gguf_kv *kv = gguf_find_kv(g, key);

	if (kv == NULL)
		return EPMOE_ENOENT;
	if (kv->type != GGUF_TYPE_BOOL)
		return EPMOE_EFORMAT;
	*out = kv->v.u64 != 0;
	return 0;
}

int
gguf_get_str(const struct gguf_file *g, const char *key, struct gguf_str *out)
{
	const struct gguf_kv *kv = gguf_find_kv(g, key);

	if (kv == NULL)
		return EPMOE_ENOENT;
	if (kv->type != GGUF_TYPE_STRING)
		return EPMOE_EFORMAT;
	*out = kv->v.str;
	return 0;
}

int
gguf_get_strcpy(const struct gguf_file *g, const char *key, char *buf,
        size_t buf_len)
{
	struct gguf_str s;
	int rc;

	if ((rc = gguf_get_str(g, key, &s)) != 0)
		return rc;
	if (s.len >= buf_len)
		return EPMOE_ERANGE;
	memcpy(buf, s.ptr, (size_t)s.len);
	buf[s.len] = '\0';
	return 0;
}

int
gguf_get_arr(const struct gguf_file *g, const char *key,
        enum gguf_type elem_type, const struct gguf_kv **out)
{
	const struct gguf_kv *kv = gguf_find_kv(g, key);

	if (kv == NULL)
		return EPMOE_ENOENT;
	if (kv->type != GGUF_TYPE_ARRAY ||
	        (elem_type != GGUF_TYPE_COUNT && kv->v.arr.type != elem_type))
		return EPMOE_EFORMAT;
	*out = kv;
	return 0;
}

float
gguf_arr_f32(const struct gguf_kv *kv, uint64_t i)
{
	struct gguf_kv v;

	assert(kv->type == GGUF_TYPE_ARRAY && i < kv->v.arr.n);
	assert(scalar_size(kv->v.arr.type) != 0);
	scalar_decode(&v, kv->v.arr.type, (const uint8_t *)kv->v.arr.data +
	                i * scalar_size(kv->v.arr.type));
	if (is_float_type(kv->v.arr.type))
		return (float)v.v.f64;
	if (is_signed_type(kv->v.arr.type))
		return (float)v.v.i64;
	return (float)v.v.u64;
}

int64_t
gguf_arr_i64(const struct gguf_kv *kv, uint64_t i)
{
	struct gguf_kv v;

	assert(kv->type == GGUF_TYPE_ARRAY && i < kv->v.arr.n);
	assert(scalar_size(kv->v.arr.type) != 0);
	scalar_decode(&v, kv->v.arr.type, (const uint8_t *)kv->v.arr.data +
	                i * scalar_size(kv->v.arr.type));
	if (is_float_type(kv->v.arr.type))
		return (int64_t)v.v.f64;
	return v.v.i64; /* unsigned values reinterpret (u64 > 2^63 wraps) */
}

int
gguf_str_eq(struct gguf_str s, const char *c)
{
	size_t n = strlen(c);

	return s.len == n && memcmp(s.ptr, c, n) == 0;
}

/* ---- type tables ---- */

const char *
gguf_type_name(enum gguf_type t)
{
	static const char *const names[GGUF_TYPE_COUNT] = {
		"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
		"string", "array", "u64", "i64", "f64",
	};

	if ((unsigned)t < GGUF_TYPE_COUNT)
		return names[t];
	return "unknown";
}

/* ggml's numbering (b4747).  Types epmoe cannot compute with keep their
 * block geometry so files holding them still open and can be inspected;
 * numbers 31-33 and 36-38 were retired by ggml and stay unknown. */
static const struct dtype_info {
	const char *name;
	uint16_t blk_elems;
	uint16_t blk_bytes;
	bool supported;
} dtype_info[] = {
	[DTYPE_F32] = { "f32", 1, 4, true },
	[DTYPE_F16] = { "f16", 1, 2, true },
	[DTYPE_Q4_0] = { "q4_0", 32, 18, true },
	[DTYPE_Q4_1] = { "q4_1", 32, 20, true },
	[DTYPE_Q5_0] = { "q5_0", 32, 22, true },
	[DTYPE_Q5_1] = { "q5_1", 32, 24, true },
	[DTYPE_Q8_0] = { "q8_0", 32, 34, true },
	[DTYPE_Q8_1] = { "q8_1", 32, 36, false },
	[DTYPE_Q2_K] = { "q2_K", 256, 84, true },
	[DTYPE_Q3_K] = { "q3_K", 256, 110, true },
	[DTYPE_Q4_K] = { "q4_K", 256, 144, true },
	[DTYPE_Q5_K] = { "q5_K", 256, 176, true },
	[DTYPE_Q6_K] = { "q6_K", 256, 210, true },
	[DTYPE_Q8_K] = { "q8_K", 256, 292, false },
	[16] = { "iq2_xxs", 256, 66, false },
	[17] = { "iq2_xs", 256, 74, false },
	[18] = { "iq3_xxs", 256, 98, false },
	[19] = { "iq1_s", 256, 50, false },
	[20] = { "iq4_nl", 32, 18, false },
	[21] = { "iq3_s", 256, 110, false },
	[22] = { "iq2_s", 256, 82, false },
	[23] = { "iq4_xs", 256, 136, false },
	[24] = { "i8", 1, 1, false },
	[25] = { "i16", 1, 2, false },
	[26] = { "i32", 1, 4, false },
	[27] = { "i64", 1, 8, false },
	[28] = { "f64", 1, 8, false },
	[29] = { "iq1_m", 256, 56, false },
	[DTYPE_BF16] = { "bf16", 1, 2, true },
	[34] = { "tq1_0", 256, 54, false },
	[35] = { "tq2_0", 256, 66, false },
};

#define N_DTYPE_INFO (sizeof(dtype_info) / sizeof(dtype_info[0]))

static const struct dtype_info *
info_of(enum dtype t)
{
	if ((unsigned)t < N_DTYPE_INFO && dtype_info[t].name != NULL)
		return &dtype_info[t];
	return NULL;
}

const char *
dtype_name(enum dtype t)
{
	static __thread char buf[24];
	const struct dtype_info *d = info_of(t);

	if (d != NULL)
		return d->name;
	snprintf(buf, sizeof(buf), "type%u", (unsigned)t);
	return buf;
}

const char *
dtype_supported_list(void)
{
	return "f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, "
	       "q4_K, q5_K, q6_K";
}

int
dtype_parse(const char *s, enum dtype *out)
{
	for (unsigned t = 0; t < N_DTYPE_INFO; t++) {
		if (dtype_info[t].supported && strcasecmp(s, dtype_info[t].name) == 0) {
			*out = (enum dtype)t;
			return 0;
		}
	}
	return EPMOE_EINVAL;
}

int
dtype_supported(enum dtype t)
{
	const struct dtype_info *d = info_of(t);

	return d != NULL && d->supported;
}

uint32_t
dtype_block_elems(enum dtype t)
{
	const struct dtype_info *d = info_of(t);

	return d != NULL ? d->blk_elems : 1;
}

size_t
dtype_block_size(enum dtype t)
{
	const struct dtype_info *d = info_of(t);

	return d != NULL ? d->blk_bytes : 0;
}

size_t
dtype_row_size(enum dtype t, uint64_t n)
{
	assert(n % dtype_block_elems(t) == 0);
	return (size_t)(n / dtype_block_elems(t)) * dtype_block_size(t);
}
