/* The step simulator and the cost model (offload/simulator.h,
 * offload/costmodel.h): timelines worked out by hand, stage costs against
 * their formulas on a hand-made profile, and the plan search's choices in
 * the cases whose answer is known (NEO's and FastDecode's regimes). */
#include <string.h>

#include "offload/costmodel.h"
#include "offload/simulator.h"
#include "tests/test_util.h"

#define NEAR(a, b) (fabs((double)(a) - (double)(b)) <= 1e-9 * (1 + fabs((double)(b))))

/* ---- simulator ------------------------------------------------------------ */

static void test_sim_device_mode(void) {
    td_sim_step s = {.n_layers = 3, .n_sub = 0, .dev_layer = 2, .before = 1, .after = 0.5, .handoff = 9};
    td_sim_result r = td_sim_run(&s);
    CU_ASSERT(NEAR(r.step, 1 + 3 * 2 + 0.5)); /* no hand-off: nothing crosses resources */
    CU_ASSERT(NEAR(r.device, r.step));
    CU_ASSERT(r.cpu == 0 && r.d2h == 0 && r.h2d == 0);
}

/* One sub-batch, 2 layers: every stage waits for the one before it.
 *   pre [0,1] down [1,2] attend [2,4] up [4,5] post [5,6], then layer 1 the same from 6: 12 */
static void test_sim_one_sub(void) {
    td_sim_step s = {.n_layers = 2, .n_sub = 1};
    s.pre[0] = 1, s.down[0] = 1, s.attend[0] = 2, s.up[0] = 1, s.post[0] = 1;
    td_sim_result r = td_sim_run(&s);
    CU_ASSERT(NEAR(r.step, 12));
    CU_ASSERT(NEAR(r.device, 4) && NEAR(r.d2h, 2) && NEAR(r.cpu, 4) && NEAR(r.h2d, 2));
    /* hand-offs of 0.5 on every edge between resources (worked out by hand):
     * host .5; pre [1,2]; down [2.5,3.5]; attend [4,6]; up [6.5,7.5]; post [8,9];
     * pre [9,10]; down [10.5,11.5]; attend [12,14]; up [14.5,15.5]; post [16,17] */
    s.handoff = 0.5;
    r = td_sim_run(&s);
    CU_ASSERT(NEAR(r.step, 17));
    /* device attention of 1.5 after each pre, overlapping down-attend-up
     * (no hand-offs): pre [0,1] dattn [1,2.5]; down [1,2] attend [2,4]
     * up [4,5]; post [5,6]; pre [6,7] dattn [7,8.5]; down [7,8] attend
     * [8,10] up [10,11]; post [11,12]: hidden */
    s.handoff = 0;
    s.dattn[0] = 1.5;
    r = td_sim_run(&s);
    CU_ASSERT(NEAR(r.step, 12));
    CU_ASSERT(NEAR(r.device, 7));
    s.dattn[0] =
        5; /* dattn [1,6]: post [6,7]; pre [7,8] dattn [8,13]; down [8,9] attend [9,11] up [11,12]; post [13,14] */
    r = td_sim_run(&s);
    CU_ASSERT(NEAR(r.step, 14));
}

/* Two sub-batches, CPU-bound (attention 3, device stages 1, copies free):
 *   pre(0,0) [0,1] pre(1,0) [1,2]; attend(0,0) [1,4]; post(0,0) [4,5] pre(0,1) [5,6];
 *   attend(1,0) [4,7]; post(1,0) [7,8] pre(1,1) [8,9]; attend(0,1) [7,10]; post(0,1) [10,11];
 *   attend(1,1) [10,13]; post(1,1) [13,14] */
static void test_sim_two_sub(void) {
    td_sim_step s = {.n_layers = 2, .n_sub = 2};
    for (int b = 0; b < 2; b++)
        s.pre[b] = 1, s.attend[b] = 3, s.post[b] = 1;
    td_sim_result r = td_sim_run(&s);
    CU_ASSERT(NEAR(r.step, 14));
    CU_ASSERT(NEAR(r.cpu, 12) && NEAR(r.device, 8));
    /* device-bound (attention 0.5): the device never waits after the start,
     * the step is its busy time plus the first sub-batch's attention gap:
     * pre [0,1] [1,2]; attend(0,0) [1,1.5]; post(0,0) [2,3] pre(0,1) [3,4];
     * attend(1,0) [2,2.5]; post(1,0) [4,5] pre(1,1) [5,6]; attend(0,1) [4,4.5];
     * post(0,1) [6,7]; attend(1,1) [6,6.5]; post(1,1) [7,8] */
    for (int b = 0; b < 2; b++)
        s.attend[b] = 0.5;
    r = td_sim_run(&s);
    CU_ASSERT(NEAR(r.step, 8));
    CU_ASSERT(NEAR(r.device, 8));
}

/* ---- cost model ------------------------------------------------------------- */

