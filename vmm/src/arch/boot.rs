//! Loading a Linux kernel (ELF `vmlinux` or `bzImage`) and writing the zero
//! page and command line for the 64-bit boot protocol.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, Elf, KernelLoader, load_cmdline};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, SETUP_DATA_START, ZERO_PAGE_START, ram_ranges,
};

/// `setup_data` type of a random seed for the guest's RNG (Linux's `SETUP_RNG_SEED`).
const SETUP_RNG_SEED: u32 = 9;
/// Bytes of seed handed to the guest (what the kernel's crng needs to start).
const RNG_SEED_LEN: usize = 32;

/// Loading the kernel or writing its boot data failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("cannot read the kernel {path}: {source}")]
    Open {
        /// The kernel path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// linux-loader rejected the image.
    #[error("cannot load the kernel {path} (an ELF vmlinux or a bzImage is expected): {source}")]
    Load {
        /// The kernel path.
        path: String,
        /// Why.
        source: linux_loader::loader::Error,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// Writing the zero page failed.
    #[error("cannot write the zero page: {0}")]
    BootParams(#[from] linux_loader::configurator::Error),
    /// Writing the command line failed.
    #[error("cannot write the command line: {0}")]
    LoadCmdline(linux_loader::loader::Error),
    /// The random seed for the guest could not be made or written.
    #[error("cannot hand the guest a random seed: {0}")]
    RngSeed(String),
}

/// The loaded kernel: where the boot vCPU starts, and the header bzImage carried.
#[derive(Debug)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Loads `path` (ELF or bzImage, told apart by the ELF magic) above 1 MiB.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let name = path.display().to_string();
    let open_err = |source| BootError::Open {
        path: name.clone(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(open_err)?;
    file.seek(SeekFrom::Start(0)).map_err(open_err)?;
    let load_err = |source| BootError::Load {
        path: name.clone(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    if magic == *b"\x7fELF" {
        let result = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
        Ok(LoadedKernel {
            entry: result.kernel_load,
            setup_header: None,
        })
    } else {
        let result = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
        // startup_64 sits 0x200 bytes into the protected-mode kernel.
        let entry = GuestAddress(result.kernel_load.0 + 0x200);
        Ok(LoadedKernel {
            entry,
            setup_header: result.setup_header,
        })
    }
}

/// Writes the command line and the zero page (header, command line pointer, e820 map).
pub fn write_boot_data(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    mem_size: u64,
) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BootError::LoadCmdline)?;
    let cmdline_len = cmdline.as_cstring()?.as_bytes().len();

    let mut params = boot_params::default();
    if let Some(header) = kernel.setup_header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = 0x5372_6448; // "HdrS"
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;

    let mut e820 = vec![(0, EBDA_START)];
    for (start, size) in ram_ranges(mem_size) {
        let start = start.max(HIMEM_START);
        let end = if start == HIMEM_START {
            size
        } else {
            start + size
        };
        e820.push((start, end - start));
    }
    for (i, (addr, size)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: 1,
        };
    }
    params.e820_entries = e820.len() as u8;
    params.hdr.setup_data = write_rng_seed(mem)?;

    let zero_page = BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&zero_page, mem)?;
    Ok(())
}

/// Writes a `SETUP_RNG_SEED` entry of fresh host randomness: the guest's RNG
/// is ready at boot instead of waiting for entropy. Returns its address.
fn write_rng_seed(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    use vm_memory::Bytes;
    let mut seed = [0u8; RNG_SEED_LEN];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut seed))
        .map_err(|e| BootError::RngSeed(format!("reading /dev/urandom: {e}")))?;
    // struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }
    let mut entry = Vec::with_capacity(16 + RNG_SEED_LEN);
    entry.extend_from_slice(&0u64.to_le_bytes());
    entry.extend_from_slice(&SETUP_RNG_SEED.to_le_bytes());
    entry.extend_from_slice(&(RNG_SEED_LEN as u32).to_le_bytes());
    entry.extend_from_slice(&seed);
    mem.write_slice(&entry, GuestAddress(SETUP_DATA_START))
        .map_err(|e| BootError::RngSeed(e.to_string()))?;
    Ok(SETUP_DATA_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn zero_page_has_the_command_line_and_memory_map() {
        let size = 64 << 20;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let mut cmdline = Cmdline::new(256).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        let kernel = LoadedKernel {
            entry: GuestAddress(HIMEM_START),
            setup_header: None,
        };
        write_boot_data(&mem, &kernel, &cmdline, size).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
        assert_eq!(params.e820_entries, 2);
        let second = params.e820_table[1];
        assert_eq!(
            ({ second.addr }, { second.size }),
            (HIMEM_START, size - HIMEM_START)
        );
        let mut text = [0u8; 13];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0");

        // One setup_data entry: a 32-byte RNG seed, different on every boot.
        assert_eq!({ params.hdr.setup_data }, SETUP_DATA_START);
        let header: [u32; 4] = mem.read_obj(GuestAddress(SETUP_DATA_START)).unwrap();
        assert_eq!(header, [0, 0, SETUP_RNG_SEED, RNG_SEED_LEN as u32]);
        let seed = |mem: &GuestMemoryMmap| {
            let mut seed = [0u8; RNG_SEED_LEN];
            mem.read_slice(&mut seed, GuestAddress(SETUP_DATA_START + 16))
                .unwrap();
            seed
        };
        let first = seed(&mem);
        write_boot_data(&mem, &kernel, &cmdline, size).unwrap();
        assert_ne!(first, seed(&mem), "a fresh seed per boot");
        assert_ne!(first, [0; RNG_SEED_LEN]);
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![0x42u8; 8192]).unwrap();
        let err = load_kernel(&mem, file.path()).unwrap_err();
        assert!(
            err.to_string().contains("ELF vmlinux or a bzImage"),
            "{err}"
        );
    }
}
