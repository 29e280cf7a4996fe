/* Ends the guest: mode is the value of tg.exit= (or 0 for the default). */
#ifndef TG_EXIT_H
#define TG_EXIT_H

void guest_exit(const char *mode) __attribute__((noreturn));

#endif
