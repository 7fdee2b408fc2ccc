/* epmoe generate: placeholder until its issue lands. */
#include <stdio.h>

#include "cmd.h"

int
cmd_generate(int argc, char **argv)
{
	fprintf(stderr, "epmoe generate: not implemented yet\n");
	return 2;
}
