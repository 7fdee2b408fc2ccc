/* API keys of the client APIs (HTTP and NNG): the set the router accepts,
 * read from --api-key and --api-key-file, and the check of a presented
 * key.  The check takes the same time whatever the presented key and
 * whichever key it matches or fails to match (every byte of every key is
 * compared; only the keys' lengths shape the timing), so a client cannot
 * learn a key byte by byte from response times.  Keys are wiped from
 * memory when the set is freed.  No I/O but reading the key file.
 */
#ifndef EPMOE_APIKEY_H
#define EPMOE_APIKEY_H

#include <stdbool.h>
#include <stddef.h>

#define APIKEY_MAX_LEN 256
#define APIKEY_MAX_KEYS 1024

struct apikeys;

/* An empty set (no key: nothing is checked).  0 or EPMOE_ENOMEM. */
int apikeys_new(struct apikeys **out);
/* Wipes and frees; NULL is fine. */
void apikeys_free(struct apikeys *k);

/* Adds key (copied).  A key is 1..APIKEY_MAX_LEN printable ASCII bytes
 * without spaces.  Returns 0, EPMOE_EINVAL (err says why, without the
 * key), EPMOE_ERANGE (too many keys) or EPMOE_ENOMEM. */
int apikeys_add(struct apikeys *k, const char *key, char *err, size_t err_len);

/* Adds every key of the file at path: one per line, blank lines and lines
 * starting with '#' skipped, spaces and CR around a key trimmed.  A file
 * without any key is an error (a typo must not open the server).  Warns
 * when others may read the file.  Returns 0 or an EPMOE_E* code with err
 * naming the file and line. */
int apikeys_load_file(struct apikeys *k, const char *path, char *err,
        size_t err_len);

/* Number of keys; 0 means the APIs are open. */
size_t apikeys_count(const struct apikeys *k);

/* Whether key[0..len) is one of the keys (constant time, see above).
 * False for an empty set too. */
bool apikeys_match(const struct apikeys *k, const char *key, size_t len);

/* Checks an HTTP Authorization header value ("Bearer KEY", the scheme
 * case-insensitive): 0 when it carries a key of the set, EPMOE_EAUTH when
 * it is absent (NULL), not Bearer or a wrong key. */
int apikeys_check_bearer(const struct apikeys *k, const char *authorization);

#endif
