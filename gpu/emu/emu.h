/* The emulated device (gpu/device.h): the device interface on host memory
 * and host threads.
 *
 *   memory   device memory is anonymous mappings (zero-filled, committed
 *            page by page as touched), counted against emu_mem_bytes;
 *   streams  one worker thread each, running its queue in order; an op's
 *            arguments are copied at enqueue, as a GPU launch copies them;
 *   events   counters under the device's lock that streams and the host
 *            wait on;
 *   compute  ops run the cpu/ kernels on the worker's OpenMP team
 *            (emu_threads): GEMMs and linear layers through oneDNN bf16
 *            (linear layers on weights in oneDNN's blocked layout, as the
 *            host path keeps them, so both give the same bits), attention
 *            through cpu/attention.h over the device pool;
 *   timed    ops compute nothing and take the time the GPU model gives,
 *            one op at a time on the device (streams share its compute),
 *            copies one at a time per link direction. Copies still move
 *            their bytes (the metadata a step uploads keeps its meaning);
 *            weights_create keeps no values.
 *
 * With a link model, host<->device copies take the link's time in both
 * modes, so copies overlap compute as they would over PCIe. */
#ifndef TD_GPU_EMU_EMU_H
#define TD_GPU_EMU_EMU_H

#include "gpu/device.h"

tandem_status td_emu_open(const td_device_config *c, td_device **out, td_error *err);

#endif /* TD_GPU_EMU_EMU_H */
