/* epmoe bench: benchmark modes.  `machine`, `engine` and `route` run in
 * process; `server` is the load generator against a running router
 * (bench_server.c). */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "cmd.h"

static void
usage(FILE *f)
{
	fprintf(f, "usage: epmoe bench MODE [options]   (epmoe bench MODE --help)\n"
	           "modes:\n"
	           "  machine   OpenBLAS sgemm FLOP rate and memory read bandwidth\n"
	           "  engine    prefill and decode speed of a model, in process\n"
	           "  route     routing policy cost against one MoE layer\n"
	           "  server    load generator against a running router: TTFT, "
	           "TPOT, ITL,\n"
	           "            E2E latency and throughput\n"
	           "  balance   replay a routing trace through the balancer's placement\n"
	           "            code for W simulated workers\n");
}

int
cmd_bench(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "machine") == 0)
		return bench_machine(argc - 1, argv + 1);
	if (strcmp(argv[1], "engine") == 0)
		return bench_engine(argc - 1, argv + 1);
	if (strcmp(argv[1], "route") == 0)
		return bench_route(argc - 1, argv + 1);
	if (strcmp(argv[1], "server") == 0)
		return bench_server(argc - 1, argv + 1);
	if (strcmp(argv[1], "balance") == 0)
		return bal_sim_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "epmoe bench: unknown mode '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
