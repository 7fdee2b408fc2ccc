/* wire.h frames in nng_msg bodies; nng error conversion.  Nothing here
 * sends or receives: sockets belong to the router and worker. */
#include <string.h>

#include "err.h"
#include "wire_nng.h"

int
wire_nng_new(nng_msg **out, int kind, const ProtobufCMessage *hdr,
        size_t n_floats, float **rows_out)
{
	nng_msg *m;
	float *rows;
	size_t size, len;
	int rv;

	if ((size = wire_msg_size(hdr, n_floats)) == 0)
		return hdr == NULL ? EPMOE_EINVAL : EPMOE_ERANGE;
	if (nng_msg_alloc(&m, size) != 0)
		return EPMOE_ENOMEM;
	rv = wire_pack_begin(nng_msg_body(m), nng_msg_len(m), kind, hdr,
	        n_floats, &rows, &len);
	if (rv != 0) {
		nng_msg_free(m);
		return rv;
	}
	*out = m;
	if (rows_out)
		*rows_out = rows;
	return 0;
}

int
wire_nng_pack(nng_msg **out, int kind, const ProtobufCMessage *hdr,
        const float *rows, size_t n_floats)
{
	nng_msg *m;
	float *dst;
	int rv;

	if (n_floats > 0 && rows == NULL)
		return EPMOE_EINVAL;
	if ((rv = wire_nng_new(&m, kind, hdr, n_floats, &dst)) != 0)
		return rv;
	if (n_floats > 0)
		memcpy(dst, rows, n_floats * sizeof(float));
	*out = m;
	return 0;
}

int
wire_nng_unpack(nng_msg *m, int expected_kind,
        const ProtobufCMessageDescriptor *desc, ProtobufCMessage **hdr_out,
        const float **rows_out, size_t *n_floats_out)
{
	if (m == NULL)
		return EPMOE_EINVAL;
	return wire_unpack(nng_msg_body(m), nng_msg_len(m), expected_kind,
	        desc, hdr_out, rows_out, n_floats_out);
}

int
wire_nng_err(int nng_rv)
{
	switch (nng_rv) {
	case 0: return 0;
	case NNG_ENOMEM: return EPMOE_ENOMEM;
	case NNG_EINVAL:
	case NNG_EADDRINVAL: return EPMOE_EINVAL;
	case NNG_ETIMEDOUT: return EPMOE_ETIMEDOUT;
	case NNG_ECLOSED:
	case NNG_ECONNRESET:
	case NNG_ECONNABORTED:
	case NNG_ECONNREFUSED:
	case NNG_ECONNSHUT:
	case NNG_EUNREACHABLE: return EPMOE_ECLOSED;
	case NNG_ECANCELED: return EPMOE_ECANCELED;
	case NNG_EAGAIN:
	case NNG_EBUSY: return EPMOE_EBUSY;
	case NNG_EMSGSIZE: return EPMOE_ERANGE;
	case NNG_EPROTO: return EPMOE_EPROTO;
	case NNG_ENOTSUP: return EPMOE_ENOTSUP;
	case NNG_ENOENT: return EPMOE_ENOENT;
	case NNG_ESTATE: return EPMOE_ESTATE;
	case NNG_EADDRINUSE:
	case NNG_EPERM:
	case NNG_ENOFILES:
	case NNG_ENOSPC:
	case NNG_EREADONLY:
	case NNG_EWRITEONLY: return EPMOE_EIO;
	case NNG_EINTERNAL: return EPMOE_EINTERNAL;
	}
	if ((nng_rv & NNG_ESYSERR) != 0)
		return epmoe_err_from_errno(nng_rv & ~NNG_ESYSERR);
	return EPMOE_EIO;
}
