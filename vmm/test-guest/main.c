/* The test guest's sequence: hello, command line, devices, done, exit. */
#include "cmdline.h"
#include "drivers.h"
#include "exit.h"
#include "io.h"
#include "serial.h"
#include "virtio.h"

#define BOOT_PARAMS_CMD_LINE_PTR 0x228

#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_VSOCK 19

/* `tg.bench`: timed 4 KiB reads after the blk checks (the host times the
 * "blk bench start"/"blk bench end" lines). */
#define BLK_BENCH_READS 256
static int blk_bench;

static void probe(uint64_t base, int serve_vsock)
{
    uint32_t magic = mmio_read32(base + VIRTIO_MMIO_MAGIC);
    uint32_t version = mmio_read32(base + VIRTIO_MMIO_VERSION);
    uint32_t id;

    if (magic != VIRTIO_MMIO_MAGIC_VALUE) {
        put_str("tg: error bad magic ");
        put_hex(magic);
        put_str(" at ");
        put_hex(base);
        put_str("\n");
        return;
    }
    if (version != 2) {
        line_num("error virtio-mmio version", version);
        return;
    }
    id = mmio_read32(base + VIRTIO_MMIO_DEVICE_ID);
    put_str("tg: mmio ");
    put_hex(base);
    put_str(" device ");
    put_dec(id);
    put_str("\n");
    if (id == VIRTIO_ID_BLOCK)
        blk_run(base, blk_bench);
    else if (id == VIRTIO_ID_VSOCK)
        vsock_run(base, serve_vsock);
}

void guest_main(const uint8_t *boot_params);  /* called from start.S */

void guest_main(const uint8_t *boot_params)
{
    uint32_t ptr = *(const volatile uint32_t *)(boot_params +
                                                BOOT_PARAMS_CMD_LINE_PTR);
    const char *cl = ptr ? (const char *)(uintptr_t)ptr : "";

    line("hello");
    put_str("tg: cmdline ");
    put_str(cl);
    put_str("\n");

    blk_bench = cmdline_has(cl, "tg.bench") ? BLK_BENCH_READS : 0;
    if (!cmdline_has(cl, "tg.only=serial")) {
        int serve_vsock = !cmdline_has(cl, "tg.vsock=skip");
        const char *p = cl;
        struct mmio_dev d;
        while ((p = cmdline_next_mmio(p, &d))) {
            if (d.ok)
                probe(d.base, serve_vsock);
            else
                line("error bad virtio_mmio.device token");
        }
    }

    line("done");
    guest_exit(cmdline_value(cl, "tg.exit="));
}
