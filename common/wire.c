/* Frame packing and validation for every NNG message (layout in wire.h).
 *
 * Everything arriving here may be hostile: every length is checked against
 * the buffer before it is used, arithmetic is done in 64 bits, and a bad
 * frame is an EPMOE_EPROTO with a reason in wire_errmsg(), never a crash.
 * No sockets here (wire_nng.c), no interpretation of the messages beyond
 * shapes and bounds.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "wire.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "epmoe frames carry host floats as little-endian: big-endian hosts are not supported"
#endif

static _Thread_local char wire_err[256] = "no error";

static int
seterr(int rv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
seterr(int rv, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(wire_err, sizeof(wire_err), fmt, ap);
	va_end(ap);
	return rv;
}

const char *
wire_errmsg(void)
{
	return wire_err;
}

const ProtobufCMessageDescriptor *
wire_kind_desc(int kind)
{
	switch (kind) {
	case WIRE_CONTROL: return &epmoe__control_msg__descriptor;
	case WIRE_BATCH: return &epmoe__expert_batch__descriptor;
	case WIRE_RESULT: return &epmoe__expert_result__descriptor;
	case WIRE_CLIENT: return &epmoe__client_msg__descriptor;
	case WIRE_CLIENT_REPLY: return &epmoe__client_reply__descriptor;
	}
	return NULL;
}

const char *
wire_kind_name(int kind)
{
	switch (kind) {
	case WIRE_CONTROL: return "control";
	case WIRE_BATCH: return "batch";
	case WIRE_RESULT: return "result";
	case WIRE_CLIENT: return "client";
	case WIRE_CLIENT_REPLY: return "client-reply";
	}
	return "unknown";
}

static uint64_t
align4(uint64_t n)
{
	return (n + 3) & ~(uint64_t)3;
}

static void
put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t
get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	        (uint32_t)p[3] << 24;
}

size_t
wire_size(size_t header_len, size_t n_floats)
{
	if (header_len > WIRE_MAX_HEADER_LEN)
		return 0;
	if (n_floats > UINT32_MAX / sizeof(float))
		return 0;
	return WIRE_FIXED_LEN + (size_t)align4(header_len) +
	        n_floats * sizeof(float);
}

size_t
wire_msg_size(const ProtobufCMessage *hdr, size_t n_floats)
{
	if (hdr == NULL)
		return 0;
	return wire_size(protobuf_c_message_get_packed_size(hdr), n_floats);
}

/* The `version` field (number 1, uint32) of a top-level message, if its
 * type has one. */
static const ProtobufCFieldDescriptor *
version_field(const ProtobufCMessageDescriptor *desc)
{
	const ProtobufCFieldDescriptor *f;

	f = protobuf_c_message_descriptor_get_field(desc, 1);
	if (f == NULL || f->type != PROTOBUF_C_TYPE_UINT32 ||
	    f->label != PROTOBUF_C_LABEL_NONE || strcmp(f->name, "version") != 0)
		return NULL;
	return f;
}

static uint32_t
read_version(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
	uint32_t v;

	memcpy(&v, (const char *)m + f->offset, sizeof(v));
	return v;
}

/* Packs without any alignment requirement on buf; rows area returned as
 * bytes. */
