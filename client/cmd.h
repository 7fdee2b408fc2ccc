/* Subcommands of the epmoe CLI.  Each takes the arguments after its name
 * (argv[0] is the subcommand name) and returns the process exit status. */
#ifndef EPMOE_CMD_H
#define EPMOE_CMD_H

int cmd_inspect(int argc, char **argv);
int cmd_mkmodel(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);
int cmd_route(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_health(int argc, char **argv);

#endif
