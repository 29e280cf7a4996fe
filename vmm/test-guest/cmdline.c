/* Command-line token scanning and the virtio_mmio.device= syntax. */
#include "cmdline.h"

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Start of the next token at or after p (0 if none); *end = just past it. */
static const char *next_token(const char *p, const char **end)
{
    while (*p && is_space(*p))
        p++;
    if (!*p)
        return 0;
    *end = p;
    while (**end && !is_space(**end))
        (*end)++;
    return p;
}

/* Length of `pfx` if token [t, e) starts with it, else 0. */
static int has_prefix(const char *t, const char *e, const char *pfx)
{
    int n = 0;
    while (pfx[n]) {
        if (t + n >= e || t[n] != pfx[n])
            return 0;
        n++;
    }
    return n;
}

int cmdline_has(const char *cl, const char *tok)
{
    const char *t, *e;
    for (; (t = next_token(cl, &e)); cl = e) {
        int n = has_prefix(t, e, tok);
        if (n && t + n == e)
            return 1;
    }
    return 0;
}

const char *cmdline_value(const char *cl, const char *key)
{
    const char *t, *e, *v = 0;
    for (; (t = next_token(cl, &e)); cl = e) {
        int n = has_prefix(t, e, key);
        if (n)
            v = t + n;
    }
    return v;
}

int value_is(const char *v, const char *word)
{
    while (*word && *v == *word) {
        v++;
        word++;
    }
    return !*word && (!*v || is_space(*v));
}

/* Unsigned number, "0x" hex or decimal; advances *pp. 0 if no digits. */
static int parse_num(const char **pp, const char *e, uint64_t *out)
{
    const char *p = *pp;
    uint64_t v = 0;
    unsigned base = 10;
    int digits = 0;

    if (p + 1 < e && p[0] == '0' && (p[1] | 0x20) == 'x') {
        base = 16;
        p += 2;
    }
    for (; p < e; p++, digits++) {
        char c = (char)(*p | 0x20);
        unsigned d;
        if (*p >= '0' && *p <= '9')
            d = (unsigned)(*p - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else
            break;
        if (d >= base)
            break;
        v = v * base + d;
    }
    *pp = p;
    *out = v;
    return digits > 0;
}

/* Like the kernel's memparse(): a number with an optional K/M/G suffix. */
static int parse_size(const char **pp, const char *e, uint64_t *out)
{
    if (!parse_num(pp, e, out))
        return 0;
    if (*pp < e) {
        int shift = 0;
        switch (**pp | 0x20) {
        case 'k': shift = 10; break;
        case 'm': shift = 20; break;
        case 'g': shift = 30; break;
        }
        if (shift) {
            *out <<= shift;
            (*pp)++;
        }
    }
    return 1;
}

const char *cmdline_next_mmio(const char *p, struct mmio_dev *d)
{
    const char *t, *e;
    for (; (t = next_token(p, &e)); p = e) {
        int n = has_prefix(t, e, "virtio_mmio.device=");
        if (!n)
            continue;
        t += n;
        d->ok = parse_size(&t, e, &d->size) &&
                t < e && *t++ == '@' && parse_num(&t, e, &d->base) &&
                t < e && *t++ == ':' && parse_num(&t, e, &d->irq);
        return e;  /* an optional ":<id>" after the irq is ignored */
    }
    return 0;
}
