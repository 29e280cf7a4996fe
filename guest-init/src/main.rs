//! `guest-init`: PID 1 of the cellbox guest.
//!
//! ```text
//! guest-init (--fd N | --vsock PORT) [--python PATH] [--home DIR] [--max-processes N]
//!            [--namespace-root DIR --lower DIR... --upper DIR --work DIR [--volume HOST_DIR PATH]...
//!             [--id-base N | --uid-map MAP --gid-map MAP --disk-size BYTES]]
//!            [--user-cgroup-fd N]... [--user-cgroup-path FILE]... [--output-limit BYTES] [--nameserver ADDR] [--zygote-fd N]
//! guest-init --zygote DIR --lower DIR... --fd N
//! ```
//!
//! `--fd N` is the host connection (a Unix socket the launcher passed in);
//! `--vsock PORT` (the microVM) waits for the host to connect to that vsock
//! port. In a VM the kernel passes the words after `--` on its command line.
//! With `--namespace-root`, guest-init is the namespace sandbox's launcher:
//! it mounts the layers on DIR, makes the namespaces (see [`launch`]) and,
//! as their PID 1, pivots into DIR; as PID 1 it then forks the server and
//! reaps orphans until the server exits. In a microVM the server and all
//! it starts run in a control group with a memory limit below the VM's memory
//! and `--max-processes` (default 256); PID 1 stays outside it.
//! `--nameserver` (a microVM with a network card) writes `/etc/resolv.conf`.
//! `--zygote-fd` is a namespace sandbox's connection to the warm template its
//! Python kernels are forked from; `--zygote DIR` becomes that template (see
//! [`cellbox_guest_init::zygote`]), on the control socket `--fd N`.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::sync::Arc;

use cellbox_guest_init::contexts::Contexts;
use cellbox_guest_init::protocol::{BootClock, Language, WARM_MARK};
use cellbox_guest_init::zygote::Zygote;
use cellbox_guest_init::{confine, launch, output, pid1, server, transport};
use nix::unistd::{ForkResult, fork};

#[derive(Debug, Default)]
struct Args {
    fd: Option<i32>,
    vsock: Option<u32>,
    /// The namespace sandbox's root file system (`--namespace-root` & co).
    layers: Option<launch::Layers>,
    id_base: Option<u32>,
    /// `--uid-map`, `--gid-map`, `--disk-size`: started by an ordinary user.
    rootless: Option<launch::Rootless>,
    python: Option<String>,
    home: Option<String>,
    max_processes: Option<u32>,
    user_cgroup_fds: Vec<i32>,
    /// `--user-cgroup-path`: the user groups' `cgroup.procs`, opened by the
    /// sandbox's PID 1 itself (rootless: see `launch.rs`).
    user_cgroup_paths: Vec<String>,
    output_limit: Option<usize>,
    nameserver: Option<std::net::IpAddr>,
    zygote_fd: Option<i32>,
    /// `--warm` (a microVM to be snapshotted): start the default Python
    /// kernel with the data stack imported before waiting for the host.
    warm: bool,
    /// `--zygote DIR`: become the warm template, the `--lower`s mounted on DIR.
    zygote_root: Option<String>,
    lowers: Vec<String>,
}

