/* Output on COM1; every line the guest prints starts with "tg: ". */
#ifndef TG_SERIAL_H
#define TG_SERIAL_H

#include <stddef.h>
#include <stdint.h>

void put_str(const char *s);
void put_dec(uint64_t v);
void put_hex(uint64_t v);                  /* "0x" + lowercase hex */
void put_text(const void *buf, size_t n);  /* non-printable -> '.' */
void line(const char *s);                  /* "tg: " s "\n" */
void line_num(const char *s, uint64_t v);  /* "tg: " s " " v "\n" */

#endif
