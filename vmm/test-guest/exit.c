/* How the guest ends, chosen by the tg.exit= token. */
#include "exit.h"
#include "cmdline.h"
#include "io.h"
#include "serial.h"

static void __attribute__((noreturn)) halt_forever(void)
{
    for (;;)
        asm volatile("cli; hlt");
}

void guest_exit(const char *mode)
{
    if (mode && value_is(mode, "hlt")) {
        halt_forever();
    } else if (mode && value_is(mode, "triple")) {
        /* A zero-limit IDT: the #UD cannot be delivered, nor the #GP/#DF
         * that follow, so the CPU shuts down (triple fault). */
        static const struct {
            uint16_t limit;
            uint64_t base;
        } __attribute__((packed)) no_idt = {0, 0};
        asm volatile("lidt %0; ud2" : : "m"(no_idt));
    } else if (mode && value_is(mode, "spin")) {
        line("spinning");
        for (;;)
            cpu_relax();
    } else if (mode && value_is(mode, "tick")) {
        line("ticking");
        for (;;) {
            for (int i = 0; i < 1000; i++)
                cpu_relax();
            put_str(".");
        }
    }
    /* "reset" and the default: pulse reset through the i8042. */
    outb(0x64, 0xfe);
    halt_forever();
}
