/* UTF-8 well-formedness checks and repair.  See utf8.h. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

/* The maximal prefix of a sequence at s[0..n) that is still well-formed
 * (0: s[0] cannot start one), and in *need the sequence's full length. */
static size_t
utf8_subpart(const unsigned char *s, size_t n, size_t *need)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xbf;
	size_t k;

	if (c < 0x80) {
		*need = 1;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf)
		*need = 2;
	else if (c >= 0xe0 && c <= 0xef)
		*need = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		*need = 4;
	else {
		*need = 0;
		return 0;
	}
	if (c == 0xe0)
		lo = 0xa0; /* overlong */
	else if (c == 0xed)
		hi = 0x9f; /* surrogates */
	else if (c == 0xf0)
		lo = 0x90; /* overlong */
	else if (c == 0xf4)
		hi = 0x8f; /* above U+10FFFF */
	for (k = 1; k < *need && k < n; k++) {
		unsigned char b = s[k];

		if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf))
			break;
	}
	return k;
}

size_t
utf8_seq(const unsigned char *s, size_t n)
{
	size_t need, k;

	if (n == 0)
		return 0;
	k = utf8_subpart(s, n, &need);
	return need > 0 && k == need ? k : 0;
}

size_t
utf8_valid_prefix(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, k;

	while (i < len) {
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		if ((k = utf8_seq(p + i, len - i)) == 0)
			break;
		i += k;
	}
	return i;
}

char *
utf8_clean(const char *s, size_t len, size_t *n_chars)
{
	const unsigned char *p = (const unsigned char *)s;
	char *out, *o;
	size_t i = 0, chars = 0;

	if (len > (SIZE_MAX - 1) / 3)
		return NULL;
	if ((out = malloc(len * 3 + 1)) == NULL)
		return NULL;
	o = out;
	while (i < len) {
		size_t need, k = p[i] == 0 ? 0 : utf8_subpart(p + i, len - i, &need);

		if (k > 0 && k == need) {
			memcpy(o, p + i, k);
			o += k;
			i += k;
		} else {
			memcpy(o, "\xef\xbf\xbd", 3);
			o += 3;
			i += k > 0 ? k : 1;
		}
		chars++;
	}
	*o = '\0';
	if (n_chars != NULL)
		*n_chars = chars;
	return out;
}