static int
pack_frame(void *buf, size_t cap, int kind, const ProtobufCMessage *hdr,
        size_t n_floats, uint8_t **rows_out, size_t *out_len)
{
	const ProtobufCMessageDescriptor *desc = wire_kind_desc(kind);
	const ProtobufCFieldDescriptor *vf;
	uint8_t *p = buf;
	size_t hl, total, packed, pad_at, rows_at;

	if (desc == NULL)
		return seterr(EPMOE_EINVAL, "unknown frame kind %d", kind);
	if (hdr == NULL || hdr->descriptor != desc)
		return seterr(EPMOE_EINVAL, "header is %s, kind %s needs %s",
		        hdr ? hdr->descriptor->name : "NULL",
		        wire_kind_name(kind), desc->name);
	if ((vf = version_field(desc)) != NULL &&
	    read_version(hdr, vf) != EPMOE_PROTO_VERSION)
		return seterr(EPMOE_EINVAL, "%s.version is %u, must be "
		        "EPMOE_PROTO_VERSION (%d)", desc->name,
		        read_version(hdr, vf), EPMOE_PROTO_VERSION);
	hl = protobuf_c_message_get_packed_size(hdr);
	if ((total = wire_size(hl, n_floats)) == 0)
		return seterr(EPMOE_ERANGE, "frame too large (%zu header "
		        "bytes, %zu floats)", hl, n_floats);
	if (buf == NULL || total > cap)
		return seterr(EPMOE_ERANGE, "frame needs %zu bytes, buffer "
		        "has %zu", total, buf ? cap : 0);
	memcpy(p, WIRE_MAGIC, 4);
	p[4] = EPMOE_PROTO_VERSION;
	p[5] = (uint8_t)kind;
	p[6] = p[7] = 0;
	put_u32(p + 8, (uint32_t)hl);
	put_u32(p + 12, (uint32_t)(n_floats * sizeof(float)));
	packed = protobuf_c_message_pack(hdr, p + WIRE_FIXED_LEN);
	if (packed != hl)
		return seterr(EPMOE_EINTERNAL, "protobuf packed %zu bytes, "
		        "sized %zu", packed, hl);
	pad_at = WIRE_FIXED_LEN + hl;
	rows_at = WIRE_FIXED_LEN + (size_t)align4(hl);
	memset(p + pad_at, 0, rows_at - pad_at);
	*rows_out = p + rows_at;
	*out_len = total;
	return 0;
}

int
wire_pack_begin(void *buf, size_t cap, int kind, const ProtobufCMessage *hdr,
        size_t n_floats, float **rows_out, size_t *out_len)
{
	uint8_t *rows;
	size_t len;
	int rv;

	if (n_floats > 0 && ((uintptr_t)buf & 3) != 0)
		return seterr(EPMOE_EINVAL, "frame buffer %p is not 4-byte "
		        "aligned: rows would be misaligned", buf);
	if ((rv = pack_frame(buf, cap, kind, hdr, n_floats, &rows, &len)) != 0)
		return rv;
	*rows_out = (float *)(void *)rows;
	*out_len = len;
	return 0;
}

int
wire_pack(void *buf, size_t cap, int kind, const ProtobufCMessage *hdr,
        const float *rows, size_t n_floats, size_t *out_len)
{
	uint8_t *dst;
	size_t len;
	int rv;

	if (n_floats > 0 && rows == NULL)
		return seterr(EPMOE_EINVAL, "%zu floats but no rows", n_floats);
	if ((rv = pack_frame(buf, cap, kind, hdr, n_floats, &dst, &len)) != 0)
		return rv;
	if (n_floats > 0)
		memcpy(dst, rows, n_floats * sizeof(float));
	*out_len = len;
	return 0;
}

/* Length and magic, then the fixed fields. */
static int
parse_fixed(const uint8_t *p, size_t len, struct wire_frame *f)
{
	if (p == NULL && len > 0)
		return seterr(EPMOE_EINVAL, "NULL frame buffer");
	if (len < WIRE_FIXED_LEN)
		return seterr(EPMOE_EPROTO, "frame of %zu bytes is shorter "
		        "than the %d-byte fixed header", len, WIRE_FIXED_LEN);
	if (memcmp(p, WIRE_MAGIC, 4) != 0)
		return seterr(EPMOE_EPROTO, "bad magic %02x%02x%02x%02x (not "
		        "an epmoe frame)", p[0], p[1], p[2], p[3]);
	f->version = p[4];
	f->kind = p[5];
	f->header_len = get_u32(p + 8);
	f->payload_len = get_u32(p + 12);
	return 0;
}

static int
check_lengths(const struct wire_frame *f, size_t len)
{
	uint64_t want;

	if (f->header_len > WIRE_MAX_HEADER_LEN)
		return seterr(EPMOE_EPROTO, "header_len %u over the %u limit",
		        f->header_len, WIRE_MAX_HEADER_LEN);
	want = WIRE_FIXED_LEN + align4(f->header_len) + f->payload_len;
	if (want > len)
		return seterr(EPMOE_EPROTO, "truncated frame: %zu bytes, "
		        "header_len %u and payload_len %u need %llu", len,
		        f->header_len, f->payload_len, (unsigned long long)want);
	if (want < len)
		return seterr(EPMOE_EPROTO, "%llu trailing bytes after a frame "
		        "of %llu bytes", (unsigned long long)(len - want),
		        (unsigned long long)want);
	return 0;
}

