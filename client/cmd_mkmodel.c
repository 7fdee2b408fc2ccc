/* epmoe mkmodel: writes a random-weight MoE model (GGUF) for llama
 * (Mixtral), qwen2moe or olmoe from a preset plus per-field overrides.
 * The work is done by mkmodel_write() (common/mkmodel.c); this file only
 * parses and checks flags. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd.h"
#include "err.h"
#include "gguf.h"
#include "mkmodel.h"

enum {
	OPT_LAYERS = 256, OPT_DIM, OPT_FF, OPT_SHARED_FF, OPT_EXPERTS,
	OPT_TOPK, OPT_VOCAB, OPT_HEADS, OPT_KV_HEADS, OPT_THREADS,
	OPT_CTX, OPT_NAME, OPT_SKEW,
};

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe mkmodel --arch ARCH --out FILE [options]\n"
	        "\n"
	        "Writes a random-weight Mixture-of-Experts model in GGUF with the\n"
	        "tensor names, shapes and metadata llama.cpp uses for ARCH.  The\n"
	        "output is a pure function of the options: the same seed gives\n"
	        "identical bytes.  Flags override the preset's values.\n"
	        "\n"
	        "options (defaults are the tiny preset's):\n"
	        "  --arch ARCH       llama (Mixtral layout), qwen2moe or olmoe (required)\n"
	        "  --out FILE        output path; written as FILE.tmp then renamed (required)\n"
	        "  --preset P        tiny or small (default tiny)\n"
	        "                      tiny:  vocab 512, dim 64, 2 layers, 4 heads,\n"
	        "                             2 kv heads (olmoe 4), 8 experts top-2,\n"
	        "                             expert ff 128, shared ff 192\n"
	        "                      small: vocab 32000, dim 1024, 8 layers, 16 heads,\n"
	        "                             4 kv heads (olmoe 16), 8 experts top-2,\n"
	        "                             expert ff 2816, shared ff 2816 (~2.5 GB f32)\n"
	        "  --layers N        transformer blocks (default 2)\n"
	        "  --dim D           embedding width (default 64)\n"
	        "  --ff F            width of each routed expert (default 128)\n"
	        "  --shared-ff F     qwen2moe shared expert width (default 192)\n"
	        "  --experts E       routed experts per layer (default 8)\n"
	        "  --top-k K         experts used per token, <= E (default 2)\n"
	        "  --vocab V         vocabulary size, %d..%d (default 512)\n"
	        "  --heads H         attention heads; must divide D (default 4)\n"
	        "  --kv-heads H      key/value heads; must divide --heads; olmoe\n"
	        "                    needs it equal to --heads (default 2, olmoe 4)\n"
	        "  --ctx N           context_length metadata (default 4096)\n"
	        "  --dtype T         f32, f16, bf16 or q8_0 for the matrices; norms,\n"
	        "                    biases and the router stay f32 (default f32)\n"
	        "  --seed S          random seed, 64-bit (default 1)\n"
	        "  --threads N       generator threads; does not change the output\n"
	        "                    (default: all online CPUs)\n"
	        "  --name NAME       general.name (default derived from the shape)\n"
	        "  --gate-skew zipf:A  router biased so expert popularity follows a\n"
	        "                    Zipf law of exponent A (0 < A <= 8), other hot\n"
	        "                    experts in every layer (default: none)\n"
	        "  -q, --quiet       print nothing on success\n"
	        "  -h, --help        show this help\n",
	        MKMODEL_MIN_VOCAB, MKMODEL_MAX_VOCAB);
}

/* Parses a whole decimal number in [0, max]. */
static int
parse_u64(const char *flag, const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (s[0] == '-' || s[0] == '\0')
		goto bad;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max)
		goto bad;
	*out = v;
	return 0;
bad:
	fprintf(stderr, "epmoe mkmodel: %s: '%s' is not a number in 0..%" PRIu64
	                "\n", flag, s, max);
	return EPMOE_EINVAL;
}

