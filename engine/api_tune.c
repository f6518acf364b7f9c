/* tandem_tune: the public face of the hardware profiler (offload/tune.h).
 * Opens the device a tandem_tune_config names, reads a model's shapes when
 * given one, measures, and writes the profile (offload/profile.h). */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "engine/model.h"
#include "gpu/device.h"
#include "offload/profile.h"
#include "offload/tune.h"
#include "tandem.h"

void tandem_tune_config_init(tandem_tune_config *c) {
    if (!c)
        return;
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
    c->device = TANDEM_DEVICE_AUTO;
}

TD_PRINTF(4, 5)
static tandem_status fail(char *err, size_t cap, tandem_status st, const char *fmt, ...) {
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return st;
}

/* The device c names. AUTO: a CUDA device, else the emulated one; *why
 * says why not CUDA. */
static tandem_status open_device(const tandem_tune_config *c, td_device **out, char *why, size_t why_cap,
                                 td_error *err) {
    why[0] = '\0';
    td_device_config dc;
    td_device_config_default(&dc);
    if (c->device == TANDEM_DEVICE_CUDA || c->device == TANDEM_DEVICE_AUTO) {
        dc.kind = TD_DEVICE_KIND_CUDA;
        tandem_status st = td_device_open(&dc, out, err);
        if (st == TANDEM_OK || c->device == TANDEM_DEVICE_CUDA)
            return st;
        snprintf(why, why_cap, "%s", err->msg);
        td_device_config_default(&dc);
    }
    dc.kind = TD_DEVICE_KIND_EMU;
    dc.emu_mode = TD_EMU_TIMED; /* a GPU's times, not the host's: the host is the CPU being measured */
    dc.gpu = td_gpu_model_find(c->emu_gpu ? c->emu_gpu : "H100-PCIe");
    dc.link = td_link_model_find(c->emu_link ? c->emu_link : "pcie5-x16");
    return td_device_open(&dc, out, err);
}

tandem_status tandem_tune(const tandem_tune_config *c, const char *out_path, char *err, size_t err_cap) {
    if (err && err_cap)
        err[0] = '\0';
    if (!c)
        return fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT, "tune: no config");
    if (c->struct_size < sizeof(tandem_tune_config))
        return fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT,
                    "tune: struct_size %zu (call tandem_tune_config_init first)", c->struct_size);
    if (!out_path || !*out_path)
        return fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT, "tune: no output file named");
    if ((unsigned)c->device > TANDEM_DEVICE_EMU)
        return fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT, "tune: unknown device %d", (int)c->device);
    if (c->device == TANDEM_DEVICE_CPU)
        return fail(err, err_cap, TANDEM_ERR_UNSUPPORTED,
                    "tune: device cpu has no device to measure (the profile needs one): use auto, cuda or emu");
    if ((c->emu_gpu || c->emu_link) && c->device != TANDEM_DEVICE_EMU)
        return fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT, "tune: emu_gpu and emu_link apply to device emu only");
    if (c->emu_gpu && !td_gpu_model_find(c->emu_gpu))
        return fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT,
                    "tune: emu_gpu '%s' is no GPU preset (T4, A10G, A100-SXM, H100-PCIe, H100-SXM)", c->emu_gpu);
    if (c->emu_link && !td_link_model_find(c->emu_link))
        return fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT,
                    "tune: emu_link '%s' is no link preset (pcie3-x16, pcie4-x16, pcie5-x16)", c->emu_link);
    if (c->threads < 0 || c->threads > 65536)
        return fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT, "tune: threads %d is out of range [0, 65536]",
                    c->threads);

    td_error e = {0};
    td_model *model = NULL;
    td_tune_options o;
    td_tune_options_default(&o);
    o.threads = c->threads;
    o.progress = c->progress;
    o.user = c->user;
    td_tune_shape shapes[5];
    tandem_status st;
    if (c->model_path) {
        td_model_options mo;
        td_model_options_default(&mo);
        mo.skip_linears = true; /* only the shapes are wanted */
        mo.n_threads = c->threads;
        if ((st = td_model_load(c->model_path, &mo, &model, &e)))
            return fail(err, err_cap, st, "tune: %s", e.msg);
        static const td_matrix which[5] = {TD_MATRIX_QKV, TD_MATRIX_O, TD_MATRIX_GATE_UP, TD_MATRIX_DOWN,
                                           TD_MATRIX_HEAD};
        for (int i = 0; i < 5; i++)
            td_model_matrix_shape(model, which[i], &shapes[i].n, &shapes[i].k);
        o.model_shapes = shapes;
        o.n_model_shapes = 5;
        o.attn_q_heads = model->cfg.n_heads;
        o.attn_kv_heads = model->cfg.n_kv_heads;
        o.attn_head_dim = model->cfg.head_dim;
        td_model_free(model);
    }

    td_device *d = NULL;
    char why[TD_ERROR_MSG_MAX] = "";
    if ((st = open_device(c, &d, why, sizeof why, &e)))
        return fail(err, err_cap, st, "tune: device %s: %s", c->device == TANDEM_DEVICE_CUDA ? "cuda" : "emu", e.msg);
    char device_name[64], link_name[64], stage[TD_ERROR_MSG_MAX + 160];
    const bool emu = !strcmp(d->info.backend, "emu");
    if (emu) {
        const char *gpu = c->emu_gpu ? td_gpu_model_find(c->emu_gpu)->name : "H100-PCIe";
        const char *link = c->emu_link ? td_link_model_find(c->emu_link)->name : "pcie5-x16";
        snprintf(device_name, sizeof device_name, "%s (emulated)", gpu);
        snprintf(link_name, sizeof link_name, "%s (emulated)", link);
    } else {
        size_t n = strnlen(d->info.name, sizeof device_name - 1);
        memcpy(device_name, d->info.name, n);
        device_name[n] = '\0';
        snprintf(link_name, sizeof link_name, "PCIe");
    }
    o.device_name = device_name;
    o.link_name = link_name;
    /* which device, and on AUTO why not CUDA: a stage of its own */
    snprintf(stage, sizeof stage, "device %s%s%s%s", d->info.name, why[0] ? " (no CUDA device: " : "", why,
             why[0] ? ")" : "");
    if (c->progress)
        c->progress(c->user, stage, 0.0);

    td_profile *p = NULL;
    st = td_tune_run(d, &o, &p, &e);
    td_device_close(d);
    if (st)
        return fail(err, err_cap, st, "tune: %s", e.msg);
    st = td_profile_save(p, out_path, &e);
    td_profile_free(p);
    if (st)
        return fail(err, err_cap, st, "tune: %s", e.msg);
    return TANDEM_OK;
}