int
wire_peek(const void *buf, size_t len, struct wire_frame *out)
{
	struct wire_frame f;
	int rv;

	if ((rv = parse_fixed(buf, len, &f)) != 0)
		return rv;
	if ((rv = check_lengths(&f, len)) != 0)
		return rv;
	*out = f;
	return 0;
}

/* protobuf-c allocates through these, so an allocation failure can be told
 * from bad bytes (both make protobuf_c_message_unpack return NULL) and the
 * process's malloc sees every allocation.  Their blocks are plain malloc
 * blocks: callers free messages with the default allocator (NULL). */
static _Thread_local int pb_alloc_failed;

static void *
pb_alloc(void *data, size_t size)
{
	void *p = malloc(size);

	(void)data;
	if (p == NULL)
		pb_alloc_failed = 1;
	return p;
}

static void
pb_free(void *data, void *p)
{
	(void)data;
	free(p);
}

static ProtobufCAllocator pb_allocator = { pb_alloc, pb_free, NULL };

int
wire_unpack(const void *buf, size_t len, int expected_kind,
        const ProtobufCMessageDescriptor *desc, ProtobufCMessage **hdr_out,
        const float **rows_out, size_t *n_floats_out)
{
	const uint8_t *p = buf;
	const ProtobufCFieldDescriptor *vf;
	ProtobufCMessage *m;
	struct wire_frame f;
	size_t rows_at;
	int rv;

	if (desc == NULL && (desc = wire_kind_desc(expected_kind)) == NULL)
		return seterr(EPMOE_EINVAL, "unknown expected kind %d",
		        expected_kind);
	if ((rv = parse_fixed(p, len, &f)) != 0)
		return rv;
	if (f.version != EPMOE_PROTO_VERSION)
		return seterr(EPMOE_EPROTO, "peer speaks protocol version %u, "
		        "this build speaks %d", f.version, EPMOE_PROTO_VERSION);
	if (f.kind != expected_kind)
		return seterr(EPMOE_EPROTO, "frame kind %u (%s), expected %d "
		        "(%s)", f.kind, wire_kind_name(f.kind), expected_kind,
		        wire_kind_name(expected_kind));
	if (p[6] != 0 || p[7] != 0)
		return seterr(EPMOE_EPROTO, "reserved bytes are not zero");
	if ((rv = check_lengths(&f, len)) != 0)
		return rv;
	if (f.payload_len % sizeof(float) != 0)
		return seterr(EPMOE_EPROTO, "payload_len %u is not a multiple "
		        "of 4", f.payload_len);
	rows_at = WIRE_FIXED_LEN + (size_t)align4(f.header_len);
	for (size_t i = WIRE_FIXED_LEN + f.header_len; i < rows_at; i++)
		if (p[i] != 0)
			return seterr(EPMOE_EPROTO, "padding byte %zu is not "
			        "zero", i);
	if (f.payload_len > 0 && ((uintptr_t)p & 3) != 0)
		return seterr(EPMOE_EINVAL, "frame buffer %p is not 4-byte "
		        "aligned: rows would be misaligned", buf);
	pb_alloc_failed = 0;
	m = protobuf_c_message_unpack(desc, &pb_allocator, f.header_len,
	        p + WIRE_FIXED_LEN);
	if (m == NULL && pb_alloc_failed)
		return seterr(EPMOE_ENOMEM, "out of memory decoding %s",
		        desc->name);
	if (m == NULL)
		return seterr(EPMOE_EPROTO, "%u header bytes do not decode as "
		        "%s", f.header_len, desc->name);
	if ((vf = version_field(desc)) != NULL &&
	    read_version(m, vf) != EPMOE_PROTO_VERSION) {
		rv = seterr(EPMOE_EPROTO, "%s.version is %u, this build speaks "
		        "%d", desc->name, read_version(m, vf),
		        EPMOE_PROTO_VERSION);
		protobuf_c_message_free_unpacked(m, NULL);
		return rv;
	}
	*hdr_out = m;
	if (rows_out)
		*rows_out = f.payload_len > 0 ?
		        (const float *)(const void *)(p + rows_at) : NULL;
	if (n_floats_out)
		*n_floats_out = f.payload_len / sizeof(float);
	return 0;
}

