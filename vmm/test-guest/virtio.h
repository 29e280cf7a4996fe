/* virtio-mmio (version 2) transport and split virtqueues, polled. */
#ifndef TG_VIRTIO_H
#define TG_VIRTIO_H

#include <stdint.h>

/* Register offsets. */
#define VIRTIO_MMIO_MAGIC           0x000  /* "virt" = 0x74726976 */
#define VIRTIO_MMIO_VERSION         0x004
#define VIRTIO_MMIO_DEVICE_ID       0x008
#define VIRTIO_MMIO_DEV_FEATURES    0x010
#define VIRTIO_MMIO_DEV_FEAT_SEL    0x014
#define VIRTIO_MMIO_DRV_FEATURES    0x020
#define VIRTIO_MMIO_DRV_FEAT_SEL    0x024
#define VIRTIO_MMIO_QUEUE_SEL       0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX   0x034
#define VIRTIO_MMIO_QUEUE_NUM       0x038
#define VIRTIO_MMIO_QUEUE_READY     0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY    0x050
#define VIRTIO_MMIO_STATUS          0x070
#define VIRTIO_MMIO_QUEUE_DESC_LO   0x080
#define VIRTIO_MMIO_QUEUE_DESC_HI   0x084
#define VIRTIO_MMIO_QUEUE_AVAIL_LO  0x090
#define VIRTIO_MMIO_QUEUE_AVAIL_HI  0x094
#define VIRTIO_MMIO_QUEUE_USED_LO   0x0a0
#define VIRTIO_MMIO_QUEUE_USED_HI   0x0a4
#define VIRTIO_MMIO_CONFIG_GEN      0x0fc
#define VIRTIO_MMIO_CONFIG          0x100

#define VIRTIO_MMIO_MAGIC_VALUE 0x74726976u
#define VIRTIO_F_VERSION_1      (1ull << 32)

/* Descriptor flags. */
#define VIRTQ_DESC_F_NEXT  1
#define VIRTQ_DESC_F_WRITE 2  /* device writes the buffer */

#define VQ_MAX 8  /* queue size we use (or the device max if smaller) */

/* One queue's rings, in one page. */
struct vq_mem {
    struct {
        uint64_t addr;
        uint32_t len;
        uint16_t flags, next;
    } desc[VQ_MAX];
    struct {
        uint16_t flags, idx, ring[VQ_MAX], used_event;
    } avail;
    struct {
        uint16_t flags, idx;
        struct {
            uint32_t id, len;
        } ring[VQ_MAX];
        uint16_t avail_event;
    } used;
} __attribute__((aligned(4096)));

struct vq {
    volatile struct vq_mem *m;
    uint64_t base;        /* device MMIO base */
    uint16_t index, size;
    uint16_t next_avail;  /* our copy of avail.idx */
    uint16_t last_used;   /* used entries consumed so far */
};

/* Reset, ACKNOWLEDGE, DRIVER, negotiate (offered & want; VERSION_1 is
 * required), FEATURES_OK. Returns 0 and *got, or prints an error and -1. */
int virtio_start(uint64_t base, uint64_t want, uint64_t *got);
void virtio_driver_ok(uint64_t base);
void virtio_fail(uint64_t base);
uint64_t virtio_config64(uint64_t base, uint32_t off);

/* Sets up queue `index` in `mem` (avail NO_INTERRUPT, QueueReady=1).
 * Returns 0, or prints an error and returns -1. */
int vq_setup(struct vq *q, uint64_t base, uint16_t index, struct vq_mem *mem);
void vq_desc(struct vq *q, uint16_t i, const volatile void *buf, uint32_t len,
             uint16_t flags, uint16_t next);
void vq_push(struct vq *q, uint16_t head);  /* offer a chain */
void vq_notify(struct vq *q);
/* Takes one used entry if there is one: returns 1 and its id/len, else 0. */
int vq_poll(struct vq *q, uint32_t *id, uint32_t *len);
/* vq_poll until an entry comes; 0, or -1 after a timeout (seconds). */
int vq_wait(struct vq *q, uint32_t *id, uint32_t *len);

#endif
