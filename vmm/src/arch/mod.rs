//! x86_64 specifics: boot (kernel loading, zero page, command line), CPU
//! registers and page tables, CPUID, and the MP table.

pub mod boot;
pub mod cpuid;
pub mod mptable;
pub mod regs;
