//! A session's state in a host folder, what snapshots and forks keep:
//! `state.pickle` (the default context's globals, see [`super::state`]),
//! `history.json` (its cells, for their definitions) and `home/` (its home
//! folder). Saved from wherever the session runs; loaded into the same kind
//! of backend (the fast path, or the heavy one).

use std::path::Path;

use super::HybridExecutor;
use super::history::History;
use super::home::{self, Bounded, Budget};
use super::state;
use crate::error::{Error, Result};

const STATE: &str = "state.pickle";
const HISTORY: &str = "history.json";
const HOME: &str = "home";

fn io(what: &Path, e: std::io::Error) -> Error {
    Error::io(format!("writing {}", what.display()), e)
}

/// What [`HybridExecutor::save_state`] saved.
#[derive(Debug)]
pub struct Saved {
    /// Whether the default context ran on the heavy backend (where it must
    /// be loaded again).
    pub heavy: bool,
    /// Its globals that do not pickle.
    pub dropped: Vec<String>,
}

impl HybridExecutor {
    /// Saves the default context into the empty host folder `dir`, taking
    /// at most what `budget` allows.
    pub async fn save_state(&mut self, dir: &Path, budget: &mut Budget) -> Result<Saved> {
        let home = dir.join(HOME);
        std::fs::create_dir(&home).map_err(|e| io(&home, e))?;
        let state = dir.join(STATE);
        let saved = match self.wasm.as_mut() {
            Some(wasm) => {
                let (local, dropped) = state::export_wasm(wasm).await?;
                let moved = std::fs::copy(&local, &state);
                let _ = std::fs::remove_file(&local);
                moved.map_err(|e| io(&state, e))?;
                home::between_host(wasm.home_dir(), &home, budget)?;
                Saved {
                    heavy: false,
                    dropped,
                }
            }
            None => {
                let heavy = self.heavy().await?;
                let file = tokio::fs::File::create(&state)
                    .await
                    .map_err(|e| io(&state, e))?;
                let mut out = Bounded {
                    inner: file,
                    budget: &mut *budget,
                };
                let exported = state::export_heavy(heavy.as_mut(), &mut out).await;
                budget.check()?;
                let dropped = exported?;
                home::from_guest(heavy.guest()?, &home, budget).await?;
                Saved {
                    heavy: true,
                    dropped,
                }
            }
        };
        let history_file = dir.join(HISTORY);
        std::fs::write(&history_file, self.history.to_json()).map_err(|e| io(&history_file, e))?;
        Ok(saved)
    }

    /// Loads a state saved by [`HybridExecutor::save_state`] into this new
    /// session (onto the heavy backend if `heavy`). Returns the names that
    /// could not be loaded.
    pub async fn load_state(&mut self, dir: &Path, heavy: bool) -> Result<Vec<String>> {
        let history_file = dir.join(HISTORY);
        let history = std::fs::read(&history_file)
            .map_err(|e| Error::io(format!("reading {}", history_file.display()), e))?;
        let cells: Vec<String> = serde_json::from_slice(&history)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", history_file.display())))?;
        let history = History::of(cells);
        let (state, home) = (dir.join(STATE), dir.join(HOME));
        if heavy {
            self.move_to_heavy("the snapshot was taken on the heavy backend")
                .await?;
        }
        let dropped = match self.wasm.as_mut() {
            Some(wasm) => {
                let unlimited = &mut Budget::new(u64::MAX, u64::MAX);
                home::between_host(&home, wasm.home_dir(), unlimited)?;
                state::import_wasm(wasm, &state, &history).await?
            }
            None => {
                let heavy = self.heavy().await?;
                home::to_guest(&home, heavy.guest()?).await?;
                state::import_heavy(heavy.as_mut(), &state, &history).await?
            }
        };
        self.history = history;
        Ok(dropped)
    }
}
