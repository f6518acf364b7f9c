/* The step simulator (offload/simulator.h). */
#include "offload/simulator.h"

static double later(double a, double b) { return a > b ? a : b; }

td_sim_result td_sim_run(const td_sim_step *s) {
    td_sim_result r = {0};
    const double ho = s->handoff;
    double dev = s->before; /* when each stream is next free */
    r.device = s->before + s->after;
    if (s->n_sub == 0) {
        r.device += s->n_layers * s->dev_layer;
        r.step = dev + s->n_layers * s->dev_layer + s->after;
        return r;
    }
    double d2h = 0, h2d = 0, down_end[TD_SIM_MAX_SUB] = {0};
    /* the host waits for the step's first device work (the pipeline's
     * time base), then enqueues; a stream that is idle when something is
     * enqueued on it, or when what it waits for ends on another resource,
     * starts a hand-off later */
    double host = dev + ho;
    for (int32_t b = 0; b < s->n_sub; b++) { /* start_layer(b, 0) */
        dev = later(dev, host + ho) + s->pre[b];
        d2h = later(d2h, dev + ho) + s->down[b];
        dev += s->dattn[b];
        down_end[b] = d2h;
        r.device += s->pre[b] + s->dattn[b];
        r.d2h += s->down[b];
    }
    for (int32_t l = 0; l < s->n_layers; l++)
        for (int32_t b = 0; b < s->n_sub; b++) {
            host = later(host, down_end[b] + ho) + s->attend[b];
            h2d = later(h2d, host + ho) + s->up[b];
            dev = later(dev, h2d + ho) + s->post[b];
            r.cpu += s->attend[b];
            r.h2d += s->up[b];
            r.device += s->post[b];
            if (l + 1 < s->n_layers) {
                dev += s->pre[b]; /* enqueued as post's successor: the stream is busy */
                d2h = later(d2h, dev + ho) + s->down[b];
                dev += s->dattn[b];
                down_end[b] = d2h;
                r.device += s->pre[b] + s->dattn[b];
                r.d2h += s->down[b];
            }
        }
    r.step = dev + s->after;
    return r;
}
