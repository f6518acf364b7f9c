/* Opening a device (gpu/device.h): the emulated device in process, the CUDA
 * backend from its plugin. */
#include "gpu/device.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/emu/emu.h"

void td_device_config_default(td_device_config *c) {
    memset(c, 0, sizeof *c);
    c->kind = TD_DEVICE_KIND_EMU;
    c->emu_mode = TD_EMU_COMPUTE;
}

/* The plugin stays loaded once found: CUDA's runtime does not support
 * being unloaded and reloaded in one process, and one handle serves every
 * device opened after. */
static pthread_mutex_t plugin_lock = PTHREAD_MUTEX_INITIALIZER;
static td_cuda_open_fn plugin_open;

#ifndef TANDEM_CUDA_PLUGIN_BUILD
#define TANDEM_CUDA_PLUGIN_BUILD ""
#endif

/* Tries path; on failure appends "path: why; " to tried. */
static td_cuda_open_fn try_plugin(const char *path, char *tried, size_t size) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    const char *why = NULL;
    td_cuda_open_fn fn = NULL;
    if (!h)
        why = dlerror();
    else if (!(fn = (td_cuda_open_fn)dlsym(h, "tandem_cuda_open"))) {
        why = "no tandem_cuda_open in it";
        dlclose(h);
    }
    if (!fn) {
        size_t used = strlen(tried);
        if (used < size)
            snprintf(tried + used, size - used, "%s%.160s (%.160s)", used ? "; " : "", path, why ? why : "?");
    }
    return fn;
}

static tandem_status find_plugin(const char *path, td_cuda_open_fn *out, td_error *err) {
    pthread_mutex_lock(&plugin_lock);
    td_cuda_open_fn fn = plugin_open;
    char tried[1024] = "";
    if (!fn && path)
        fn = try_plugin(path, tried, sizeof tried);
    if (!fn && !path) {
        const char *env = getenv("TANDEM_CUDA_PLUGIN");
        if (env && *env)
            fn = try_plugin(env, tried, sizeof tried);
        Dl_info info;
        if (!fn && dladdr((void *)td_device_open, &info) && info.dli_fname) {
            /* next to the library (or executable) this code is linked into */
            char next[4096];
            const char *slash = strrchr(info.dli_fname, '/');
            int dir = slash ? (int)(slash - info.dli_fname) : 1;
            snprintf(next, sizeof next, "%.*s/libtandem_cuda.so", dir, slash ? info.dli_fname : ".");
            fn = try_plugin(next, tried, sizeof tried);
        }
        if (!fn && TANDEM_CUDA_PLUGIN_BUILD[0])
            fn = try_plugin(TANDEM_CUDA_PLUGIN_BUILD, tried, sizeof tried);
        if (!fn)
            fn = try_plugin("libtandem_cuda.so", tried, sizeof tried);
    }
    if (fn && !path)
        plugin_open = fn;
    pthread_mutex_unlock(&plugin_lock);
    if (!fn)
        return td_fail(err, TANDEM_ERR_UNSUPPORTED, "cuda: cannot load the CUDA plugin: %s", tried);
    *out = fn;
    return TANDEM_OK;
}

tandem_status td_device_open(const td_device_config *c, td_device **out, td_error *err) {
    *out = NULL;
    if (c->kind == TD_DEVICE_KIND_EMU)
        return td_emu_open(c, out, err);
    if (c->kind != TD_DEVICE_KIND_CUDA)
        return td_fail(err, TANDEM_ERR_INVALID_ARGUMENT, "device: unknown kind %d", (int)c->kind);
    td_cuda_open_fn open_fn = NULL;
    tandem_status st = find_plugin(c->cuda_plugin, &open_fn, err);
    if (st)
        return st;
    return open_fn(TD_DEVICE_ABI_VERSION, c->cuda_device, out, err);
}

void td_device_close(td_device *d) {
    if (d)
        d->ops->close(d);
}
