/* virtio-vsock: print the guest CID, then echo one stream connection on
 * port 1234 (RW payloads are sent straight back). */
#include "drivers.h"
#include "io.h"
#include "serial.h"
#include "virtio.h"

#define PORT       1234
#define BUF_ALLOC  65536
#define RX_PAYLOAD 1024

#define TYPE_STREAM 1
enum {
    OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW,
    OP_CREDIT_UPDATE, OP_CREDIT_REQUEST,
};

struct vsock_hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));
_Static_assert(sizeof(struct vsock_hdr) == 44, "vsock header is 44 bytes");

static struct vq_mem rx_mem, tx_mem, ev_mem;
static struct vq rxq, txq, evq;
static uint8_t rx_buf[VQ_MAX][sizeof(struct vsock_hdr) + RX_PAYLOAD];
static uint8_t ev_buf[2][8];
static struct vsock_hdr tx_hdr;

static uint64_t our_cid;
static int connected;
static uint64_t peer_cid;
static uint32_t peer_port;
static uint32_t rx_bytes;  /* payload received on the connection: fwd_cnt */

/* Sends one packet from our port `src_port` (header, then the payload as a
 * second descriptor) and waits until the device has taken it.
 * Returns 0, or -1 on timeout. */
static int send_from(uint32_t src_port, uint16_t op, uint64_t dst_cid,
                     uint32_t dst_port, const void *payload, uint32_t len)
{
    uint32_t id, used_len;

    tx_hdr.src_cid = our_cid;
    tx_hdr.dst_cid = dst_cid;
    tx_hdr.src_port = src_port;
    tx_hdr.dst_port = dst_port;
    tx_hdr.len = len;
    tx_hdr.type = TYPE_STREAM;
    tx_hdr.op = op;
    tx_hdr.flags = 0;
    tx_hdr.buf_alloc = BUF_ALLOC;
    tx_hdr.fwd_cnt = rx_bytes;
    vq_desc(&txq, 0, &tx_hdr, sizeof(tx_hdr), len ? VIRTQ_DESC_F_NEXT : 0, 1);
    if (len)
        vq_desc(&txq, 1, payload, len, 0, 0);
    vq_push(&txq, 0);
    vq_notify(&txq);
    if (vq_wait(&txq, &id, &used_len)) {
        line("error vsock tx timeout");
        return -1;
    }
    return 0;
}

/* To the connected peer, from PORT. */
static int send(uint16_t op, const void *payload, uint32_t len)
{
    return send_from(PORT, op, peer_cid, peer_port, payload, len);
}

/* Handles one received packet; returns 1 when the loop should end. */
static int handle(const struct vsock_hdr *h, uint32_t used_len)
{
    if (used_len < sizeof(*h) || h->type != TYPE_STREAM)
        return 0;
    if (h->op == OP_REQUEST) {
        if (h->dst_port != PORT || connected) {  /* one connection only */
            send_from(h->dst_port, OP_RST, h->src_cid, h->src_port, 0, 0);
            line_num("vsock refused", h->dst_port);
            return 0;
        }
        connected = 1;
        peer_cid = h->src_cid;
        peer_port = h->src_port;
        rx_bytes = 0;
        if (send(OP_RESPONSE, 0, 0))
            return 1;
        line_num("vsock connected", peer_port);
        return 0;
    }
    /* Everything else must belong to our connection. */
    if (!connected || h->src_cid != peer_cid || h->src_port != peer_port ||
        h->dst_port != PORT)
        return 0;
    switch (h->op) {
    case OP_RW: {
        uint32_t n = h->len;
        if (n > used_len - sizeof(*h))
            n = used_len - (uint32_t)sizeof(*h);
        if (n > RX_PAYLOAD)
            n = RX_PAYLOAD;
        rx_bytes += n;
        if (send(OP_RW, h + 1, n))
            return 1;
        line_num("vsock echoed", n);
        return 0;
    }
    case OP_CREDIT_REQUEST:
        return send(OP_CREDIT_UPDATE, 0, 0) ? 1 : 0;
    case OP_SHUTDOWN:
        send(OP_RST, 0, 0);
        line("vsock closed");
        return 1;
    case OP_RST:  /* the peer gave up on the connection: nothing to answer */
        line("vsock closed");
        return 1;
    default:      /* CREDIT_UPDATE and anything else */
        return 0;
    }
}

static void serve(void)
{
    line_num("vsock listening", PORT);
    for (;;) {
        uint32_t id, len;
        int done;

        if (!vq_poll(&rxq, &id, &len)) {
            cpu_relax();
            continue;
        }
        if (id >= rxq.size)
            continue;  /* bogus id from the device: drop it */
        done = handle((const struct vsock_hdr *)rx_buf[id], len);
        vq_push(&rxq, (uint16_t)id);  /* recycle the buffer */
        vq_notify(&rxq);
        if (done)
            return;
    }
}

void vsock_run(uint64_t base, int serve_echo)
{
    uint64_t features;

    if (virtio_start(base, 0, &features))
        return;
    if (vq_setup(&rxq, base, 0, &rx_mem) || vq_setup(&txq, base, 1, &tx_mem) ||
        vq_setup(&evq, base, 2, &ev_mem))
        goto fail;
    if (txq.size < 2 || evq.size < 2) {
        line("error vsock queue too small");
        goto fail;
    }
    /* Every rx descriptor is one device-writable header+payload buffer. */
    for (uint16_t i = 0; i < rxq.size; i++) {
        vq_desc(&rxq, i, rx_buf[i], sizeof(rx_buf[i]), VIRTQ_DESC_F_WRITE, 0);
        vq_push(&rxq, i);
    }
    for (uint16_t i = 0; i < 2; i++) {
        vq_desc(&evq, i, ev_buf[i], sizeof(ev_buf[i]), VIRTQ_DESC_F_WRITE, 0);
        vq_push(&evq, i);
    }
    virtio_driver_ok(base);
    vq_notify(&rxq);
    vq_notify(&evq);

    our_cid = virtio_config64(base, 0);
    line_num("vsock cid", our_cid);
    if (serve_echo)
        serve();
    return;

fail:
    virtio_fail(base);
}