/// Processes (and threads) user code may have at once in a microVM, as in
/// the namespace sandbox.
const DEFAULT_MAX_PROCESSES: u32 = 256;

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let (mut root, mut lowers, mut upper, mut work) = (None, Vec::new(), None, None);
    let mut volumes = Vec::new();
    let (mut uid_map, mut gid_map, mut disk_size) = (None, None, None);
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let mut value = || words.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--fd" => args.fd = Some(value()?.parse().map_err(|_| "--fd takes a number")?),
            "--vsock" => {
                args.vsock = Some(
                    value()?
                        .parse()
                        .map_err(|_| "--vsock takes a port number")?,
                )
            }
            "--namespace-root" => root = Some(value()?),
            "--lower" => lowers.push(value()?),
            "--zygote" => args.zygote_root = Some(value()?),
            "--zygote-fd" => {
                args.zygote_fd = Some(value()?.parse().map_err(|_| "--zygote-fd takes a number")?)
            }
            "--warm" => args.warm = true,
            "--upper" => upper = Some(value()?),
            "--volume" => {
                let source = value()?;
                let target = value()?;
                volumes.push(launch::Volume::new(source, target)?);
            }
            "--work" => work = Some(value()?),
            "--id-base" => {
                args.id_base = Some(value()?.parse().map_err(|_| "--id-base takes a number")?)
            }
            "--uid-map" => uid_map = Some(value()?),
            "--gid-map" => gid_map = Some(value()?),
            "--disk-size" => {
                disk_size = Some(value()?.parse().map_err(|_| "--disk-size takes bytes")?)
            }
            "--python" => args.python = Some(value()?),
            "--home" => args.home = Some(value()?),
            "--max-processes" => {
                args.max_processes = Some(
                    value()?
                        .parse()
                        .map_err(|_| "--max-processes takes a number")?,
                )
            }
            "--user-cgroup-path" => args.user_cgroup_paths.push(value()?),
            "--user-cgroup-fd" => args.user_cgroup_fds.push(
                value()?
                    .parse()
                    .map_err(|_| "--user-cgroup-fd takes a number")?,
            ),
            "--output-limit" => {
                args.output_limit = Some(
                    value()?
                        .parse()
                        .map_err(|_| "--output-limit takes a number of bytes")?,
                )
            }
            "--nameserver" => {
                args.nameserver = Some(
                    value()?
                        .parse()
                        .map_err(|_| "--nameserver takes an IP address")?,
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.fd.is_some() == args.vsock.is_some() {
        return Err("give exactly one of --fd N and --vsock PORT".into());
    }
    if args.zygote_root.is_some() {
        return match (args.fd, lowers.is_empty(), root) {
            (Some(_), false, None) => {
                args.lowers = lowers;
                Ok(args)
            }
            _ => Err("--zygote goes with --lower and --fd only".into()),
        };
    }
    args.rootless = match (uid_map, gid_map, disk_size, args.id_base) {
        (Some(uid_map), Some(gid_map), Some(disk_size), None) => Some(launch::Rootless {
            uid_map,
            gid_map,
            disk_size,
        }),
        (None, None, None, _) => None,
        _ => {
            return Err(
                "--uid-map, --gid-map and --disk-size go together, without --id-base".into(),
            );
        }
    };
    args.layers = match (root, upper, work) {
        (Some(root), Some(upper), Some(work)) if !lowers.is_empty() => Some(launch::Layers {
            root,
            lowers,
            upper,
            work,
            volumes,
        }),
        (None, None, None) if lowers.is_empty() && volumes.is_empty() => None,
        _ => return Err("--namespace-root goes with --lower, --upper and --work".into()),
    };
    Ok(args)
}

fn main() -> ExitCode {
    let init_started_ms = BootClock::now_ms();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("guest-init: {e}");
            return ExitCode::from(2);
        }
    };
    if let (Some(root), Some(fd)) = (&args.zygote_root, args.fd) {
        let e = cellbox_guest_init::zygote::exec_template(root, &args.lowers, fd);
        eprintln!("guest-init: starting the warm template failed: {e}");
        return ExitCode::from(3);
    }
    if let Some(bytes) = args.output_limit {
        output::set_limit(bytes);
    }
    if let Some(layers) = &args.layers {
        // Returns only in the sandbox's PID 1.
        let privilege = match &args.rootless {
            Some(rootless) => launch::Privilege::Rootless(rootless.clone()),
            None => launch::Privilege::Root {
                id_base: args.id_base.unwrap_or(launch::DEFAULT_ID_BASE),
            },
        };
        if let Err(e) = launch::enter_sandbox(layers, &privilege) {
            eprintln!("guest-init: starting the sandbox failed: {e}");
            return ExitCode::from(3);
        }
    }
    let is_pid1 = std::process::id() == 1;
    let passed_cgroup = || {
        let fds = args.user_cgroup_fds.iter();
        // SAFETY: the launcher passed these descriptors to us for our exclusive use.
        fds.map(|&fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
            .collect()
    };
    let setup = match &args.layers {
        Some(layers) => launch::open_user_cgroups(&args.user_cgroup_paths).and_then(|opened| {
            pid1::enter_namespace_root(&layers.root).map(|()| {
                let mut fds: Vec<std::os::fd::OwnedFd> = passed_cgroup();
                fds.extend(opened);
                fds
            })
        }),
        None if is_pid1 => pid1::mount_vm_basics().and_then(|()| {
            pid1::make_user_cgroup(args.max_processes.unwrap_or(DEFAULT_MAX_PROCESSES))
                .map(|fd| vec![fd])
        }),
        None => Ok(passed_cgroup()),
    };
    let user_cgroup = match setup {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("guest-init: setup failed: {e}");
            return ExitCode::from(3);
        }
    };
    if let Some(address) = args.nameserver
        && let Err(e) = pid1::set_nameserver(address)
    {
        eprintln!("guest-init: writing /etc/resolv.conf: {e}");
        return ExitCode::from(3);
    }
    if let Err(e) = confine::set_user_cgroup(user_cgroup) {
        eprintln!("guest-init: the user control group: {e}");
        return ExitCode::from(3);
    }
    // A microVM's PID 1 reports its boot milestones (in a namespace sandbox
    // the boot clock is the host's and says nothing about this guest).
    let boot = (is_pid1 && args.vsock.is_some()).then_some(init_started_ms);
    if !is_pid1 {
        return run_server(&args, None);
    }
    // SAFETY: guest-init is single-threaded here; the child only runs the server.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => run_server(&args, boot),
        Ok(ForkResult::Parent { child }) => {
            let code = pid1::reap_until(child);
            pid1::kill_everything();
            if args.layers.is_none() {
                pid1::power_off();
            }
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("guest-init: fork: {e}");
            ExitCode::from(3)
        }
    }
}

