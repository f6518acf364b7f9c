/* The `tandem` command line's commands (one file each) and what they share. */
#ifndef TD_TOOLS_CLI_H
#define TD_TOOLS_CLI_H

#include <stdbool.h>
#include <stddef.h>

/* Exit codes of every command (0: done). */
#define EXIT_USAGE 1  /* a bad option or argument */
#define EXIT_FAILED 2 /* the work failed */

/* "4G", "512M", "1048576" -> bytes (K, M, G, T: powers of 1024). */
bool tandem_parse_size(const char *s, size_t *out);

/* tandem plan (tools/cmd_plan.c): argv[0] is "plan". */
int tandem_cmd_plan(int argc, char **argv);
/* tandem tune (tools/cmd_tune.c): argv[0] is "tune". */
int tandem_cmd_tune(int argc, char **argv);

#endif /* TD_TOOLS_CLI_H */
