//! The host API to the full guest's files, shell commands and contexts,
//! through the namespace sandbox (needs root).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use cellbox::guest::{CommandOptions, GuestClient, GuestExecutor, Stream};
use cellbox::{Error, Executor, Language, RunOptions};
use cellbox_tests::namespace_session;

/// The guest connection of a sandbox, cloned so that cells can run too.
fn client(sandbox: &cellbox::NamespaceExecutor) -> GuestClient {
    sandbox.guest().expect("a connected guest").clone()
}

#[tokio::test]
async fn files_written_and_read_from_the_host_and_from_cells() {
    let mut sandbox = namespace_session().await;
    let guest = client(&sandbox);

    guest
        .write_file("/home/user/notes/hello.txt", b"hello\n")
        .await
        .unwrap();
    assert_eq!(
        guest.read_file("/home/user/notes/hello.txt").await.unwrap(),
        b"hello\n"
    );
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3 << 20 | 7).collect();
    guest
        .write_file("/home/user/bytes.bin", &bytes)
        .await
        .unwrap();
    assert_eq!(
        guest.read_file("/home/user/bytes.bin").await.unwrap(),
        bytes
    );
    guest.write_file("/home/user/empty", b"").await.unwrap();
    assert_eq!(guest.read_file("/home/user/empty").await.unwrap(), b"");

    let stat = guest.stat("/home/user/bytes.bin").await.unwrap();
    assert_eq!(
        (stat.name.as_str(), stat.size),
        ("bytes.bin", bytes.len() as u64)
    );
    assert!(!stat.is_dir);
    assert!(guest.exists("/home/user/notes").await.unwrap());
    assert!(!guest.exists("/home/user/missing").await.unwrap());
    assert!(matches!(
        guest.read_file("/home/user/missing").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        guest.read_file("/home/user/notes").await,
        Err(Error::InvalidArgument(_))
    ));

    guest.make_dir("/home/user/a/b/c").await.unwrap();
    guest.make_dir("/home/user/a/b/c").await.unwrap();
    assert!(guest.stat("/home/user/a/b/c").await.unwrap().is_dir);
    guest
        .rename("/home/user/notes/hello.txt", "/home/user/a/hello.txt")
        .await
        .unwrap();
    let names: Vec<String> = guest
        .list_dir("/home/user/a")
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.name)
        .collect();
    assert_eq!(names, ["b", "hello.txt"]);
    guest.remove("/home/user/a").await.unwrap();
    assert!(!guest.exists("/home/user/a").await.unwrap());
    // Removing what is not there is no error (`rm -rf`, as E2B's envd).
    guest.remove("/home/user/a").await.unwrap();
    assert!(matches!(
        guest.list_dir("/home/user/nowhere").await,
        Err(Error::NotFound(_))
    ));

    // Cells and the API see the same files.
    sandbox
        .run("open('/home/user/x.txt', 'w').write('hi')")
        .await
        .unwrap();
    assert_eq!(guest.read_file("/home/user/x.txt").await.unwrap(), b"hi");
    guest
        .write_file("/home/user/y.txt", b"from the host")
        .await
        .unwrap();
    let read = sandbox
        .run("open('/home/user/y.txt').read()")
        .await
        .unwrap();
    assert_eq!(read.text(), Some("'from the host'"));
    sandbox.close().await.unwrap();
}

/// The process's peak resident memory (VmHWM) in bytes.
fn peak_memory() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

