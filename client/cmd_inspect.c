/* epmoe inspect: placeholder until its issue lands. */
#include <stdio.h>

#include "cmd.h"

int
cmd_inspect(int argc, char **argv)
{
	fprintf(stderr, "epmoe inspect: not implemented yet\n");
	return 2;
}
