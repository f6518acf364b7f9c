/* What the public API's files share (engine/api_util.h). */
#include "engine/api_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef TANDEM_DEFAULT_MODEL
#define TANDEM_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#endif

tandem_status td_api_fail(char *buf, size_t cap, tandem_status st, const char *fmt, ...) {
    if (buf && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, cap, fmt, ap);
        va_end(ap);
    }
    return st;
}

const char *td_api_model_path(const char *given) {
    const char *path = given;
    if (!path)
        path = getenv("TANDEM_MODEL");
    return path && *path ? path : TANDEM_DEFAULT_MODEL;
}

tandem_status td_api_device_config(tandem_device device, const char *emu_gpu, const char *emu_link, int emu_threads,
                                   td_device_config *dc, td_error *err) {
    if ((emu_gpu || emu_link) && device != TANDEM_DEVICE_EMU)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "emu_gpu and emu_link apply to device emu only");
    td_device_config_default(dc);
    dc->kind = device == TANDEM_DEVICE_EMU ? TD_DEVICE_KIND_EMU : TD_DEVICE_KIND_CUDA;
    dc->emu_threads = emu_threads;
    if (emu_gpu) {
        if (!(dc->gpu = td_gpu_model_find(emu_gpu)))
            return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                           "emu_gpu '%s' is no GPU preset (T4, A10G, A100-SXM, H100-PCIe, H100-SXM)", emu_gpu);
        dc->emu_mode = TD_EMU_TIMED;
    }
    if (emu_link && !(dc->link = td_link_model_find(emu_link)))
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT,
                       "emu_link '%s' is no link preset (pcie3-x16, pcie4-x16, pcie5-x16)", emu_link);
    return TANDEM_OK;
}
