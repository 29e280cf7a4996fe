//! A sandbox's log: what happened to it and what was asked of it (started,
//! cells, commands, files, errors), with levels and timestamps, as E2B's
//! `GET /sandboxes/{id}/logs` returns it. Bounded: the oldest entries go.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::lock;

/// Entries kept per sandbox.
const KEPT: usize = 2000;

/// How serious an entry is (E2B's `LogLevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// E2B's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// From E2B's name.
    pub fn parse(name: &str) -> Option<Level> {
        Some(match name {
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" => Level::Warn,
            "error" => Level::Error,
            _ => return None,
        })
    }
}

/// One entry.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Its position in the log (increasing; a cursor for followers).
    pub seq: u64,
    pub timestamp: SystemTime,
    pub level: Level,
    pub message: String,
}

impl LogEntry {
    /// Milliseconds since the Unix epoch.
    pub fn millis(&self) -> u64 {
        self.timestamp
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The log; cheap to clone, every clone is the same log.
#[derive(Debug, Clone, Default)]
pub struct SandboxLog(Arc<Mutex<Entries>>);

#[derive(Debug, Default)]
struct Entries {
    next: u64,
    entries: VecDeque<LogEntry>,
}

impl SandboxLog {
    /// Adds an entry (the oldest goes past [`KEPT`]).
    pub fn push(&self, level: Level, message: impl Into<String>) {
        let mut log = lock(&self.0);
        if log.entries.len() == KEPT {
            log.entries.pop_front();
        }
        let seq = log.next;
        log.next += 1;
        log.entries.push_back(LogEntry {
            seq,
            timestamp: SystemTime::now(),
            level,
            message: message.into(),
        });
    }

    /// Entries at `level` or above, oldest first, from `after` (a seq) on.
    pub fn entries(&self, level: Level, after: Option<u64>) -> Vec<LogEntry> {
        lock(&self.0)
            .entries
            .iter()
            .filter(|e| e.level >= level && after.is_none_or(|a| e.seq > a))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_filtered_by_level_and_cursor() {
        let log = SandboxLog::default();
        for i in 0..KEPT + 10 {
            log.push(
                if i % 2 == 0 {
                    Level::Info
                } else {
                    Level::Error
                },
                format!("{i}"),
            );
        }
        let all = log.entries(Level::Debug, None);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].message, "10", "the oldest went");
        let errors = log.entries(Level::Error, None);
        assert!(errors.iter().all(|e| e.level == Level::Error));
        assert_eq!(errors.len(), KEPT / 2);
        let last = all.last().unwrap().seq;
        assert!(log.entries(Level::Debug, Some(last)).is_empty());
        log.push(Level::Warn, "new");
        assert_eq!(log.entries(Level::Debug, Some(last))[0].message, "new");
        assert_eq!(Level::parse("warn"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
    }
}
