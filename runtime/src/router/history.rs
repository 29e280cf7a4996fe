//! The default context's cells since its last restart: their `def`,
//! `class` and `import` statements run again wherever its state is carried
//! ([`super::state`]), before the pickled values are loaded.

use std::collections::VecDeque;

/// Most bytes of cells kept; past it the oldest cells go.
const MAX_BYTES: usize = 4 << 20;

/// The cells, oldest first, at most [`MAX_BYTES`] of them.
#[derive(Debug, Default, Clone)]
pub struct History {
    cells: VecDeque<String>,
    bytes: usize,
}

impl History {
    /// A history of `cells` (the oldest dropped if they are too many).
    pub fn of(cells: impl IntoIterator<Item = String>) -> History {
        let mut history = History::default();
        for cell in cells {
            history.push(cell);
        }
        history
    }

    /// Keeps `cell`.
    pub fn push(&mut self, cell: String) {
        self.bytes += cell.len();
        self.cells.push_back(cell);
        while self.bytes > MAX_BYTES {
            match self.cells.pop_front() {
                Some(oldest) => self.bytes -= oldest.len(),
                None => break,
            }
        }
    }

    /// Forgets every cell (the state they made is gone).
    pub fn clear(&mut self) {
        self.cells.clear();
        self.bytes = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The cells as a JSON array.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.cells).unwrap_or_else(|_| b"[]".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_cells_go_past_the_limit() {
        let big = "x".repeat(MAX_BYTES / 2);
        let history = History::of([
            "def f(): pass".to_string(),
            big.clone(),
            big.clone(),
            "y = 1".to_string(),
        ]);
        assert_eq!(history.cells.len(), 2, "the first two went");
        assert_eq!(history.cells[1], "y = 1");
        assert_eq!(history.bytes, big.len() + 5);
        assert!(history.to_json().starts_with(b"[\"xxx"));
    }
}