fn connect(args: &Args) -> std::io::Result<File> {
    match (args.fd, args.vsock) {
        // SAFETY: the launcher passed this descriptor to us for our exclusive use.
        (Some(fd), _) => Ok(unsafe { transport::from_fd(fd) }),
        (None, Some(port)) => transport::accept_vsock(port),
        (None, None) => Err(std::io::Error::other("no transport")),
    }
}

fn run_server(args: &Args, init_started_ms: Option<u64>) -> ExitCode {
    let boot = init_started_ms.map(|init_started_ms| BootClock {
        init_started_ms,
        listening_ms: 0, // set below
        hello_ms: 0,     // set when answering
    });
    // Shielded and filtered before any kernel starts: kernels inherit both.
    if let Err(e) = confine::shield_server() {
        eprintln!("guest-init: {e}");
        return ExitCode::from(3);
    }
    if let Err(e) = cellbox_guest_init::seccomp::install() {
        eprintln!("guest-init: {e}");
        return ExitCode::from(3);
    }
    let home = args.home.as_deref().unwrap_or("/home/user");
    let _ = std::fs::create_dir_all(home);
    let python = args.python.as_deref().unwrap_or("/usr/bin/python3");
    // SAFETY: the launcher passed this descriptor to us for our exclusive use.
    let zygote = args
        .zygote_fd
        .map(|fd| Zygote::new(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }));
    if args.warm {
        // SAFETY: no other thread exists yet in this process.
        unsafe { std::env::set_var("CELLBOX_PRELOAD", "1") };
    }
    let forks_kernels = zygote.is_some();
    let contexts = Arc::new(Contexts::new(python, zygote, home));
    if forks_kernels {
        // A forked kernel costs little: fork it now, while the host
        // connects, so that the first cell finds it ready (a cell that comes
        // sooner waits for it; one that fails is retried by the first cell).
        let contexts = contexts.clone();
        let _ = std::thread::Builder::new()
            .name("first-kernel".into())
            .spawn(move || contexts.start_kernel(Language::Python.default_context()));
    }
    if args.warm {
        if let Err(e) = contexts.start_kernel(Language::Python.default_context()) {
            eprintln!("guest-init: the warm kernel did not start: {e}");
            return ExitCode::from(3);
        }
        // The host snapshots the VM once it reads this on the console.
        eprintln!("{WARM_MARK}");
    }
    let boot = boot.map(|boot| BootClock {
        listening_ms: BootClock::now_ms(),
        ..boot
    });
    let ended = loop {
        let stream = match connect(args) {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("guest-init: cannot reach the host: {e}");
                return ExitCode::from(3);
            }
        };
        let ended = server::serve(stream, contexts.clone(), boot);
        // A microVM's guest-init waits for the host again: a copy of the VM
        // (restored from a snapshot taken while the host was connected)
        // starts with that connection reset, its kernels still running.
        if ended == server::Ended::Disconnected && boot.is_some() {
            continue;
        }
        break ended;
    };
    contexts.stop_all();
    match ended {
        server::Ended::Shutdown => ExitCode::SUCCESS,
        server::Ended::Disconnected => ExitCode::from(1),
    }
}
