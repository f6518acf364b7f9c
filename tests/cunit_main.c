/* The main of every CUnit test program: runs the suites the program
 * registers, prints CUnit's report, exits non-zero on any failure.
 * TD_TEST_FILTER=text runs only the tests whose name contains text (while
 * working on one). */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test_util.h"

void td_add_suite(const char *name, const td_test *tests) { td_add_suite_with(name, NULL, NULL, tests); }

void td_add_suite_with(const char *name, CU_InitializeFunc init, CU_CleanupFunc cleanup, const td_test *tests) {
    CU_pSuite s = CU_add_suite(name, init, cleanup);
    if (!s) {
        fprintf(stderr, "cannot add suite %s: %s\n", name, CU_get_error_msg());
        exit(2);
    }
    const char *only = getenv("TD_TEST_FILTER");
    for (const td_test *t = tests; t->name; t++)
        if ((!only || strstr(t->name, only)) && !CU_add_test(s, t->name, t->fn)) {
            fprintf(stderr, "cannot add test %s: %s\n", t->name, CU_get_error_msg());
            exit(2);
        }
}

int main(void) {
    if (CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "cannot initialize CUnit: %s\n", CU_get_error_msg());
        return 2;
    }
    td_test_register();
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_tests_failed() + CU_get_number_of_suites_failed();
    unsigned ran = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    if (ran == 0) {
        fprintf(stderr, "no test ran\n");
        return 1;
    }
    return failed ? 1 : 0;
}