/* A profile whose figures make the formulas easy to follow: a GEMM takes
 * the longer of its FLOPs at 100 TFLOP/s and one read of its bf16 weights
 * at 1 TB/s (tabled at M = 1, 64, 4096), 1 µs launches, device memory
 * and attention at 1 TB/s, a 25 GB/s link. */
static td_profile *toy_profile(double cpu_gbps, double dev_mem) {
    static td_gemm_point pts[64];
    static const int64_t shapes[][2] = {{8, 8}, {64, 64}, {4096, 4096}};
    int n = 0;
    for (int s = 0; s < 3; s++)
        for (int64_t m = 1; m <= 4096; m *= 64) {
            const double nk = (double)shapes[s][0] * shapes[s][1];
            pts[n++] = (td_gemm_point){m, shapes[s][0], shapes[s][1], fmax(2.0 * m * nk / 100e12, 2 * nk / 1e12)};
        }
    static td_cpu_attn_point cpu[2];
    cpu[0] = (td_cpu_attn_point){1, 256, cpu_gbps / 2};
    cpu[1] = (td_cpu_attn_point){2, 256, cpu_gbps};
    td_profile p = {.dev_mem_bytes = dev_mem,
                    .dev_launch_s = 1e-6,
                    .dev_attn_gbps = 1000,
                    .dev_row_gbps = 1000,
                    .gemm = pts,
                    .n_gemm = n,
                    .h2d_gbps = 25,
                    .d2h_gbps = 25,
                    .link_latency_s = 5e-6,
                    .cpu_threads = 2,
                    .host_mem_bytes = 1e12,
                    .cpu_attn = cpu,
                    .n_cpu_attn = 2,
                    .cpu_attn_call_s = 10e-6,
                    .handoff_s = 5e-6};
    snprintf(p.source, sizeof p.source, "test");
    return td_profile_dup(&p);
}

static const td_cost_shape big = {
    .n_layers = 32, .n_embd = 4096, .n_heads = 32, .n_kv_heads = 8, .head_dim = 128, .n_ff = 14336, .n_vocab = 128256};

static void test_cost_stages(void) {
    td_profile *p = toy_profile(50, 80e9);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    /* a hybrid step of 8 device + 4 host sequences of 1000 tokens */
    td_cost_batch b = {.batch = 12, .ctx = 1000, .n_host = 4, .threads = 2, .host_in_first = -1};
    td_sim_step s;
    td_cost_step(p, &big, &b, &s);
    CU_ASSERT_EQUAL(s.n_sub, 2);
    /* the engine's balance: ceil((4 - 1) / 2) = 2 host sequences in sub-batch 0 */
    const double kv_layer = 1000.0 * 2 * 8 * 128 * 2; /* one sequence's K and V of a layer */
    CU_ASSERT(NEAR(s.attend[0], 10e-6 + 2 * kv_layer / 50e9));
    CU_ASSERT(NEAR(s.attend[1], 10e-6 + 2 * kv_layer / 50e9));
    /* copies: q, k, v rows (f32) down, attention output (bf16) up, each with the latency */
    const double W = 4096 + 2 * 1024;
    CU_ASSERT(NEAR(s.down[1], 5e-6 + 2 * W * 4 / 25e9));
    CU_ASSERT(NEAR(s.up[1], 5e-6 + 2 * 4096 * 2 / 25e9));
    /* sub-batch 0 also appends and attends the 8 device sequences, after its pre */
    CU_ASSERT(s.dattn[0] > 8 * kv_layer / 1000e9);
    CU_ASSERT_EQUAL(s.dattn[1], 0);
    /* cpu-attn of one sequence: one sub-batch, no device attention */
    td_cost_batch one = {.batch = 1, .ctx = 1000, .n_host = 1, .threads = 2, .host_in_first = -1};
    td_cost_step(p, &big, &one, &s);
    CU_ASSERT_EQUAL(s.n_sub, 1);
    CU_ASSERT(NEAR(s.attend[0], 10e-6 + kv_layer / 50e9));
    td_profile_free(p);
}

