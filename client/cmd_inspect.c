/* epmoe inspect: prints a GGUF file's header, every metadata key with its
 * type and value (arrays: element type, count and the first elements), and
 * a table of tensors with a total.  Read-only; it never touches tensor data
 * beyond what the reader validates. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "err.h"
#include "gguf.h"

#define ARR_SHOW 8    /* array elements printed */
#define STR_SHOW 120  /* bytes of a string printed */

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe inspect FILE\n"
	        "\n"
	        "Prints a GGUF file's version, alignment, metadata (every key with\n"
	        "its type and value; arrays show element type, count and the first\n"
	        "%d elements) and its tensors (name, type, shape, offset in the\n"
	        "data section, bytes), then totals.  Exit status 1 if the file is\n"
	        "malformed or unsupported.\n"
	        "\n"
	        "options:\n"
	        "  -h, --help   show this help\n",
	        ARR_SHOW);
}

/* Prints s quoted, with C escapes for control bytes, '"' and '\\'. */
static void
print_str(struct gguf_str s)
{
	size_t n = s.len > STR_SHOW ? STR_SHOW : (size_t)s.len;

	putchar('"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s.ptr[i];

		switch (c) {
		case '"': fputs("\\\"", stdout); break;
		case '\\': fputs("\\\\", stdout); break;
		case '\n': fputs("\\n", stdout); break;
		case '\t': fputs("\\t", stdout); break;
		case '\r': fputs("\\r", stdout); break;
		default:
			if (c < 0x20 || c == 0x7f)
				printf("\\x%02x", c);
			else
				putchar(c);
		}
	}
	putchar('"');
	if (s.len > n)
		printf("... (%" PRIu64 " bytes)", s.len);
}

static void
print_scalar(const struct gguf_kv *kv)
{
	switch (kv->type) {
	case GGUF_TYPE_UINT8:
	case GGUF_TYPE_UINT16:
	case GGUF_TYPE_UINT32:
	case GGUF_TYPE_UINT64:
		printf("%" PRIu64, kv->v.u64);
		break;
	case GGUF_TYPE_INT8:
	case GGUF_TYPE_INT16:
	case GGUF_TYPE_INT32:
	case GGUF_TYPE_INT64:
		printf("%" PRId64, kv->v.i64);
		break;
	case GGUF_TYPE_FLOAT32:
		printf("%.9g", kv->v.f64);
		break;
	case GGUF_TYPE_FLOAT64:
		printf("%.17g", kv->v.f64);
		break;
	case GGUF_TYPE_BOOL:
		fputs(kv->v.u64 ? "true" : "false", stdout);
		break;
	case GGUF_TYPE_STRING:
		print_str(kv->v.str);
		break;
	default:
		fputs("?", stdout);
	}
}

static void
print_array(const struct gguf_kv *kv)
{
	enum gguf_type et = kv->v.arr.type;
	uint64_t n = kv->v.arr.n, show = n < ARR_SHOW ? n : ARR_SHOW;

	printf("[");
	for (uint64_t i = 0; i < show; i++) {
		if (i > 0)
			fputs(", ", stdout);
		if (et == GGUF_TYPE_STRING)
			print_str(kv->v.arr.strs[i]);
		else if (et == GGUF_TYPE_FLOAT32 || et == GGUF_TYPE_FLOAT64)
			printf("%.9g", (double)gguf_arr_f32(kv, i));
		else if (et == GGUF_TYPE_BOOL)
			fputs(gguf_arr_i64(kv, i) ? "true" : "false", stdout);
		else if (et == GGUF_TYPE_UINT64)
			printf("%" PRIu64, (uint64_t)gguf_arr_i64(kv, i));
		else
			printf("%" PRId64, gguf_arr_i64(kv, i));
	}
	if (n > show)
		printf(", ... (%" PRIu64 " more)", n - show);
	printf("]");
}

