/* Port I/O, MMIO and ordering primitives. */
#ifndef TG_IO_H
#define TG_IO_H

#include <stddef.h>
#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v)
{
    asm volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

/* MMIO accesses exit to the VMM: keep them few. */
static inline uint32_t mmio_read32(uint64_t addr)
{
    return *(volatile uint32_t *)(uintptr_t)addr;
}

static inline void mmio_write32(uint64_t addr, uint32_t v)
{
    *(volatile uint32_t *)(uintptr_t)addr = v;
}

/* Compiler barrier: x86 keeps stores in order and loads in order. */
static inline void barrier(void)
{
    asm volatile("" : : : "memory");
}

static inline void mfence(void)
{
    asm volatile("mfence" : : : "memory");
}

static inline void cpu_relax(void)
{
    asm volatile("pause" : : : "memory");
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

#endif
