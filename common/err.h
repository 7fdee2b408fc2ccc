/* Error codes shared by every epmoe module.
 *
 * A fallible function returns 0 or one of the negative codes below;
 * epmoe_strerror() names it.  Errors from libuv, nng, protobuf-c and errno
 * are converted once, where they are first seen (epmoe_err_from_errno).
 */
#ifndef EPMOE_ERR_H
#define EPMOE_ERR_H

#include <stddef.h>

enum {
	EPMOE_OK = 0,
	EPMOE_EINVAL = -1,    /* invalid argument or request */
	EPMOE_ENOMEM = -2,    /* out of memory */
	EPMOE_EIO = -3,       /* read/write/mmap failure */
	EPMOE_EFORMAT = -4,   /* malformed file or message */
	EPMOE_ENOTSUP = -5,   /* valid but unsupported (arch, tensor type...) */
	EPMOE_ENOENT = -6,    /* no such file, key, tensor, route */
	EPMOE_ERANGE = -7,    /* value out of range, size overflow */
	EPMOE_ETIMEDOUT = -8, /* deadline passed */
	EPMOE_ECLOSED = -9,   /* peer or object closed */
	EPMOE_EPROTO = -10,   /* wire protocol violation */
	EPMOE_EBUSY = -11,    /* queue full, try later */
	EPMOE_ECANCELED = -12,/* cancelled by the client or shutdown */
	EPMOE_ESTATE = -13,   /* operation not valid in this state */
	EPMOE_EUNAVAIL = -14, /* a needed worker/expert is not available */
	EPMOE_EINTERNAL = -15 /* a bug: an invariant did not hold */
};

/* Returns a static description of err (never NULL). */
const char *epmoe_strerror(int err);

/* Maps an errno value to an EPMOE_E* code. */
int epmoe_err_from_errno(int e);

/* Writes a one-line message into err[0..err_len) (nothing when err is NULL
 * or err_len 0): the "err, err_len" out-parameter of fallible functions. */
void epmoe_set_err(char *err, size_t err_len, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

#endif
