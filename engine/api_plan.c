/* tandem_plan: the cost model behind the public API (include/tandem.h). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "base/clock.h"
#include "engine/api_util.h"
#include "engine/forward.h"
#include "engine/gguf.h"
#include "engine/llama_config.h"
#include "offload/costmodel.h"
#include "tandem.h"

/* The shapes the cost model needs, from the GGUF's metadata alone. */
static tandem_status read_shape(const char *path, td_cost_shape *m, td_error *err) {
    td_gguf *g = NULL;
    tandem_status st = td_gguf_open(path, &g, err);
    if (st)
        return st;
    td_llama_config c;
    st = td_llama_config_read(g, &c, err);
    td_gguf_close(g);
    if (st == TANDEM_OK)
        *m = td_cost_shape_of(&c);
    return st;
}

tandem_status tandem_plan(const tandem_plan_query *qin, tandem_plan_result *out, char *err, size_t cap) {
    tandem_plan_query q;
    tandem_plan_query_init(&q);
    if (!qin || !out || qin->struct_size < offsetof(tandem_plan_query, host_seqs) ||
        out->struct_size < offsetof(tandem_plan_result, search_seconds))
        return td_api_fail(err, cap, TANDEM_ERR_INVALID_ARGUMENT, "plan: set struct_size in the query and the result");
    memcpy(&q, qin, qin->struct_size < sizeof q ? qin->struct_size : sizeof q);
    if (!q.profile)
        return td_api_fail(err, cap, TANDEM_ERR_INVALID_ARGUMENT,
                           "plan: no profile (a file from `tandem tune`, or a preset)");
    if (q.batch < 1 || q.ctx < 1 || q.host_seqs < -1 || q.host_seqs > q.batch)
        return td_api_fail(err, cap, TANDEM_ERR_INVALID_ARGUMENT,
                           "plan: batch %d and ctx %d must be >= 1, host_seqs %d in [-1, %d]", q.batch, q.ctx,
                           q.host_seqs, q.batch);
    td_error e;
    td_profile *p = NULL;
    td_cost_shape m;
    tandem_status st = td_profile_open(q.profile, &p, &e);
    if (st == TANDEM_OK)
        st = read_shape(td_api_model_path(q.model_path), &m, &e);
    if (st) {
        td_profile_free(p);
        return td_api_fail(err, cap, st, "plan: %s", e.msg);
    }
    if (q.ctx >= 1 << 24) {
        td_profile_free(p);
        return td_api_fail(err, cap, TANDEM_ERR_INVALID_ARGUMENT, "plan: ctx %d is too long", q.ctx);
    }
    const double t0 = td_seconds();
    td_cost_limits lim = {.gpu_mem = q.gpu_mem_bytes ? (double)q.gpu_mem_bytes : p->dev_mem_bytes,
                          .host_kv = q.host_kv_bytes ? (double)q.host_kv_bytes : 0.9 * p->host_mem_bytes,
                          .threads = p->cpu_threads,
                          .host_seqs = q.host_seqs};
    td_cost_plan plan;
    td_cost_plan_search(p, &m, q.batch, q.ctx, &lim, &plan);
    const double searched = td_seconds() - t0;
    const double fixed = td_cost_device_fixed_bytes(&m, q.batch);
    td_profile_free(p);
    if (plan.chosen < 0)
        return td_api_fail(err, cap, TANDEM_ERR_OUT_OF_MEMORY,
                           "plan: the weights and workspace take %.2f GB; the device has %.2f GB", fixed / 1e9,
                           lim.gpu_mem / 1e9);
    tandem_plan_result r = {.struct_size = out->struct_size < sizeof r ? out->struct_size : sizeof r,
                            .device_tok_s = plan.device_tok_s,
                            .device_batch = plan.device_batch,
                            .cpu_attn_tok_s = plan.cpu_attn_tok_s,
                            .hybrid_tok_s = plan.hybrid_tok_s,
                            .hybrid_host_seqs = plan.hybrid_host,
                            .hybrid_sub_batches = plan.hybrid_sub,
                            .chosen = plan.chosen == 0   ? TANDEM_MODE_DEVICE
                                      : plan.chosen == 1 ? TANDEM_MODE_CPU_ATTN
                                                         : TANDEM_MODE_HYBRID,
                            .chosen_tok_s = plan.chosen_tok_s,
                            .step_seconds = plan.chosen_sim.step,
                            .device_busy_seconds = plan.chosen_sim.device,
                            .link_busy_seconds = plan.chosen_sim.d2h + plan.chosen_sim.h2d,
                            .cpu_busy_seconds = plan.chosen_sim.cpu,
                            .search_seconds = searched};
    memcpy(out, &r, r.struct_size);
    return TANDEM_OK;
}
