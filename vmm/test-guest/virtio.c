/* virtio-mmio device initialisation and polled split-virtqueue handling. */
#include "virtio.h"
#include "io.h"
#include "serial.h"

#define S_ACKNOWLEDGE 1
#define S_DRIVER      2
#define S_DRIVER_OK   4
#define S_FEATURES_OK 8
#define S_FAILED      128

#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

/* ~2^34 TSC ticks: several seconds at any plausible TSC rate. */
#define VQ_TIMEOUT_TICKS (1ull << 34)

static uint32_t rd(uint64_t base, uint32_t off)
{
    return mmio_read32(base + off);
}

static void wr(uint64_t base, uint32_t off, uint32_t v)
{
    mmio_write32(base + off, v);
}

int virtio_start(uint64_t base, uint64_t want, uint64_t *got)
{
    uint32_t status = S_ACKNOWLEDGE | S_DRIVER;
    uint64_t offered, acc;

    wr(base, VIRTIO_MMIO_STATUS, 0);
    for (int i = 0; i < 100 && rd(base, VIRTIO_MMIO_STATUS); i++)
        cpu_relax();
    wr(base, VIRTIO_MMIO_STATUS, S_ACKNOWLEDGE);
    wr(base, VIRTIO_MMIO_STATUS, status);

    wr(base, VIRTIO_MMIO_DEV_FEAT_SEL, 0);
    offered = rd(base, VIRTIO_MMIO_DEV_FEATURES);
    wr(base, VIRTIO_MMIO_DEV_FEAT_SEL, 1);
    offered |= (uint64_t)rd(base, VIRTIO_MMIO_DEV_FEATURES) << 32;
    if (!(offered & VIRTIO_F_VERSION_1)) {
        line("error no VIRTIO_F_VERSION_1");
        virtio_fail(base);
        return -1;
    }
    acc = offered & (want | VIRTIO_F_VERSION_1);
    wr(base, VIRTIO_MMIO_DRV_FEAT_SEL, 0);
    wr(base, VIRTIO_MMIO_DRV_FEATURES, (uint32_t)acc);
    wr(base, VIRTIO_MMIO_DRV_FEAT_SEL, 1);
    wr(base, VIRTIO_MMIO_DRV_FEATURES, (uint32_t)(acc >> 32));

    status |= S_FEATURES_OK;
    wr(base, VIRTIO_MMIO_STATUS, status);
    if (!(rd(base, VIRTIO_MMIO_STATUS) & S_FEATURES_OK)) {
        line("error FEATURES_OK not accepted");
        virtio_fail(base);
        return -1;
    }
    *got = acc;
    return 0;
}

void virtio_driver_ok(uint64_t base)
{
    wr(base, VIRTIO_MMIO_STATUS,
       S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

void virtio_fail(uint64_t base)
{
    wr(base, VIRTIO_MMIO_STATUS, rd(base, VIRTIO_MMIO_STATUS) | S_FAILED);
}

/* 64-bit config field as two 32-bit reads, retried if the generation moved. */
uint64_t virtio_config64(uint64_t base, uint32_t off)
{
    uint64_t v = 0;
    for (int tries = 0; tries < 3; tries++) {
        uint32_t gen = rd(base, VIRTIO_MMIO_CONFIG_GEN);
        v = rd(base, VIRTIO_MMIO_CONFIG + off);
        v |= (uint64_t)rd(base, VIRTIO_MMIO_CONFIG + off + 4) << 32;
        if (rd(base, VIRTIO_MMIO_CONFIG_GEN) == gen)
            break;
    }
    return v;
}

int vq_setup(struct vq *q, uint64_t base, uint16_t index, struct vq_mem *mem)
{
    uint32_t max;
    uint16_t size = VQ_MAX;
    uint64_t desc = (uintptr_t)mem->desc;
    uint64_t avail = (uintptr_t)&mem->avail;
    uint64_t used = (uintptr_t)&mem->used;
    volatile uint8_t *p = (volatile uint8_t *)mem;

    /* Only the used part of the page; it may hold an earlier device's rings. */
    for (size_t i = 0; i < offsetof(struct vq_mem, used) + sizeof(mem->used); i++)
        p[i] = 0;

    wr(base, VIRTIO_MMIO_QUEUE_SEL, index);
    max = rd(base, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (max == 0) {
        put_str("tg: error queue ");
        put_dec(index);
        put_str(" max 0\n");
        return -1;
    }
    while (size > max)  /* stay a power of two */
        size >>= 1;

    q->m = mem;
    q->base = base;
    q->index = index;
    q->size = size;
    q->next_avail = 0;
    q->last_used = 0;
    q->m->avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT;  /* we poll */

    wr(base, VIRTIO_MMIO_QUEUE_NUM, size);
    wr(base, VIRTIO_MMIO_QUEUE_DESC_LO, (uint32_t)desc);
    wr(base, VIRTIO_MMIO_QUEUE_DESC_HI, (uint32_t)(desc >> 32));
    wr(base, VIRTIO_MMIO_QUEUE_AVAIL_LO, (uint32_t)avail);
    wr(base, VIRTIO_MMIO_QUEUE_AVAIL_HI, (uint32_t)(avail >> 32));
    wr(base, VIRTIO_MMIO_QUEUE_USED_LO, (uint32_t)used);
    wr(base, VIRTIO_MMIO_QUEUE_USED_HI, (uint32_t)(used >> 32));
    mfence();  /* rings initialised before the device may look at them */
    wr(base, VIRTIO_MMIO_QUEUE_READY, 1);
    return 0;
}

void vq_desc(struct vq *q, uint16_t i, const volatile void *buf, uint32_t len,
             uint16_t flags, uint16_t next)
{
    q->m->desc[i].addr = (uintptr_t)buf;  /* identity-mapped: virt = phys */
    q->m->desc[i].len = len;
    q->m->desc[i].flags = flags;
    q->m->desc[i].next = next;
}

void vq_push(struct vq *q, uint16_t head)
{
    q->m->avail.ring[q->next_avail & (q->size - 1)] = head;
    barrier();  /* descriptors and ring entry before the index */
    q->next_avail++;
    q->m->avail.idx = q->next_avail;
}

void vq_notify(struct vq *q)
{
    mfence();  /* avail.idx visible before the device is told */
    wr(q->base, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

int vq_poll(struct vq *q, uint32_t *id, uint32_t *len)
{
    if (q->m->used.idx == q->last_used)
        return 0;
    barrier();  /* used.idx before the entry and the buffers it covers */
    *id = q->m->used.ring[q->last_used & (q->size - 1)].id;
    *len = q->m->used.ring[q->last_used & (q->size - 1)].len;
    q->last_used++;
    barrier();
    return 1;
}

int vq_wait(struct vq *q, uint32_t *id, uint32_t *len)
{
    uint64_t start = rdtsc();
    while (!vq_poll(q, id, len)) {
        if (rdtsc() - start > VQ_TIMEOUT_TICKS)
            return -1;
        cpu_relax();
    }
    return 0;
}
