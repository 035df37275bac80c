//! Repairs that only tests make: they put a state dir in the shape a restored
//! backup or an older release would leave, which no command does on purpose.
//! For the SQLite store in a state directory.

use std::path::Path;

use super::{sqlite, JournalError};

/// Sets `sink`'s cursor to `pos` without bumping its generation, as restoring an
/// older copy of the state dir would (an operator's reset bumps it). Returns whether
/// the sink had a cursor.
pub fn restore_cursor(state_dir: &Path, sink: &str, pos: i64) -> Result<bool, JournalError> {
    sqlite::restore_cursor(state_dir, sink, pos)
}