struct flags {
	const char *arch, *out, *preset, *dtype, *name, *skew;
	/* overrides; set[] marks the ones given */
	uint64_t val[OPT_NAME - OPT_LAYERS + 1];
	int set[OPT_NAME - OPT_LAYERS + 1];
	uint64_t seed;
	int seed_set, quiet;
};

static const char *const opt_names[] = {
	"--layers", "--dim", "--ff", "--shared-ff", "--experts", "--top-k",
	"--vocab", "--heads", "--kv-heads", "--threads", "--ctx",
};

static int
parse_flags(int argc, char **argv, struct flags *fl)
{
	static const struct option opts[] = {
		{ "arch", required_argument, NULL, 'a' },
		{ "out", required_argument, NULL, 'o' },
		{ "preset", required_argument, NULL, 'p' },
		{ "dtype", required_argument, NULL, 't' },
		{ "seed", required_argument, NULL, 's' },
		{ "name", required_argument, NULL, OPT_NAME },
		{ "gate-skew", required_argument, NULL, OPT_SKEW },
		{ "layers", required_argument, NULL, OPT_LAYERS },
		{ "dim", required_argument, NULL, OPT_DIM },
		{ "ff", required_argument, NULL, OPT_FF },
		{ "shared-ff", required_argument, NULL, OPT_SHARED_FF },
		{ "experts", required_argument, NULL, OPT_EXPERTS },
		{ "top-k", required_argument, NULL, OPT_TOPK },
		{ "vocab", required_argument, NULL, OPT_VOCAB },
		{ "heads", required_argument, NULL, OPT_HEADS },
		{ "kv-heads", required_argument, NULL, OPT_KV_HEADS },
		{ "threads", required_argument, NULL, OPT_THREADS },
		{ "ctx", required_argument, NULL, OPT_CTX },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 0; /* glibc: full reset, callers may parse several times */
	opterr = 1;
	while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
		switch (c) {
		case 'a': fl->arch = optarg; break;
		case 'o': fl->out = optarg; break;
		case 'p': fl->preset = optarg; break;
		case 't': fl->dtype = optarg; break;
		case OPT_NAME: fl->name = optarg; break;
		case OPT_SKEW: fl->skew = optarg; break;
		case 'q': fl->quiet = 1; break;
		case 'h': return 1;
		case 's':
			if (parse_u64("--seed", optarg, UINT64_MAX, &fl->seed))
				return EPMOE_EINVAL;
			fl->seed_set = 1;
			break;
		case '?':
			return EPMOE_EINVAL;
		default:
			if (c < OPT_LAYERS || c >= OPT_NAME)
				return EPMOE_EINVAL;
			if (parse_u64(opt_names[c - OPT_LAYERS], optarg,
			            UINT32_MAX, &fl->val[c - OPT_LAYERS]))
				return EPMOE_EINVAL;
			fl->set[c - OPT_LAYERS] = 1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "epmoe mkmodel: unexpected argument '%s'\n",
		        argv[optind]);
		return EPMOE_EINVAL;
	}
	return 0;
}

