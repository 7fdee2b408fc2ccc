/* epmoe mkmodel: placeholder until its issue lands. */
#include <stdio.h>

#include "cmd.h"

int
cmd_mkmodel(int argc, char **argv)
{
	fprintf(stderr, "epmoe mkmodel: not implemented yet\n");
	return 2;
}
