/* COM1 output: one outb per byte to 0x3f8, no status polling. */
#include "serial.h"
#include "io.h"

#define COM1 0x3f8

static void put_char(char c)
{
    outb(COM1, (uint8_t)c);
}

void put_str(const char *s)
{
    while (*s)
        put_char(*s++);
}

void put_dec(uint64_t v)
{
    char buf[20];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        put_char(buf[--n]);
}

void put_hex(uint64_t v)
{
    int shift = 60;
    put_str("0x");
    while (shift > 0 && !(v >> shift))
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        put_char("0123456789abcdef"[(v >> shift) & 0xf]);
}

void put_text(const void *buf, size_t n)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < n; i++)
        put_char(p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.');
}

void line(const char *s)
{
    put_str("tg: ");
    put_str(s);
    put_char('\n');
}

void line_num(const char *s, uint64_t v)
{
    put_str("tg: ");
    put_str(s);
    put_char(' ');
    put_dec(v);
    put_char('\n');
}
