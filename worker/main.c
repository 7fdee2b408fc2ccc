/* epmoe-worker: placeholder until the serving issue lands. */
#include <stdio.h>

int
main(int argc, char **argv)
{
	fprintf(stderr, "epmoe-worker: not implemented yet\n");
	return 2;
}