static void test_plan_regimes(void) {
    td_cost_limits lim = {.threads = 2, .host_seqs = -1, .host_kv = 1e12};
    td_cost_plan plan;
    /* everything fits a big device and the CPU is weak: mode device */
    td_profile *p = toy_profile(20, 80e9);
    lim.gpu_mem = 80e9;
    td_cost_plan_search(p, &big, 16, 2048, &lim, &plan);
    CU_ASSERT_EQUAL(plan.device_batch, 16);
    CU_ASSERT_EQUAL(plan.chosen, 0);
    CU_ASSERT(plan.device_tok_s > plan.cpu_attn_tok_s);
    td_profile_free(p);
    /* device memory scarce (room for a few sequences), a strong CPU: the
     * device batch is capped and hybrid adds the host's sequences */
    p = toy_profile(400, 24e9);
    lim.gpu_mem = 24e9;
    td_cost_plan_search(p, &big, 256, 4096, &lim, &plan);
    CU_ASSERT(plan.device_batch > 0 && plan.device_batch < 256);
    CU_ASSERT_EQUAL(plan.chosen, 2);
    CU_ASSERT(plan.hybrid_tok_s > plan.device_tok_s);
    CU_ASSERT(plan.hybrid_host > 0);
    td_profile_free(p);
    /* the weights fit, no room for a sequence's KV: only cpu-attn runs */
    p = toy_profile(100, 40e9);
    lim.gpu_mem = td_cost_device_fixed_bytes(&big, 64) + 100e6;
    td_cost_plan_search(p, &big, 64, 1024, &lim, &plan);
    CU_ASSERT_EQUAL(plan.device_batch, 0);
    CU_ASSERT_EQUAL(plan.chosen, 1);
    CU_ASSERT(plan.cpu_attn_tok_s > 0);
    /* the weights do not fit: nothing runs */
    lim.gpu_mem = 8e9;
    td_cost_plan_search(p, &big, 64, 1024, &lim, &plan);
    CU_ASSERT_EQUAL(plan.chosen, -1);
    CU_ASSERT(plan.device_tok_s == 0 && plan.cpu_attn_tok_s == 0 && plan.hybrid_tok_s == 0);
    /* a fixed split is evaluated as asked */
    lim.gpu_mem = 40e9;
    lim.host_seqs = 10;
    td_cost_plan_search(p, &big, 64, 1024, &lim, &plan);
    CU_ASSERT_EQUAL(plan.hybrid_host, 10);
    td_profile_free(p);
}

static void test_calibration(void) {
    td_cost_calib c = TD_COST_CALIB_NONE;
    const td_sim_result pred = {.device = 10e-3, .d2h = 1e-3, .h2d = 1e-3, .cpu = 20e-3};
    td_sim_result meas = {.device = 11e-3, .d2h = 1e-3, .h2d = 3e-3, .cpu = 30e-3};
    CU_ASSERT_EQUAL(c.handoff, 1);
    td_cost_calib_update(&c, &pred, &meas, 0.5, 1e-4); /* the first step sets the factors */
    CU_ASSERT(NEAR(c.device, 1.1) && NEAR(c.link, 2.0) && NEAR(c.cpu, 1.5));
    meas.cpu = 20e-3;
    meas.d2h = meas.h2d = 10e-6; /* under min_s: the link's factor stays */
    td_cost_calib_update(&c, &pred, &meas, 0.5, 1e-4);
    CU_ASSERT(NEAR(c.cpu, 1.25) && NEAR(c.link, 2.0) && NEAR(c.device, 1.1));
    CU_ASSERT_EQUAL(c.steps, 2);
    /* a calibrated prediction scales each resource's stages */
    td_profile *p = toy_profile(50, 80e9);
    td_cost_batch b = {.batch = 12, .ctx = 1000, .n_host = 4, .threads = 2, .host_in_first = -1};
    td_sim_step raw, cal;
    td_cost_step(p, &big, &b, &raw);
    b.calib = &c;
    td_cost_step(p, &big, &b, &cal);
    CU_ASSERT(NEAR(cal.attend[0], 1.25 * raw.attend[0]) && NEAR(cal.pre[1], 1.1 * raw.pre[1]) &&
              NEAR(cal.down[0], 2.0 * raw.down[0]) && NEAR(cal.after, 1.1 * raw.after));
    /* the engine's form: a measured step 30% longer than the calibrated
     * busy times explain is put on the hand-offs */
    td_cost_calib e = TD_COST_CALIB_NONE;
    b.calib = NULL;
    td_cost_step(p, &big, &b, &raw);
    td_sim_result pr = td_sim_run(&raw);
    pr.device -= raw.before + raw.after;
    td_sim_step nho = raw;
    nho.handoff = 0;
    const double without = td_sim_run(&nho).step, with = td_sim_run(&raw).step;
    td_sim_result m = pr;
    m.step = without + 1.3 * (with - without);
    td_cost_calibrate(&e, p, &big, &b, &m, 0.5, 1e-9);
    CU_ASSERT(NEAR(e.device, 1) && NEAR(e.cpu, 1));
    CU_ASSERT(fabs(e.handoff - 1.3) < 1e-6);
    td_profile_free(p);
}

void td_test_register(void) {
    static const td_test tests[] = {
        {"simulator: mode device", test_sim_device_mode},
        {"simulator: one sub-batch, with and without hand-offs", test_sim_one_sub},
        {"simulator: two sub-batches, CPU-bound and device-bound", test_sim_two_sub},
        {"cost model: stage costs", test_cost_stages},
        {"plan search: device, hybrid and cpu-attn regimes", test_plan_regimes},
        {"online calibration", test_calibration},
        {NULL, NULL},
    };
    td_add_suite("costmodel", tests);
}
