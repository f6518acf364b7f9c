/* tandem_tune: the public face of the hardware profiler (offload/tune.h).
 * Opens the device a tandem_tune_config names, reads a model's shapes when
 * given one, measures, and writes the profile (offload/profile.h). */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "engine/api_util.h"
#include "engine/model.h"
#include "gpu/device.h"
#include "offload/profile.h"
#include "offload/tune.h"
#include "tandem.h"

/* The emulated device's models when the config names none: it is timed
 * (a GPU's times, not the host's: the host is the CPU being measured). */
static const char EMU_GPU[] = "H100-PCIe", EMU_LINK[] = "pcie5-x16";

/* The device c names. AUTO: a CUDA device, else the emulated one; *why
 * says why not CUDA. */
static tandem_status open_device(const tandem_tune_config *c, td_device **out, char *why, size_t why_cap,
                                 td_error *err) {
    why[0] = '\0';
    td_device_config dc;
    tandem_status st;
    if (c->device == TANDEM_DEVICE_CUDA || c->device == TANDEM_DEVICE_AUTO) {
        (void)td_api_device_config(TANDEM_DEVICE_CUDA, NULL, NULL, 0, &dc, err); /* nothing to refuse */
        st = td_device_open(&dc, out, err);
        if (st == TANDEM_OK || c->device == TANDEM_DEVICE_CUDA)
            return st;
        snprintf(why, why_cap, "%s", err->msg);
    }
    if ((st = td_api_device_config(TANDEM_DEVICE_EMU, c->emu_gpu ? c->emu_gpu : EMU_GPU,
                                   c->emu_link ? c->emu_link : EMU_LINK, 0, &dc, err)))
        return st;
    return td_device_open(&dc, out, err);
}

tandem_status tandem_tune(const tandem_tune_config *cin, const char *out_path, char *err, size_t err_cap) {
    if (err && err_cap)
        err[0] = '\0';
    if (!cin)
        return td_api_fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT, "tune: no config");
    if (cin->struct_size < TD_API_TUNE_MIN_SIZE)
        return td_api_fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT,
                           "tune: struct_size %zu (call tandem_tune_config_init first)", cin->struct_size);
    /* an older caller's struct is shorter: the fields past it keep their defaults */
    tandem_tune_config cfg;
    tandem_tune_config_init(&cfg);
    memcpy(&cfg, cin, cin->struct_size < sizeof cfg ? cin->struct_size : sizeof cfg);
    const tandem_tune_config *c = &cfg;
    td_error e = {0};
    if (!out_path || !*out_path)
        return td_api_fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT, "tune: no output file named");
    if ((unsigned)c->device > TANDEM_DEVICE_EMU)
        return td_api_fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT, "tune: unknown device %d", (int)c->device);
    if (c->device == TANDEM_DEVICE_CPU)
        return td_api_fail(err, err_cap, TANDEM_ERR_UNSUPPORTED,
                           "tune: device cpu has no device to measure (the profile needs one): use auto, cuda or emu");
    td_device_config dc; /* only checked here: the names of emu_gpu and emu_link */
    tandem_status st = td_api_device_config(c->device, c->emu_gpu, c->emu_link, 0, &dc, &e);
    if (st)
        return td_api_fail(err, err_cap, st, "tune: %s", e.msg);
    if (c->threads < 0 || c->threads > 65536)
        return td_api_fail(err, err_cap, TANDEM_ERR_INVALID_ARGUMENT, "tune: threads %d is out of range [0, 65536]",
                           c->threads);

    td_model *model = NULL;
    td_tune_options o;
    td_tune_options_default(&o);
    o.threads = c->threads;
    o.progress = c->progress;
    o.user = c->user;
    td_tune_shape shapes[5];
    if (c->model_path) {
        td_model_options mo;
        td_model_options_default(&mo);
        mo.skip_linears = true; /* only the shapes are wanted */
        mo.n_threads = c->threads;
        if ((st = td_model_load(c->model_path, &mo, &model, &e)))
            return td_api_fail(err, err_cap, st, "tune: %s", e.msg);
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
        return td_api_fail(err, err_cap, st, "tune: device %s: %s", c->device == TANDEM_DEVICE_CUDA ? "cuda" : "emu",
                           e.msg);
    char device_name[64], link_name[64], stage[TD_ERROR_MSG_MAX + 160];
    const bool emu = !strcmp(d->info.backend, "emu");
    if (emu) {
        const char *gpu = td_gpu_model_find(c->emu_gpu ? c->emu_gpu : EMU_GPU)->name;
        const char *link = td_link_model_find(c->emu_link ? c->emu_link : EMU_LINK)->name;
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
        return td_api_fail(err, err_cap, st, "tune: %s", e.msg);
    st = td_profile_save(p, out_path, &e);
    td_profile_free(p);
    if (st)
        return td_api_fail(err, err_cap, st, "tune: %s", e.msg);
    return TANDEM_OK;
}
