/* virtio-blk: capacity, read/write/read-back, GET_ID, a read past the end. */
#include "drivers.h"
#include "io.h"
#include "serial.h"
#include "virtio.h"

#define VIRTIO_BLK_F_RO    (1ull << 5)
#define VIRTIO_BLK_T_IN     0
#define VIRTIO_BLK_T_OUT    1
#define VIRTIO_BLK_T_GET_ID 8
#define BLK_ID_BYTES        20

static struct vq_mem blk_mem;
static struct vq blk_q;
static struct {
    uint32_t type, reserved;
    uint64_t sector;
} blk_hdr;
static uint8_t blk_data[4096] __attribute__((aligned(4096)));
static volatile uint8_t blk_status;

/* One request as a header / data / status chain. Returns the status byte,
 * or -1 (after printing an error) if the device does not answer. */
static int blk_request(uint32_t type, uint64_t sector, uint32_t len,
                       int device_writes)
{
    uint32_t id, used_len;

    blk_hdr.type = type;
    blk_hdr.reserved = 0;
    blk_hdr.sector = sector;
    blk_status = 0xff;  /* shows if the device never wrote it */
    vq_desc(&blk_q, 0, &blk_hdr, sizeof(blk_hdr), VIRTQ_DESC_F_NEXT, 1);
    vq_desc(&blk_q, 1, blk_data, len,
            VIRTQ_DESC_F_NEXT | (device_writes ? VIRTQ_DESC_F_WRITE : 0), 2);
    vq_desc(&blk_q, 2, &blk_status, 1, VIRTQ_DESC_F_WRITE, 0);
    vq_push(&blk_q, 0);
    vq_notify(&blk_q);
    if (vq_wait(&blk_q, &id, &used_len)) {
        line("error blk timeout");
        return -1;
    }
    return blk_status;
}

static void clear_data(void)
{
    for (int i = 0; i < 512; i++)
        blk_data[i] = 0;
}

/* `reads` requests of 8 sectors each, spread over the disk. */
static void blk_bench_run(int reads, uint64_t capacity)
{
    line("blk bench start");
    for (int i = 0; i < reads; i++) {
        uint64_t sector = ((uint64_t)i * 8) % (capacity - 7);
        if (blk_request(VIRTIO_BLK_T_IN, sector, 4096, 1) != 0) {
            line("error blk bench read failed");
            return;
        }
    }
    line("blk bench end");
}

void blk_run(uint64_t base, int bench)
{
    static const char text[] = "written by the test guest";
    uint64_t features, capacity;
    int st;

    if (virtio_start(base, VIRTIO_BLK_F_RO, &features))
        return;
    if (features & VIRTIO_BLK_F_RO)
        line("blk read-only");
    if (vq_setup(&blk_q, base, 0, &blk_mem))
        goto fail;
    if (blk_q.size < 3) {
        line("error blk queue too small");
        goto fail;
    }
    virtio_driver_ok(base);
    capacity = virtio_config64(base, 0);
    line_num("blk capacity", capacity);

    /* a) sector 0 */
    if ((st = blk_request(VIRTIO_BLK_T_IN, 0, 512, 1)) < 0)
        return;
    put_str("tg: blk sector0 ");
    put_text(blk_data, 16);
    put_str("\n");
    line_num("blk read status", (uint64_t)st);

    /* b) write sector 1 */
    clear_data();
    for (int i = 0; text[i]; i++)
        blk_data[i] = (uint8_t)text[i];
    if ((st = blk_request(VIRTIO_BLK_T_OUT, 1, 512, 0)) < 0)
        return;
    line_num("blk write status", (uint64_t)st);

    /* c) read it back */
    clear_data();
    if ((st = blk_request(VIRTIO_BLK_T_IN, 1, 512, 1)) < 0)
        return;
    put_str("tg: blk sector1 ");
    put_text(blk_data, sizeof(text) - 1);
    put_str("\n");

    /* d) device id: up to 20 bytes, NUL-terminated only if shorter */
    for (int i = 0; i < BLK_ID_BYTES; i++)
        blk_data[i] = 0;
    if ((st = blk_request(VIRTIO_BLK_T_GET_ID, 0, BLK_ID_BYTES, 1)) < 0)
        return;
    int n = 0;
    while (n < BLK_ID_BYTES && blk_data[n])
        n++;
    put_str("tg: blk id ");
    put_text(blk_data, (size_t)n);
    put_str("\n");
    if (st)
        line_num("blk id status", (uint64_t)st);

    /* e) one sector past the end: expect VIRTIO_BLK_S_IOERR (1) */
    if ((st = blk_request(VIRTIO_BLK_T_IN, capacity, 512, 1)) < 0)
        return;
    line_num("blk past-end status", (uint64_t)st);
    if (bench > 0 && capacity >= 8)
        blk_bench_run(bench, capacity);
    return;

fail:
    virtio_fail(base);
}