int
wire_check_batch(const Epmoe__ExpertBatch *b, size_t n_floats,
        const struct wire_limits *lim)
{
	uint32_t max_dim = WIRE_MAX_DIM;
	uint64_t n_entries = 0;

	if (b == NULL)
		return seterr(EPMOE_EINVAL, "NULL batch");
	if (lim != NULL && lim->max_dim != 0 && lim->max_dim < max_dim)
		max_dim = lim->max_dim;
	if (b->dim == 0 || b->dim > max_dim)
		return seterr(EPMOE_EPROTO, "batch dim %u outside [1, %u]",
		        b->dim, max_dim);
	if (lim != NULL && lim->n_layers != 0 && b->layer >= lim->n_layers)
		return seterr(EPMOE_EPROTO, "batch layer %u >= %u layers",
		        b->layer, lim->n_layers);
	if (lim != NULL && lim->max_rows != 0 &&
	    (b->n_rows_in > lim->max_rows || b->n_rows_out > lim->max_rows))
		return seterr(EPMOE_EPROTO, "batch of %u rows in, %u out: "
		        "limit %u", b->n_rows_in, b->n_rows_out, lim->max_rows);
	if ((uint64_t)b->n_rows_in * b->dim != n_floats)
		return seterr(EPMOE_EPROTO, "batch has %u rows of %u but %zu "
		        "floats", b->n_rows_in, b->dim, n_floats);
	for (size_t g = 0; g < b->n_groups; g++) {
		const Epmoe__ExpertGroup *gr = b->groups[g];

		if (lim != NULL && lim->n_experts != 0 &&
		    gr->expert >= lim->n_experts)
			return seterr(EPMOE_EPROTO, "group %zu: expert %u >= %u "
			        "experts", g, gr->expert, lim->n_experts);
		if (lim != NULL && lim->n_slots != 0 && gr->slot >= lim->n_slots)
			return seterr(EPMOE_EPROTO, "group %zu: slot %u >= %u "
			        "slots", g, gr->slot, lim->n_slots);
		n_entries += gr->n_tokens;
	}
	if (b->n_gather == 0) {
		if (n_entries != b->n_rows_in)
			return seterr(EPMOE_EPROTO, "groups hold %llu tokens but "
			        "the batch has %u rows",
			        (unsigned long long)n_entries, b->n_rows_in);
	} else {
		if (b->n_gather != n_entries)
			return seterr(EPMOE_EPROTO, "gather map has %zu entries, "
			        "groups hold %llu tokens", b->n_gather,
			        (unsigned long long)n_entries);
		for (size_t j = 0; j < b->n_gather; j++)
			if (b->gather[j] >= b->n_rows_in)
				return seterr(EPMOE_EPROTO, "gather[%zu] = %u >= "
				        "%u input rows", j, b->gather[j],
				        b->n_rows_in);
	}
	if (b->n_weights != n_entries)
		return seterr(EPMOE_EPROTO, "%zu gate weights for %llu entries",
		        b->n_weights, (unsigned long long)n_entries);
	for (size_t j = 0; j < b->n_weights; j++)
		if (!isfinite(b->weights[j]))
			return seterr(EPMOE_EPROTO, "gate weight %zu is not "
			        "finite", j);
	if (lim != NULL && lim->n_experts != 0 && b->n_prefetch > lim->n_experts)
		return seterr(EPMOE_EPROTO, "prefetch hint names %zu experts of %u",
		        b->n_prefetch, lim->n_experts);
	if (b->n_combine != n_entries)
		return seterr(EPMOE_EPROTO, "combine map has %zu entries for "
		        "%llu", b->n_combine, (unsigned long long)n_entries);
	for (size_t j = 0; j < b->n_combine; j++)
		if (b->combine[j] >= b->n_rows_out)
			return seterr(EPMOE_EPROTO, "combine[%zu] = %u >= %u "
			        "output rows", j, b->combine[j], b->n_rows_out);
	return 0;
}

