/* epmoe tokenize: placeholder until its issue lands. */
#include <stdio.h>

#include "cmd.h"

int
cmd_tokenize(int argc, char **argv)
{
	fprintf(stderr, "epmoe tokenize: not implemented yet\n");
	return 2;
}
