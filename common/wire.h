/* Framing of every epmoe NNG message: a fixed 16-byte header, a protobuf
 * message (proto/epmoe.proto) and raw float32 rows after it, so bulk
 * activations are written and read in place, never encoded.
 *
 *   offset  size
 *   0       4    magic "EPMW"
 *   4       1    version (EPMOE_PROTO_VERSION)
 *   5       1    kind (enum wire_kind: which top-level message the header is)
 *   6       2    reserved, zero
 *   8       4    header_len  (u32 little-endian, protobuf bytes)
 *   12      4    payload_len (u32 little-endian, bytes, multiple of 4)
 *   16      header_len bytes of protobuf, then zero padding to 4 bytes
 *   16 + align4(header_len)  payload_len bytes: little-endian float32
 *
 * The frame length is exactly 16 + align4(header_len) + payload_len;
 * anything else (truncated or trailing bytes) is rejected.  The row area
 * sits at a multiple of 4 from the frame start, so rows are float-aligned
 * whenever the buffer is (malloc'd buffers and nng_msg bodies are).
 *
 * This module knows nothing of sockets (see wire_nng.h) and does not
 * decide what a message means: it packs, unpacks and checks shapes.
 * Rows are copied as host floats: hosts must be little-endian (checked at
 * compile time).
 */
#ifndef EPMOE_WIRE_H
#define EPMOE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "epmoe.pb-c.h"

/* Version of the frame layout and of proto/epmoe.proto together. */
#define EPMOE_PROTO_VERSION 2

#define WIRE_MAGIC "EPMW"
#define WIRE_FIXED_LEN 16
/* Bounds no sane message exceeds; a larger value is treated as garbage. */
#define WIRE_MAX_HEADER_LEN (64u << 20)
#define WIRE_MAX_DIM 65536u

/* What the protobuf header of a frame is. */
enum wire_kind {
	WIRE_CONTROL = 1,      /* Epmoe__ControlMsg */
	WIRE_BATCH = 2,        /* Epmoe__ExpertBatch, rows = input rows */
	WIRE_RESULT = 3,       /* Epmoe__ExpertResult, rows = output rows */
	WIRE_CLIENT = 4,       /* Epmoe__ClientMsg */
	WIRE_CLIENT_REPLY = 5, /* Epmoe__ClientReply */
	WIRE_KIND_MAX = 5
};

/* The fixed part of a frame, decoded. */
struct wire_frame {
	uint8_t version;
	uint8_t kind;
	uint32_t header_len;
	uint32_t payload_len;
};

/* Descriptor of the top-level message of kind, or NULL for an unknown kind. */
const ProtobufCMessageDescriptor *wire_kind_desc(int kind);

/* Short name of a kind ("batch"), for logs; "unknown" otherwise. */
const char *wire_kind_name(int kind);

/* Reason for the last failure of a wire_* call on this thread (a static
 * thread-local string, overwritten by the next failure; never NULL). */
const char *wire_errmsg(void);

/* Bytes of a frame with a header_len-byte protobuf and n_floats floats,
 * or 0 when it cannot be represented (header_len or payload over u32 or
 * the limits above). */
size_t wire_size(size_t header_len, size_t n_floats);

/* Bytes of the frame that would carry hdr and n_floats floats (packs
 * nothing; costs one protobuf size pass), or 0 as wire_size. */
size_t wire_msg_size(const ProtobufCMessage *hdr, size_t n_floats);

/* Writes the fixed header and hdr into buf[0..cap) and returns in *rows_out
 * the start of the row area (n_floats floats, uninitialised) for the caller
 * to fill in place.  hdr's descriptor must be the one of kind and its
 * `version` field should be EPMOE_PROTO_VERSION.  *out_len is the frame
 * length.  Borrows hdr and buf.  Returns 0, EPMOE_EINVAL (bad kind, hdr of
 * another type), EPMOE_ERANGE (does not fit in cap or in a frame). */
