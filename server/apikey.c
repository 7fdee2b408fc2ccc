/* API key set and constant-time checks.  See apikey.h. */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "apikey.h"
#include "err.h"
#include "log.h"

struct apikeys {
	char **keys;
	size_t *lens;
	size_t n, cap;
};

int
apikeys_new(struct apikeys **out)
{
	struct apikeys *k = calloc(1, sizeof(*k));

	if (k == NULL)
		return EPMOE_ENOMEM;
	*out = k;
	return 0;
}

void
apikeys_free(struct apikeys *k)
{
	if (k == NULL)
		return;
	for (size_t i = 0; i < k->n; i++) {
		explicit_bzero(k->keys[i], k->lens[i]);
		free(k->keys[i]);
	}
	free(k->keys);
	free(k->lens);
	free(k);
}

static int
key_valid(const char *key, size_t len, char *err, size_t err_len)
{
	if (len == 0) {
		epmoe_set_err(err, err_len, "an API key must not be empty");
		return EPMOE_EINVAL;
	}
	if (len > APIKEY_MAX_LEN) {
		epmoe_set_err(err, err_len, "an API key is longer than %d bytes",
		        APIKEY_MAX_LEN);
		return EPMOE_EINVAL;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)key[i];

		if (c <= 0x20 || c >= 0x7f) {
			epmoe_set_err(err, err_len,
			        "an API key may hold only printable ASCII without spaces (byte %zu is not)",
			        i + 1);
			return EPMOE_EINVAL;
		}
	}
	return 0;
}

static int
add_n(struct apikeys *k, const char *key, size_t len, char *err,
        size_t err_len)
{
	char *copy;
	int rc;

	if ((rc = key_valid(key, len, err, err_len)) != 0)
		return rc;
	if (k->n == APIKEY_MAX_KEYS) {
		epmoe_set_err(err, err_len, "more than %d API keys", APIKEY_MAX_KEYS);
		return EPMOE_ERANGE;
	}
	if (k->n == k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 4;
		char **keys = realloc(k->keys, cap * sizeof(*keys));
		size_t *lens;

		if (keys == NULL)
			goto nomem;
		k->keys = keys;
		if ((lens = realloc(k->lens, cap * sizeof(*lens))) == NULL)
			goto nomem;
		k->lens = lens;
		k->cap = cap;
	}
	if ((copy = malloc(len)) == NULL)
		goto nomem;
	memcpy(copy, key, len);
	k->keys[k->n] = copy;
	k->lens[k->n] = len;
	k->n++;
	return 0;
nomem:
	epmoe_set_err(err, err_len, "out of memory");
	return EPMOE_ENOMEM;
}

int
apikeys_add(struct apikeys *k, const char *key, char *err, size_t err_len)
{
	if (k == NULL || key == NULL)
		return EPMOE_EINVAL;
	return add_n(k, key, strlen(key), err, err_len);
}

int
apikeys_load_file(struct apikeys *k, const char *path, char *err,
        size_t err_len)
{
	char line[APIKEY_MAX_LEN + 64], msg[160];
	struct stat st;
	size_t before = k->n;
	int lineno = 0, rc = 0;
	FILE *f;

	if ((f = fopen(path, "re")) == NULL) {
		epmoe_set_err(err, err_len, "%s: %s", path, strerror(errno));
		return epmoe_err_from_errno(errno);
	}
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077) != 0)
		log_warn("API key file %s can be read by other users (mode %03o): chmod 600 it",
		        path, (unsigned)(st.st_mode & 0777));
	while (fgets(line, sizeof(line), f) != NULL) {
		size_t len = strlen(line);
		char *s = line;

		lineno++;
		if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
			epmoe_set_err(err, err_len, "%s:%d: line too long for an API key",
			        path, lineno);
			rc = EPMOE_EINVAL;
			break;
		}
		while (len > 0 && isspace((unsigned char)line[len - 1]))
			line[--len] = '\0';
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s == '\0' || *s == '#')
			continue;
		if ((rc = add_n(k, s, strlen(s), msg, sizeof(msg))) != 0) {
			epmoe_set_err(err, err_len, "%s:%d: %s", path, lineno, msg);
			break;
		}
	}
	explicit_bzero(line, sizeof(line));
	if (rc == 0 && ferror(f)) {
		epmoe_set_err(err, err_len, "%s: read error", path);
		rc = EPMOE_EIO;
	}
	fclose(f);
	if (rc == 0 && k->n == before) {
		epmoe_set_err(err, err_len, "%s: no API key in the file", path);
		rc = EPMOE_EINVAL;
	}
	return rc;
}

size_t
apikeys_count(const struct apikeys *k)
{
	return k ? k->n : 0;
}

/* 0 when a[0..alen) == b[0..blen), in time depending on blen only. */
static unsigned
ct_diff(const char *a, size_t alen, const char *b, size_t blen)
{
	volatile unsigned diff = alen != blen;

	for (size_t i = 0; i < blen; i++)
		diff |= (unsigned char)b[i] ^ (unsigned char)(i < alen ? a[i] : 0);
	return diff;
}

bool
apikeys_match(const struct apikeys *k, const char *key, size_t len)
{
	unsigned ok = 0;

	if (k == NULL || key == NULL)
		return false;
	/* no early exit: every key is compared whatever matched before */
	for (size_t i = 0; i < k->n; i++)
		ok |= ct_diff(key, len, k->keys[i], k->lens[i]) == 0;
	return ok != 0;
}

int
apikeys_check_bearer(const struct apikeys *k, const char *authorization)
{
	const char *p = authorization;
	size_t len;

	if (p == NULL)
		return EPMOE_EAUTH;
	while (*p == ' ' || *p == '\t')
		p++;
	if (strncasecmp(p, "Bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
		return EPMOE_EAUTH;
	p += 6;
	while (*p == ' ' || *p == '\t')
		p++;
	len = strlen(p);
	while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
		len--;
	return apikeys_match(k, p, len) ? 0 : EPMOE_EAUTH;
}
