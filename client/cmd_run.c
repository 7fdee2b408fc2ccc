/* epmoe run: placeholder until its issue lands. */
#include <stdio.h>

#include "cmd.h"

int
cmd_run(int argc, char **argv)
{
	fprintf(stderr, "epmoe run: not implemented yet\n");
	return 2;
}