int wire_pack_begin(void *buf, size_t cap, int kind,
        const ProtobufCMessage *hdr, size_t n_floats, float **rows_out,
        size_t *out_len);

/* wire_pack_begin followed by copying n_floats floats from rows (which may
 * be NULL when n_floats is 0). */
int wire_pack(void *buf, size_t cap, int kind, const ProtobufCMessage *hdr,
        const float *rows, size_t n_floats, size_t *out_len);

/* Decodes the fixed header only (no protobuf decode).  Checks the length,
 * magic and that header_len/payload_len match len exactly; does not check
 * version or kind, so a caller can report what a peer speaks.  Returns 0
 * or EPMOE_EPROTO. */
int wire_peek(const void *buf, size_t len, struct wire_frame *out);

/* Validates and decodes a frame.  expected_kind must match the frame's
 * kind; desc is the type to decode (NULL: the kind's own).  Checks, in
 * order: length, magic, version (EPMOE_EPROTO "protocol version N, expected
 * 1"), kind, reserved bytes, header_len/payload_len against len (truncated
 * or trailing bytes), payload multiple of 4, zero padding, protobuf
 * decoding, and the message's `version` field.
 *
 * On success *hdr_out is a newly allocated message: free it with
 * protobuf_c_message_free_unpacked(*hdr_out, NULL).  *rows_out points
 * into buf (borrowed: valid while buf is; NULL when there are no rows) and
 * *n_floats_out counts its floats.  buf must be 4-byte aligned when the
 * frame has rows (EPMOE_EINVAL otherwise: a caller bug, not bad input).
 * Returns 0, EPMOE_EPROTO (bad frame), EPMOE_EINVAL, EPMOE_ENOMEM. */
int wire_unpack(const void *buf, size_t len, int expected_kind,
        const ProtobufCMessageDescriptor *desc, ProtobufCMessage **hdr_out,
        const float **rows_out, size_t *n_floats_out);

/* Bounds for wire_check_batch; a zero field is not checked. */
struct wire_limits {
	uint32_t n_layers;  /* layer < n_layers */
	uint32_t n_experts; /* group expert < n_experts */
	uint32_t n_slots;   /* group slot < n_slots */
	uint32_t max_dim;   /* dim <= max_dim (always <= WIRE_MAX_DIM) */
	uint32_t max_rows;  /* n_rows_in, n_rows_out <= max_rows */
};

/* Semantic check of a decoded batch against its n_floats rows: dim in
 * (0, max_dim], n_rows_in * dim == n_floats, n_entries = sum of groups'
 * n_tokens (no overflow) equals n_rows_in when gather is empty, else gather
 * has n_entries entries each < n_rows_in; weights and combine have
 * n_entries entries, weights finite, combine entries < n_rows_out;
 * layer/expert/slot within lim (NULL: only structure and WIRE_MAX_DIM).
 * Returns 0 or EPMOE_EPROTO with wire_errmsg() saying which check failed. */
int wire_check_batch(const Epmoe__ExpertBatch *b, size_t n_floats,
        const struct wire_limits *lim);

/* What the router expects back for a batch it sent. */
struct wire_expect {
	uint64_t batch_id;
	uint32_t attempt;
	uint32_t n_rows; /* the batch's n_rows_out */
	uint32_t dim;
};

/* Semantic check of a decoded result: with status OK, dim in
 * (0, WIRE_MAX_DIM] and n_rows * dim == n_floats; otherwise no rows.  With
 * exp (may be NULL): batch_id and attempt must match (else EPMOE_ESTATE:
 * a late reply to another attempt, to drop), and with status OK n_rows and
 * dim must match (else EPMOE_EPROTO). */
int wire_check_result(const Epmoe__ExpertResult *r, size_t n_floats,
        const struct wire_expect *exp);

/* Maps between Epmoe__Status and EPMOE_E* codes.  STALE_PLACEMENT maps to
 * EPMOE_ESTATE; an unknown status maps to EPMOE_EPROTO. */
int wire_status_to_err(int status);
int wire_err_to_status(int err);

#endif
