/* The device drivers, run once per virtio-mmio device found. */
#ifndef TG_DRIVERS_H
#define TG_DRIVERS_H

#include <stdint.h>

void blk_run(uint64_t base);                /* virtio-blk, device id 2 */
void vsock_run(uint64_t base, int serve);   /* virtio-vsock, device id 19 */

#endif
