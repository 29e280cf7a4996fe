//! Output of user processes on its way to the host. A thread per pipe reads
//! it in chunks into a bounded channel, so a process printing faster than the
//! host reads waits on its full pipe; and each cell or command may print at
//! most a budget ([`DEFAULT_LIMIT`] unless `--output-limit` says otherwise),
//! past which its output is cut with a marker and dropped (still read, so the
//! process does not hang).

use std::io::Read;
use std::sync::OnceLock;
use std::sync::mpsc::SyncSender;

/// What one cell or command may print unless configured otherwise: as the
/// fast path.
pub const DEFAULT_LIMIT: usize = 8 << 20;
/// Bytes read from a pipe at a time.
pub const CHUNK: usize = 64 * 1024;
/// Chunks (or events) waiting between a pipe's reader and the sender.
pub const QUEUE: usize = 16;

static LIMIT: OnceLock<usize> = OnceLock::new();

/// Sets, once, what each cell and command may print (`--output-limit`).
pub fn set_limit(bytes: usize) {
    let _ = LIMIT.set(bytes);
}

/// What each cell and command may print.
pub fn limit() -> usize {
    LIMIT.get().copied().unwrap_or(DEFAULT_LIMIT)
}

/// Starts a thread that reads `pipe` until it ends, sending each chunk
/// through `wrap` to `tx` (waiting while `tx` is full); it stops early when
/// the receiver is gone.
pub fn forward<R, T>(
    mut pipe: R,
    tx: SyncSender<T>,
    wrap: impl Fn(&[u8]) -> T + Send + 'static,
) -> std::io::Result<()>
where
    R: Read + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().spawn(move || {
        let mut buffer = vec![0u8; CHUNK];
        while let Ok(n @ 1..) = pipe.read(&mut buffer) {
            if tx.send(wrap(&buffer[..n])).is_err() {
                break;
            }
        }
    })?;
    Ok(())
}

/// What a cell or command may still print.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: usize,
    exhausted: bool,
}

impl Budget {
    /// A budget of [`limit()`] bytes.
    pub fn new() -> Budget {
        Budget::of(limit())
    }

    /// A budget of `limit` bytes.
    pub fn of(limit: usize) -> Budget {
        Budget {
            limit,
            used: 0,
            exhausted: false,
        }
    }

    /// The marker that ends output cut at the limit.
    pub fn marker(&self) -> String {
        format!("\n[cellbox: output truncated at {} bytes]\n", self.limit)
    }

    /// How much of `len` more bytes may go out: all of it, the first `n`
    /// (the caller appends [`Budget::marker`]), or none.
    fn admit(&mut self, len: usize) -> Admit {
        if self.exhausted {
            return Admit::Nothing;
        }
        if self.used.saturating_add(len) <= self.limit {
            self.used += len;
            return Admit::All;
        }
        self.exhausted = true;
        Admit::Cut(self.limit - self.used)
    }

    /// `text` as far as the budget allows (cut at a character boundary,
    /// with the marker), or `None` once it is spent.
    pub fn text(&mut self, mut text: String) -> Option<String> {
        match self.admit(text.len()) {
            Admit::All => Some(text),
            Admit::Cut(mut end) => {
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push_str(&self.marker());
                Some(text)
            }
            Admit::Nothing => None,
        }
    }

    /// `bytes` as far as the budget allows (with the marker), or `None`.
    pub fn bytes(&mut self, mut bytes: Vec<u8>) -> Option<Vec<u8>> {
        match self.admit(bytes.len()) {
            Admit::All => Some(bytes),
            Admit::Cut(end) => {
                bytes.truncate(end);
                bytes.extend_from_slice(self.marker().as_bytes());
                Some(bytes)
            }
            Admit::Nothing => None,
        }
    }

    /// Whether something of `len` bytes (a rich result, whole or not at all)
    /// fits; once one does not, the budget is spent and the marker is due.
    pub fn whole(&mut self, len: usize) -> Option<bool> {
        match self.admit(len) {
            Admit::All => Some(true),
            Admit::Cut(_) => Some(false),
            Admit::Nothing => None,
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new()
    }
}

enum Admit {
    All,
    Cut(usize),
    Nothing,
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn text_past_the_limit_is_cut_with_a_marker_then_dropped() {
        let mut budget = Budget::of(10);
        assert_eq!(budget.text("12345".into()).as_deref(), Some("12345"));
        let cut = budget.text("6789éabc".into()).unwrap();
        assert_eq!(cut, format!("6789{}", budget.marker()), "not inside the é");
        assert_eq!(budget.text("more".into()), None);
        assert_eq!(budget.bytes(b"more".to_vec()), None);
    }

    #[test]
    fn bytes_are_cut_exactly_and_a_whole_result_either_fits_or_ends_the_budget() {
        let mut budget = Budget::of(4);
        let cut = budget.bytes(b"abcdef".to_vec()).unwrap();
        assert!(cut.starts_with(b"abcd\n[cellbox: output truncated at 4 bytes]"));
        let mut results = Budget::of(100);
        assert_eq!(results.whole(60), Some(true));
        assert_eq!(results.whole(60), Some(false));
        assert_eq!(results.whole(1), None);
    }
}
