/* Entry from the VMM: 64-bit long mode, CPL 0, IF=0, RSI = boot_params. */
    .section .text.start, "ax"
    .globl _start
_start:
    cli
    cld                         /* the C ABI expects DF=0 */
    mov     $stack_top, %rsp    /* own 16 KiB stack in .bss */
    mov     %rsi, %rdi          /* guest_main(boot_params) */
    call    guest_main
1:  cli
    hlt
    jmp     1b

    .section .bss
    .balign 16
stack:
    .skip   16384
stack_top:

    .section .note.GNU-stack, "", @progbits
