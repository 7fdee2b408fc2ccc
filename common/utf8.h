/* UTF-8 checks for text that crosses a trust boundary: request bodies
 * before they are parsed, and text quoted back in JSON (error messages,
 * generated pieces), which must stay valid UTF-8 whatever bytes came in.
 * Well-formedness follows RFC 3629 (table 3-7 of the Unicode standard): no
 * overlong forms, no surrogates, nothing above U+10FFFF.  Pure functions;
 * no allocation except utf8_clean's result.
 */
#ifndef EPMOE_UTF8_H
#define EPMOE_UTF8_H

#include <stddef.h>

/* Bytes of the well-formed sequence that starts s[0..n) (1 to 4), or 0
 * when s does not start one (a bad lead byte, a bad continuation, or a
 * sequence cut by the end of s). */
size_t utf8_seq(const unsigned char *s, size_t n);

/* Length of the longest well-formed prefix of s[0..len): len when all of
 * it is valid UTF-8, else the offset of the first bad byte. */
size_t utf8_valid_prefix(const char *s, size_t len);

/* Copies s[0..len) with every ill-formed subsequence (and every NUL)
 * replaced by U+FFFD (one per maximal subpart, as Unicode recommends);
 * *n_chars (may be NULL) gets the number of code points.  Returns a new
 * NUL-terminated string (free with free()) or NULL when out of memory. */
char *utf8_clean(const char *s, size_t len, size_t *n_chars);

#endif