/* Applies the preset and then the overrides to *cfg. */
static int
build_cfg(const struct flags *fl, struct mkmodel_cfg *cfg)
{
	enum mkmodel_arch arch;
	const char *preset = fl->preset ? fl->preset : "tiny";
	uint32_t *field[] = {
		&cfg->n_layer, &cfg->n_embd, &cfg->n_ff, &cfg->n_ff_shexp,
		&cfg->n_expert, &cfg->n_expert_used, &cfg->n_vocab,
		&cfg->n_head, &cfg->n_head_kv, &cfg->n_threads, &cfg->n_ctx,
	};

	if (fl->arch == NULL || fl->out == NULL) {
		fprintf(stderr, "epmoe mkmodel: --arch and --out are required "
		                "(see --help)\n");
		return EPMOE_EINVAL;
	}
	if (mkmodel_arch_parse(fl->arch, &arch) != 0) {
		fprintf(stderr, "epmoe mkmodel: unknown --arch '%s' (llama, "
		                "qwen2moe, olmoe)\n", fl->arch);
		return EPMOE_EINVAL;
	}
	if (mkmodel_preset(cfg, arch, preset) != 0) {
		fprintf(stderr, "epmoe mkmodel: unknown --preset '%s' (tiny, "
		                "small)\n", preset);
		return EPMOE_EINVAL;
	}
	for (size_t i = 0; i < sizeof(field) / sizeof(field[0]); i++) {
		if (fl->set[i])
			*field[i] = (uint32_t)fl->val[i];
	}
	/* olmoe: kv heads follow heads unless given */
	if (arch == MKMODEL_OLMOE && fl->set[OPT_HEADS - OPT_LAYERS] &&
	        !fl->set[OPT_KV_HEADS - OPT_LAYERS])
		cfg->n_head_kv = cfg->n_head;
	if (fl->dtype != NULL &&
	        (dtype_parse(fl->dtype, &cfg->dtype) != 0)) {
		fprintf(stderr, "epmoe mkmodel: unknown --dtype '%s' (f32, f16, "
		                "bf16, q8_0)\n", fl->dtype);
		return EPMOE_EINVAL;
	}
	if (fl->seed_set)
		cfg->seed = fl->seed;
	if (fl->skew != NULL) {
		char *end;
		double a = strncmp(fl->skew, "zipf:", 5) == 0 ? strtod(fl->skew + 5, &end) : 0;
		if (strncmp(fl->skew, "zipf:", 5) != 0 || end == fl->skew + 5 || *end != '\0' ||
		        !(a > 0 && a <= 8)) {
			fprintf(stderr, "epmoe mkmodel: --gate-skew expects zipf:A with 0 < A <= 8, "
			                "got '%s'\n", fl->skew);
			return EPMOE_EINVAL;
		}
		cfg->gate_skew = (float)a;
	}
	if (fl->name != NULL) {
		if (strlen(fl->name) >= sizeof(cfg->name)) {
			fprintf(stderr, "epmoe mkmodel: --name longer than %zu "
			                "bytes\n", sizeof(cfg->name) - 1);
			return EPMOE_EINVAL;
		}
		strcpy(cfg->name, fl->name);
	}
	return 0;
}

int
cmd_mkmodel(int argc, char **argv)
{
	struct flags fl = { 0 };
	struct mkmodel_cfg cfg;
	struct timespec t0, t1;
	char err[512];
	int rc;

	if ((rc = parse_flags(argc, argv, &fl)) == 1) {
		usage(stdout);
		return 0;
	}
	if (rc != 0 || (rc = build_cfg(&fl, &cfg)) != 0)
		return 2;
	if (mkmodel_validate(&cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "epmoe mkmodel: %s\n", err);
		return 2;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if ((rc = mkmodel_write(&cfg, fl.out, err, sizeof(err))) != 0) {
		fprintf(stderr, "epmoe mkmodel: %s\n",
		        err[0] ? err : epmoe_strerror(rc));
		return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (!fl.quiet)
		printf("wrote %s: %s, %u layers, dim %u, %u experts (top-%u) of "
		       "ff %u, vocab %u, %s, %.1f MiB of tensors in %.2f s\n",
		        fl.out, mkmodel_arch_name(cfg.arch), cfg.n_layer,
		        cfg.n_embd, cfg.n_expert, cfg.n_expert_used, cfg.n_ff,
		        cfg.n_vocab, dtype_name(cfg.dtype),
		        (double)mkmodel_data_size(&cfg) / (1024.0 * 1024.0),
		        (double)(t1.tv_sec - t0.tv_sec) +
		                (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
	return 0;
}
