//! The host side of cellbox-python's interface: the store's state and the
//! `cellbox.emit` import through which the interpreter reports a cell's events.

use tokio::sync::mpsc::UnboundedSender;
use wasmtime::{Caller, Extern, Linker, StoreLimits};
use wasmtime_wasi::p1::WasiP1Ctx;

use super::disk::DiskBudget;
use crate::event::Event;
use crate::execution::{CellResult, ExecutionError};

/// Event kinds of `cellbox.emit`, as numbered in `python-wasm/cellbox_driver.py`.
const STDOUT: i32 = 1;
const STDERR: i32 = 2;
const RESULT: i32 = 3;
const ERROR: i32 = 4;

/// How much unrouted output (emitted while no cell runs) is kept for errors.
const STRAY_LIMIT: usize = 16 * 1024;

/// Per-store state.
pub(crate) struct HostState {
    pub wasi: WasiP1Ctx,
    pub limits: StoreLimits,
    /// The scratch folder's size limit; `None` while pre-initialising.
    pub disk: Option<DiskBudget>,
    /// Where the running cell's events go; `None` between cells.
    pub cell: Option<CellSink>,
    /// Output produced outside a cell (during initialisation), for error messages.
    pub stray: String,
}

impl HostState {
    pub fn new(wasi: WasiP1Ctx, limits: StoreLimits, disk: Option<DiskBudget>) -> Self {
        HostState {
            wasi,
            limits,
            disk,
            cell: None,
            stray: String::new(),
        }
    }

    fn emit(&mut self, kind: i32, payload: &[u8]) {
        let Some(cell) = self.cell.as_mut() else {
            if self.stray.len() < STRAY_LIMIT {
                self.stray.push_str(&String::from_utf8_lossy(payload));
            }
            return;
        };
        match decode(kind, payload) {
            Some(event) => cell.send(event),
            None => cell.send(Event::Stderr(format!(
                "[cellbox: ignored a malformed message (kind {kind}, {} bytes) from the interpreter]\n",
                payload.len()
            ))),
        }
    }
}

fn decode(kind: i32, payload: &[u8]) -> Option<Event> {
    match kind {
        STDOUT => Some(Event::Stdout(String::from_utf8_lossy(payload).into_owned())),
        STDERR => Some(Event::Stderr(String::from_utf8_lossy(payload).into_owned())),
        RESULT => serde_json::from_slice::<CellResult>(payload)
            .ok()
            .map(|r| Event::Result(Box::new(r))),
        ERROR => serde_json::from_slice::<ExecutionError>(payload)
            .ok()
            .map(Event::Error),
        _ => None,
    }
}

/// The running cell's event channel, behind its output budget.
pub(crate) struct CellSink {
    events: UnboundedSender<Event>,
    budget: OutputBudget,
}

impl CellSink {
    pub fn new(events: UnboundedSender<Event>, output_limit: usize) -> Self {
        CellSink {
            events,
            budget: OutputBudget::new(output_limit),
        }
    }

    fn send(&mut self, event: Event) {
        if let Some(event) = self.budget.admit(event) {
            // The receiver is gone only when the cell was abandoned.
            let _ = self.events.send(event);
        }
    }
}

/// Caps the bytes a cell may send to the host. The text that crosses the cap
/// is cut with a marker; after that, output and results are dropped.
#[derive(Debug)]
pub(crate) struct OutputBudget {
    limit: usize,
    used: usize,
    exhausted: bool,
}

impl OutputBudget {
    pub fn new(limit: usize) -> Self {
        OutputBudget {
            limit,
            used: 0,
            exhausted: false,
        }
    }

    fn marker(&self) -> String {
        format!("\n[cellbox: output truncated at {} bytes]\n", self.limit)
    }

    pub fn admit(&mut self, event: Event) -> Option<Event> {
        let size = match &event {
            Event::Stdout(t) | Event::Stderr(t) => t.len(),
            Event::Result(r) => serde_json::to_vec(r).map_or(usize::MAX, |v| v.len()),
            // The exception is what the caller most needs to see: always delivered.
            Event::Error(_) | Event::End { .. } => return Some(event),
        };
        if self.exhausted {
            return None;
        }
        if self.used.saturating_add(size) <= self.limit {
            self.used += size;
            return Some(event);
        }
        self.exhausted = true;
        let room = self.limit - self.used;
        let cut = |text: String| {
            let mut end = room.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}{}", &text[..end], self.marker())
        };
        Some(match event {
            Event::Stdout(text) => Event::Stdout(cut(text)),
            Event::Stderr(text) => Event::Stderr(cut(text)),
            _ => Event::Stderr(self.marker()),
        })
    }
}

/// Adds `cellbox.emit` to the linker. Bad pointers from the guest are ignored
/// with a note, never trusted.
pub(crate) fn add_emit(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "cellbox",
        "emit",
        |mut caller: Caller<'_, HostState>, kind: i32, ptr: i32, len: i32| {
            let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                return;
            };
            let (data, state) = memory.data_and_store_mut(&mut caller);
            let range =
                (ptr as u32 as usize)..(ptr as u32 as usize).saturating_add(len as u32 as usize);
            // The memory and the state are disjoint borrows: no copy needed.
            state.emit(kind, data.get(range).unwrap_or(b"\xff"));
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_passes_output_under_the_limit() {
        let mut budget = OutputBudget::new(10);
        assert_eq!(
            budget.admit(Event::Stdout("hello".into())),
            Some(Event::Stdout("hello".into()))
        );
        assert_eq!(
            budget.admit(Event::Stderr("abcde".into())),
            Some(Event::Stderr("abcde".into()))
        );
    }

    #[test]
    fn budget_cuts_at_the_limit_with_a_marker_then_drops() {
        let mut budget = OutputBudget::new(8);
        budget.admit(Event::Stdout("12345".into()));
        let Some(Event::Stdout(cut)) = budget.admit(Event::Stdout("6789abc".into())) else {
            panic!("expected a cut chunk");
        };
        assert!(cut.starts_with("678\n[cellbox: output truncated at 8 bytes]"));
        assert_eq!(budget.admit(Event::Stdout("more".into())), None);
        let error = Event::Error(ExecutionError {
            name: "E".into(),
            value: String::new(),
            traceback: String::new(),
        });
        assert_eq!(
            budget.admit(error.clone()),
            Some(error),
            "errors still arrive"
        );
    }

    #[test]
    fn budget_cuts_on_a_char_boundary() {
        let mut budget = OutputBudget::new(3);
        let Some(Event::Stdout(cut)) = budget.admit(Event::Stdout("éé".into())) else {
            panic!("expected a cut chunk");
        };
        assert!(cut.starts_with("é\n"));
    }

    #[test]
    fn decode_rejects_garbage() {
        assert_eq!(decode(RESULT, b"{not json"), None);
        assert_eq!(decode(ERROR, b"[]"), None);
        assert_eq!(decode(99, b"x"), None);
        assert_eq!(
            decode(STDOUT, b"a\xffb"),
            Some(Event::Stdout("a\u{fffd}b".into()))
        );
        let Some(Event::Result(result)) = decode(RESULT, br#"{"text":"2","is_main_result":true}"#)
        else {
            panic!("expected a result");
        };
        assert!(result.is_main_result);
    }
}
