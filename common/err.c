/* epmoe_strerror, errno conversion and the error-message out-parameter. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "err.h"

const char *
epmoe_strerror(int err)
{
	switch (err) {
	case EPMOE_OK: return "success";
	case EPMOE_EINVAL: return "invalid argument";
	case EPMOE_ENOMEM: return "out of memory";
	case EPMOE_EIO: return "input/output error";
	case EPMOE_EFORMAT: return "malformed data";
	case EPMOE_ENOTSUP: return "not supported";
	case EPMOE_ENOENT: return "not found";
	case EPMOE_ERANGE: return "value out of range";
	case EPMOE_ETIMEDOUT: return "timed out";
	case EPMOE_ECLOSED: return "connection closed";
	case EPMOE_EPROTO: return "protocol error";
	case EPMOE_EBUSY: return "busy, try again later";
	case EPMOE_ECANCELED: return "cancelled";
	case EPMOE_ESTATE: return "invalid state";
	case EPMOE_EUNAVAIL: return "service unavailable";
	case EPMOE_EINTERNAL: return "internal error";
	}
	return "unknown error";
}

int
epmoe_err_from_errno(int e)
{
	switch (e) {
	case 0: return EPMOE_OK;
	case ENOMEM: return EPMOE_ENOMEM;
	case ENOENT: return EPMOE_ENOENT;
	case EINVAL: return EPMOE_EINVAL;
	case ERANGE:
	case EOVERFLOW:
	case EFBIG: return EPMOE_ERANGE;
	case ETIMEDOUT: return EPMOE_ETIMEDOUT;
	case ECANCELED: return EPMOE_ECANCELED;
	case EAGAIN: return EPMOE_EBUSY;
	case EPIPE:
	case ECONNRESET: return EPMOE_ECLOSED;
	default: return EPMOE_EIO;
	}
}

void
epmoe_set_err(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || err_len == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
}
