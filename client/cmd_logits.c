/* epmoe logits: placeholder until its issue lands. */
#include <stdio.h>

#include "cmd.h"

int
cmd_logits(int argc, char **argv)
{
	fprintf(stderr, "epmoe logits: not implemented yet\n");
	return 2;
}
