/* Benchmark modes of `epmoe bench` (one file each). */
#ifndef EPMOE_BENCH_H
#define EPMOE_BENCH_H

int bench_machine(int argc, char **argv);
int bench_engine(int argc, char **argv);
int bench_route(int argc, char **argv);
int bench_server(int argc, char **argv);
/* Defined with the router's placement code it replays (server/bal_sim.c). */
int bal_sim_main(int argc, char **argv);

#endif
