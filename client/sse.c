/* Server-Sent Events stream parser.  See sse.h. */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "sse.h"

void
sse_parser_init(struct sse_parser *p, sse_event_fn cb, void *ud)
{
	memset(p, 0, sizeof(*p));
	p->cb = cb;
	p->ud = ud;
	strcpy(p->type, "message");
}

void
sse_parser_fini(struct sse_parser *p)
{
	if (p == NULL)
		return;
	free(p->line);
	free(p->data);
	memset(p, 0, sizeof(*p));
}

/* Grows *buf to hold need bytes plus a NUL. */
static int
grow(char **buf, size_t *cap, size_t need)
{
	size_t ncap;
	char *nb;

	if (need + 1 <= *cap)
		return 0;
	if (need > SSE_MAX_EVENT)
		return EPMOE_ERANGE;
	ncap = *cap ? *cap : 256;
	while (ncap < need + 1)
		ncap *= 2;
	if ((nb = realloc(*buf, ncap)) == NULL)
		return EPMOE_ENOMEM;
	*buf = nb;
	*cap = ncap;
	return 0;
}

static int
dispatch(struct sse_parser *p)
{
	int rc = 0;

	if (p->has_data) {
		/* drop the "\n" that follows the last data line */
		if (p->data_len > 0)
			p->data_len--;
		if (p->data == NULL && (rc = grow(&p->data, &p->data_cap, 0)) != 0)
			return rc;
		p->data[p->data_len] = '\0';
		rc = p->cb(p->ud, p->type, p->data, p->data_len);
	}
	p->data_len = 0;
	p->has_data = 0;
	strcpy(p->type, "message");
	return rc;
}

/* Interprets the finished line p->line[0..line_len). */
static int
process_line(struct sse_parser *p)
{
	const char *l = p->line, *colon, *val;
	size_t n = p->line_len, name_len, val_len;
	int rc;

	if (n == 0)
		return dispatch(p);
	if (l[0] == ':')
		return 0;
	colon = memchr(l, ':', n);
	if (colon == NULL) {
		name_len = n;
		val = l + n;
		val_len = 0;
	} else {
		name_len = (size_t)(colon - l);
		val = colon + 1;
		val_len = n - name_len - 1;
		if (val_len > 0 && val[0] == ' ') {
			val++;
			val_len--;
		}
	}
	if (name_len == 4 && memcmp(l, "data", 4) == 0) {
		if ((rc = grow(&p->data, &p->data_cap, p->data_len + val_len + 1)) != 0)
			return rc;
		memcpy(p->data + p->data_len, val, val_len);
		p->data_len += val_len;
		p->data[p->data_len++] = '\n';
		p->has_data = 1;
	} else if (name_len == 5 && memcmp(l, "event", 5) == 0) {
		if (val_len == 0 || val_len >= sizeof(p->type))
			val_len = 0; /* empty or absurd: the default type */
		if (val_len == 0)
			strcpy(p->type, "message");
		else {
			memcpy(p->type, val, val_len);
			p->type[val_len] = '\0';
		}
	}
	/* id, retry and unknown fields: nothing to do for this client */
	return 0;
}

int
sse_feed(struct sse_parser *p, const char *buf, size_t len)
{
	size_t i = 0;
	int rc;

	if (p->failed)
		return EPMOE_ESTATE;
	while (i < len) {
		char c = buf[i];

		if (c == '\n' && p->after_cr) {
			/* second half of a CRLF already ended the line */
			p->after_cr = 0;
			i++;
			continue;
		}
		p->after_cr = 0;
		if (c == '\n' || c == '\r') {
			p->after_cr = (c == '\r');
			rc = process_line(p);
			p->line_len = 0;
			i++;
			if (rc != 0) {
				p->failed = 1;
				return rc;
			}
			continue;
		}
		/* copy the run of ordinary bytes up to the next line end at once */
		size_t j = i;
		while (j < len && buf[j] != '\n' && buf[j] != '\r')
			j++;
		if ((rc = grow(&p->line, &p->line_cap, p->line_len + (j - i))) != 0) {
			p->failed = 1;
			return rc;
		}
		memcpy(p->line + p->line_len, buf + i, j - i);
		p->line_len += j - i;
		i = j;
	}
	return 0;
}