/// Writes `len` bytes of a pattern that differs from chunk to chunk.
fn write_pattern(path: &std::path::Path, len: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = len;
    let mut block = vec![0u8; 1 << 16];
    while left > 0 {
        for byte in block.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
}

fn same_content(a: &std::path::Path, b: &std::path::Path) -> bool {
    let (mut a, mut b) = (
        std::io::BufReader::new(std::fs::File::open(a).unwrap()),
        std::io::BufReader::new(std::fs::File::open(b).unwrap()),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return b.read(&mut y).unwrap() == 0;
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

#[tokio::test]
async fn a_200_mb_upload_and_download_stream_byte_exact() {
    const LEN: u64 = (200 << 20) + 12_345;
    let sandbox = namespace_session().await;
    let guest = client(&sandbox);
    let dir = tempfile::tempdir().unwrap();
    let (source, back) = (dir.path().join("source.bin"), dir.path().join("back.bin"));
    write_pattern(&source, LEN);

    // Reset the peak to what is resident now (clear_refs 5), then measure.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = peak_memory();
    let started = Instant::now();
    assert_eq!(
        guest.upload(&source, "/home/user/big.bin").await.unwrap(),
        LEN
    );
    let uploaded = started.elapsed();
    assert_eq!(guest.stat("/home/user/big.bin").await.unwrap().size, LEN);
    let started = Instant::now();
    assert_eq!(
        guest.download("/home/user/big.bin", &back).await.unwrap(),
        LEN
    );
    let downloaded = started.elapsed();
    let growth = peak_memory().saturating_sub(before);
    eprintln!(
        "200 MB: upload {uploaded:?}, download {downloaded:?}, peak memory grew {} MiB",
        growth >> 20
    );
    assert!(
        growth < 64 << 20,
        "the transfer held {} MiB at once",
        growth >> 20
    );
    assert!(same_content(&source, &back), "the round trip changed bytes");

    assert!(matches!(
        guest
            .download("/home/user/missing.bin", dir.path().join("missing"))
            .await,
        Err(Error::NotFound(_))
    ));
    assert!(!dir.path().join("missing").exists());
}

#[tokio::test]
async fn commands_run_in_the_foreground_and_the_background() {
    let sandbox = namespace_session().await;
    let guest = client(&sandbox);

    let mut streamed = Vec::new();
    let hi = guest
        .run_command(
            "echo hi",
            &CommandOptions::default(),
            &mut |stream, text| streamed.push((stream, text.to_string())),
        )
        .await
        .unwrap();
    assert_eq!((hi.stdout.as_str(), hi.exit_code), ("hi\n", 0));
    assert!(hi.success());
    assert_eq!(streamed, [(Stream::Stdout, "hi\n".to_string())]);

    let options = CommandOptions::default().cwd("/tmp").env("FOO", "bar");
    let failed = guest
        .run_command(
            "echo $FOO; pwd; echo oops >&2; exit 3",
            &options,
            &mut |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(failed.stdout, "bar\n/tmp\n");
    assert_eq!(failed.stderr, "oops\n");
    assert_eq!(failed.exit_code, 3);

    let started = Instant::now();
    let timed_out = guest
        .run_command(
            "sleep 30",
            &CommandOptions::default().timeout(Duration::from_secs(1)),
            &mut |_, _| {},
        )
        .await;
    assert!(
        matches!(
            timed_out,
            Err(Error::Timeout {
                restarted: false,
                ..
            })
        ),
        "{timed_out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(guest.list_commands().await.unwrap().is_empty(), "killed");

    let cat = guest
        .start_command("cat", &CommandOptions::default())
        .await
        .unwrap();
    cat.send_stdin(b"abc").await.unwrap();
    cat.close_stdin().await.unwrap();
    let echoed = cat.wait().await.unwrap();
    assert_eq!((echoed.stdout.as_str(), echoed.exit_code), ("abc", 0));

    let sleeper = guest
        .start_command("sleep 100", &CommandOptions::default())
        .await
        .unwrap();
    let running = guest.list_commands().await.unwrap();
    assert!(
        running
            .iter()
            .any(|c| c.pid == sleeper.pid() && c.cmd == "sleep 100"),
        "{running:?}"
    );
    let started = Instant::now();
    sleeper.kill().await.unwrap();
    let killed = sleeper.wait().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(killed.exit_code, 128 + 9, "SIGKILL");
    assert!(guest.list_commands().await.unwrap().is_empty());
    assert!(matches!(
        guest.kill_command(1_000_000).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn contexts_keep_separate_state() {
    let sandbox = namespace_session().await;
    let guest = client(&sandbox);
    let run = |context: String, code: &'static str| {
        let guest = guest.clone();
        async move {
            guest
                .execute(
                    &context,
                    code,
                    &RunOptions::default(),
                    Duration::from_secs(60),
                    &mut |_| {},
                )
                .await
        }
    };

    let first = guest.create_context(None, Language::Python).await.unwrap();
    let second = guest
        .create_context(Some("/tmp"), Language::Python)
        .await
        .unwrap();
    assert_eq!(
        (first.cwd.as_str(), second.cwd.as_str()),
        ("/home/user", "/tmp")
    );
    let ids: Vec<String> = guest
        .list_contexts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(ids.contains(&first.id) && ids.contains(&second.id) && ids.contains(&"default".into()));

    run(first.id.clone(), "secret = 42").await.unwrap();
    let there = run(first.id.clone(), "secret").await.unwrap();
    assert_eq!(there.text(), Some("42"));
    let elsewhere = run(second.id.clone(), "import os; os.getcwd()")
        .await
        .unwrap();
    assert_eq!(elsewhere.text(), Some("'/tmp'"));
    let missing = run(second.id.clone(), "secret").await.unwrap();
    assert_eq!(missing.error.map(|e| e.name).as_deref(), Some("NameError"));

    guest.restart_context(&first.id).await.unwrap();
    let cleared = run(first.id.clone(), "secret").await.unwrap();
    assert_eq!(cleared.error.map(|e| e.name).as_deref(), Some("NameError"));

    guest.remove_context(&second.id).await.unwrap();
    assert!(matches!(
        run(second.id.clone(), "1").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        guest.remove_context(&second.id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        guest.restart_context("no-such-context").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        guest
            .create_context(Some("/no/such/folder"), Language::Python)
            .await,
        Err(Error::NotFound(_))
    ));
}
