/* Kernel command line: whitespace-separated tokens. */
#ifndef TG_CMDLINE_H
#define TG_CMDLINE_H

#include <stdint.h>

/* Whether the exact token `tok` occurs. */
int cmdline_has(const char *cl, const char *tok);

/* Value after the last token starting with `key` (e.g. "tg.exit="), or 0.
 * The value ends at whitespace or NUL; compare it with value_is(). */
const char *cmdline_value(const char *cl, const char *key);
int value_is(const char *v, const char *word);

/* One `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` token. */
struct mmio_dev {
    uint64_t size, base, irq;
    int ok;  /* 0 if the token did not parse */
};

/* Finds the next such token at or after `p`; returns the position after
 * it (pass that back in), or 0 when there are no more. */
const char *cmdline_next_mmio(const char *p, struct mmio_dev *d);

#endif
