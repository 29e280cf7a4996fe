//! Progress reports for long work (artefact builds take minutes).

use std::fmt;
use std::sync::Arc;

/// Receives one line per step of long-running work. Every line is also
/// logged with `tracing` at info level (target `cellbox::progress`).
///
/// ```
/// let progress = cellbox::Progress::new(|line| eprintln!("{line}"));
/// progress.report("building the guest image");
/// ```
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<ProgressFn>>);

type ProgressFn = dyn Fn(&str) + Send + Sync;

impl Progress {
    /// Progress that calls `f` for each line.
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Progress(Some(Arc::new(f)))
    }

    /// Reports one line.
    pub fn report(&self, line: &str) {
        tracing::info!(target: "cellbox::progress", "{line}");
        if let Some(f) = &self.0 {
            f(line);
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(callback)"
        } else {
            "Progress(log only)"
        })
    }
}
