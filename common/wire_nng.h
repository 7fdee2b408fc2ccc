/* Frames (wire.h) straight into and out of nng_msg bodies, and nng error
 * codes converted to EPMOE_E* once, here at the boundary.
 *
 * Alignment: nng 1.5.2 allocates message bodies with malloc, and the
 * protocols strip whole 4-byte words (request ids, survey ids, hop
 * counts) from the front of a received body, so bodies are 4-byte
 * aligned (a received REP body is typically 4 but not 8 mod 8) and the
 * rows of a frame in them are float-aligned.  wire_nng_new and
 * wire_nng_unpack check it and fail with EPMOE_EINVAL rather than hand
 * out a misaligned float pointer; test_wire checks it over ipc.
 */
#ifndef EPMOE_WIRE_NNG_H
#define EPMOE_WIRE_NNG_H

#include <nng/nng.h>

#include "wire.h"

/* Allocates a message of exactly the frame's size, packs the fixed header
 * and hdr into it and returns in *rows_out where the n_floats floats go
 * (uninitialised: the caller writes them in place, no extra copy).  On
 * success *out is the caller's: it passes to NNG on a successful send,
 * else free it with nng_msg_free.  Borrows hdr.  Returns 0 or the
 * wire_pack_begin errors, EPMOE_ENOMEM. */
int wire_nng_new(nng_msg **out, int kind, const ProtobufCMessage *hdr,
        size_t n_floats, float **rows_out);

/* wire_nng_new and a copy of n_floats floats from rows. */
int wire_nng_pack(nng_msg **out, int kind, const ProtobufCMessage *hdr,
        const float *rows, size_t n_floats);

/* wire_unpack of m's body.  Borrows m: *rows_out points into it and is
 * valid until m is freed or changed.  Free *hdr_out with
 * protobuf_c_message_free_unpacked(*hdr_out, NULL). */
int wire_nng_unpack(nng_msg *m, int expected_kind,
        const ProtobufCMessageDescriptor *desc, ProtobufCMessage **hdr_out,
        const float **rows_out, size_t *n_floats_out);

/* Maps an nng error (NNG_E*) to an EPMOE_E* code. */
int wire_nng_err(int nng_rv);

#endif
