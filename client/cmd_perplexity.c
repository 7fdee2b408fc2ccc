/* epmoe perplexity: placeholder until its issue lands. */
#include <stdio.h>

#include "cmd.h"

int
cmd_perplexity(int argc, char **argv)
{
	fprintf(stderr, "epmoe perplexity: not implemented yet\n");
	return 2;
}