int
wire_check_result(const Epmoe__ExpertResult *r, size_t n_floats,
        const struct wire_expect *exp)
{
	if (r == NULL)
		return seterr(EPMOE_EINVAL, "NULL result");
	if (r->status == EPMOE__STATUS__STATUS_OK) {
		if (r->dim == 0 || r->dim > WIRE_MAX_DIM)
			return seterr(EPMOE_EPROTO, "result dim %u outside "
			        "[1, %u]", r->dim, WIRE_MAX_DIM);
		if ((uint64_t)r->n_rows * r->dim != n_floats)
			return seterr(EPMOE_EPROTO, "result has %u rows of %u "
			        "but %zu floats", r->n_rows, r->dim, n_floats);
	} else if (n_floats != 0) {
		return seterr(EPMOE_EPROTO, "failed result (status %d) "
		        "carries %zu floats", (int)r->status, n_floats);
	}
	if (exp == NULL)
		return 0;
	if (r->batch_id != exp->batch_id || r->attempt != exp->attempt)
		return seterr(EPMOE_ESTATE, "reply to batch %llu attempt %u, "
		        "waiting for batch %llu attempt %u",
		        (unsigned long long)r->batch_id, r->attempt,
		        (unsigned long long)exp->batch_id, exp->attempt);
	if (r->status == EPMOE__STATUS__STATUS_OK &&
	    (r->n_rows != exp->n_rows || r->dim != exp->dim))
		return seterr(EPMOE_EPROTO, "result is %u x %u, batch wanted "
		        "%u x %u", r->n_rows, r->dim, exp->n_rows, exp->dim);
	return 0;
}

int
wire_status_to_err(int status)
{
	switch (status) {
	case EPMOE__STATUS__STATUS_OK: return 0;
	case EPMOE__STATUS__STATUS_INVALID: return EPMOE_EINVAL;
	case EPMOE__STATUS__STATUS_BUSY: return EPMOE_EBUSY;
	case EPMOE__STATUS__STATUS_STALE_PLACEMENT: return EPMOE_ESTATE;
	case EPMOE__STATUS__STATUS_UNAVAILABLE: return EPMOE_EUNAVAIL;
	case EPMOE__STATUS__STATUS_TIMEOUT: return EPMOE_ETIMEDOUT;
	case EPMOE__STATUS__STATUS_CANCELLED: return EPMOE_ECANCELED;
	case EPMOE__STATUS__STATUS_NOT_FOUND: return EPMOE_ENOENT;
	case EPMOE__STATUS__STATUS_UNSUPPORTED: return EPMOE_ENOTSUP;
	case EPMOE__STATUS__STATUS_PROTOCOL: return EPMOE_EPROTO;
	case EPMOE__STATUS__STATUS_NO_MEMORY: return EPMOE_ENOMEM;
	case EPMOE__STATUS__STATUS_INTERNAL: return EPMOE_EINTERNAL;
	case EPMOE__STATUS__STATUS_UNAUTHORIZED: return EPMOE_EAUTH;
	}
	return EPMOE_EPROTO;
}

int
wire_err_to_status(int err)
{
	switch (err) {
	case 0: return EPMOE__STATUS__STATUS_OK;
	case EPMOE_EINVAL:
	case EPMOE_EFORMAT:
	case EPMOE_ERANGE: return EPMOE__STATUS__STATUS_INVALID;
	case EPMOE_EBUSY: return EPMOE__STATUS__STATUS_BUSY;
	case EPMOE_ESTATE: return EPMOE__STATUS__STATUS_STALE_PLACEMENT;
	case EPMOE_EUNAVAIL:
	case EPMOE_ECLOSED: return EPMOE__STATUS__STATUS_UNAVAILABLE;
	case EPMOE_ETIMEDOUT: return EPMOE__STATUS__STATUS_TIMEOUT;
	case EPMOE_ECANCELED: return EPMOE__STATUS__STATUS_CANCELLED;
	case EPMOE_ENOENT: return EPMOE__STATUS__STATUS_NOT_FOUND;
	case EPMOE_ENOTSUP: return EPMOE__STATUS__STATUS_UNSUPPORTED;
	case EPMOE_EPROTO: return EPMOE__STATUS__STATUS_PROTOCOL;
	case EPMOE_ENOMEM: return EPMOE__STATUS__STATUS_NO_MEMORY;
	case EPMOE_EAUTH: return EPMOE__STATUS__STATUS_UNAUTHORIZED;
	}
	return EPMOE__STATUS__STATUS_INTERNAL;
}