static void
print_kvs(const struct gguf_file *g)
{
	int w = 10;

	for (uint64_t i = 0; i < g->n_kv; i++) {
		if (g->kv[i].key.len > (uint64_t)w)
			w = g->kv[i].key.len > 48 ? 48 : (int)g->kv[i].key.len;
	}
	printf("metadata (%" PRIu64 " keys):\n", g->n_kv);
	for (uint64_t i = 0; i < g->n_kv; i++) {
		const struct gguf_kv *kv = &g->kv[i];
		char type[40];

		if (kv->type == GGUF_TYPE_ARRAY)
			snprintf(type, sizeof(type), "%s[%" PRIu64 "]",
			        gguf_type_name(kv->v.arr.type), kv->v.arr.n);
		else
			snprintf(type, sizeof(type), "%s",
			        gguf_type_name(kv->type));
		printf("  %-*.*s  %-12s ", w, (int)kv->key.len, kv->key.ptr,
		        type);
		if (kv->type == GGUF_TYPE_ARRAY)
			print_array(kv);
		else
			print_scalar(kv);
		putchar('\n');
	}
}

static void
print_tensors(const struct gguf_file *g)
{
	uint64_t total_bytes = 0, total_elems = 0;
	int w = 4;

	for (uint64_t i = 0; i < g->n_tensors; i++) {
		if (g->tensors[i].name.len > (uint64_t)w)
			w = g->tensors[i].name.len > 64 ? 64 :
			                                  (int)g->tensors[i].name.len;
	}
	printf("\ntensors (%" PRIu64 "):\n", g->n_tensors);
	printf("  %5s  %-*s  %-5s  %-22s  %12s  %12s\n", "#", w, "name",
	        "type", "shape", "offset", "bytes");
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct gguf_tensor *t = &g->tensors[i];
		char shape[96];
		int n = 0;

		for (uint32_t d = 0; d < t->n_dims; d++)
			n += snprintf(shape + n, sizeof(shape) - (size_t)n,
			        d ? " x %" PRIu64 : "%" PRIu64, t->ne[d]);
		printf("  %5" PRIu64 "  %-*.*s  %-5s  %-22s  %12" PRIu64
		       "  %12zu\n",
		        i, w, (int)t->name.len, t->name.ptr,
		        dtype_name(t->type), shape, t->offset, t->size);
		total_bytes += t->size;
		total_elems += t->n_elements;
	}
	printf("total: %" PRIu64 " tensors, %" PRIu64 " elements, %" PRIu64
	       " bytes (%.2f MiB)\n",
	        g->n_tensors, total_elems, total_bytes,
	        (double)total_bytes / (1024.0 * 1024.0));
}

int
cmd_inspect(int argc, char **argv)
{
	const char *path = NULL;
	struct gguf_file *g;
	char err[512];
	int rc;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		}
		if (argv[i][0] == '-' && argv[i][1] != '\0') {
			fprintf(stderr, "epmoe inspect: unknown option '%s'\n",
			        argv[i]);
			usage(stderr);
			return 2;
		}
		if (path != NULL) {
			fprintf(stderr, "epmoe inspect: one FILE only\n");
			return 2;
		}
		path = argv[i];
	}
	if (path == NULL) {
		usage(stderr);
		return 2;
	}
	if ((rc = gguf_open(&g, path, err, sizeof(err))) != 0) {
		fprintf(stderr, "epmoe inspect: %s\n",
		        err[0] ? err : epmoe_strerror(rc));
		return 1;
	}
	printf("%s: GGUF version %u, alignment %u, %" PRIu64
	       " metadata keys, %" PRIu64 " tensors\n"
	       "file size %zu bytes, data section at offset %" PRIu64 "\n\n",
	        path, g->version, g->alignment, g->n_kv, g->n_tensors,
	        g->file_size, g->data_offset);
	print_kvs(g);
	print_tensors(g);
	gguf_close(g);
	return 0;
}
