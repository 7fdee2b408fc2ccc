/* epmoe-router: placeholder until the serving issue lands. */
#include <stdio.h>

int
main(int argc, char **argv)
{
	fprintf(stderr, "epmoe-router: not implemented yet\n");
	return 2;
}
