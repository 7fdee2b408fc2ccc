/* epmoe chat: placeholder until its issue lands. */
#include <stdio.h>

#include "cmd.h"

int
cmd_chat(int argc, char **argv)
{
	fprintf(stderr, "epmoe chat: not implemented yet\n");
	return 2;
}
