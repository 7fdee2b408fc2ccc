/* Scoring a token window on a running epmoe server (epmoe perplexity
 * --url): see ppl_remote.c. */
#ifndef EPMOE_PPL_REMOTE_H
#define EPMOE_PPL_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Scores ids[0..n) (ids[0] is BOS, given no score) on the server at url
 * (http://host:port): adds the negative log-likelihood of ids[1..n) to
 * *nll and n - 1 to *scored.  api_key may be NULL.  0, or -1 with a
 * one-line reason in err. */
int ppl_remote_window(const char *url, const char *api_key, const int32_t *ids,
        size_t n, double *nll, size_t *scored, char *err, size_t err_len);

#endif
