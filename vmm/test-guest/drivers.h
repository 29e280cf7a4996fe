/* The device drivers, run once per virtio-mmio device found. */
#ifndef TG_DRIVERS_H
#define TG_DRIVERS_H

#include <stdint.h>

/* virtio-blk, device id 2; `bench` > 0 adds that many timed 4 KiB reads */
void blk_run(uint64_t base, int bench);
void vsock_run(uint64_t base, int serve);   /* virtio-vsock, device id 19 */

#endif
