/* epmoe route: placeholder until its issue lands. */
#include <stdio.h>

#include "cmd.h"

int
cmd_route(int argc, char **argv)
{
	fprintf(stderr, "epmoe route: not implemented yet\n");
	return 2;
}
