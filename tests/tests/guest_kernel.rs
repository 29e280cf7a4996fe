//! The guest kernel builds from Debian's source package with every option the
//! microVM needs (booting it is the microVM backend's test).

use cellbox::guest::GuestKernel;

#[test]
fn the_guest_kernel_builds_with_the_options_the_microvm_needs() {
    let kernel = GuestKernel::ensure(&cellbox::default_cache_dir(), &Default::default())
        .expect("building the guest kernel");
    let elf = std::fs::read(kernel.vmlinux()).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "vmlinux is an ELF file");
    assert_eq!(elf[4], 2, "64-bit");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 0x3e, "x86-64");
    assert!(std::fs::metadata(kernel.bzimage()).unwrap().len() > 500_000);
    let config = std::fs::read_to_string(kernel.config()).unwrap();
    for option in [
        "CONFIG_VIRTIO_MMIO=y",
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
        "CONFIG_VIRTIO_BLK=y",
        "CONFIG_VIRTIO_VSOCKETS=y",
        "CONFIG_VIRTIO_NET=y",
        "CONFIG_IP_PNP=y",
        "CONFIG_EXT4_FS=y",
        "CONFIG_OVERLAY_FS=y",
        "CONFIG_SERIAL_8250_CONSOLE=y",
        "CONFIG_SERIAL_8250_NR_UARTS=4",
        "CONFIG_SERIAL_8250_RUNTIME_UARTS=4",
        "CONFIG_DEVTMPFS_MOUNT=y",
        "CONFIG_PVH=y",
        "CONFIG_SECCOMP_FILTER=y",
        "CONFIG_RANDOM_TRUST_BOOTLOADER=y",
        "CONFIG_RANDOM_TRUST_CPU=y",
    ] {
        assert!(
            config.lines().any(|line| line == option),
            "{option} missing from the kernel config"
        );
    }
}

#[test]
fn the_vmm_loads_both_kernel_images_at_their_64_bit_entry() {
    use cellbox_vmm::arch::boot::load_kernel;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    let kernel = GuestKernel::ensure(&cellbox::default_cache_dir(), &Default::default())
        .expect("building the guest kernel");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 256 << 20)]).unwrap();
    // vmlinux: entered at its ELF entry point, startup_64 at 16 MiB (CONFIG_PHYSICAL_START).
    let elf = load_kernel(&mem, &kernel.vmlinux()).unwrap();
    assert_eq!(elf.entry, GuestAddress(0x100_0000));
    let mut code = [0u8; 16];
    mem.read_slice(&mut code, elf.entry).unwrap();
    assert_ne!(
        code, [0u8; 16],
        "the kernel's text was copied into guest memory"
    );
    // bzImage: the protected-mode kernel at 1 MiB, its 64-bit entry 0x200 into it.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 256 << 20)]).unwrap();
    let bz = load_kernel(&mem, &kernel.bzimage()).unwrap();
    assert_eq!(bz.entry, GuestAddress(0x10_0200));
}
