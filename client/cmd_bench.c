/* epmoe bench: placeholder until its issue lands. */
#include <stdio.h>

#include "cmd.h"

int
cmd_bench(int argc, char **argv)
{
	fprintf(stderr, "epmoe bench: not implemented yet\n");
	return 2;
}
