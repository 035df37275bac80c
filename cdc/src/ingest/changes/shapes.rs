//! Schema changes: the columns of each captured table as pgcdc last journaled them,
//! compared with every Relation message, so that a change of shape (a column added,
//! dropped, renamed, retyped, a new key) becomes a `schema` event in stream order,
//! before the first change written under the new shape.
//!
//! Replay safety. The schema event takes an ordinal of its transaction, like a row
//! change, so whether it is emitted must not depend on anything more recent than the
//! position the stream resumes from: otherwise a replayed transaction would number
//! its changes differently and the journal would skip the wrong ones. A new shape is
//! therefore made durable only once its transaction is confirmed (the journal thread
//! writes it after the append that confirms the commit), and on reconnect the reader
//! forgets the shapes of transactions at or after the resume position ([`Shapes::rewind`]).
//! A crash between the confirm and the shape's write emits the schema event once more
//! (never fewer).

use std::collections::HashMap;

use pgcdc_schema::event::Column;
use pgcdc_schema::Lsn;

/// The shapes known per captured table (`schema.table` as `source.tables` names it).
#[derive(Debug, Default)]
pub(crate) struct Shapes {
    /// Per table: the durable shape (at `Lsn(0)`), then the shapes of transactions
    /// not yet known to be confirmed, in commit order.
    by_table: HashMap<String, Vec<(Lsn, Vec<Column>)>>,
}

/// What a Relation message means for the table's shape.
#[derive(Debug, PartialEq)]
pub(crate) enum Seen {
    /// Same columns as before: nothing to do.
    Same,
    /// First sight of the table: remember the shape (no event: nothing to compare).
    First,
    /// The columns changed from `previous`: emit a schema event and remember the shape.
    Changed { previous: Vec<Column> },
}

impl Shapes {
    /// Shapes as stored (durable), per table.
    pub(crate) fn from_durable(durable: HashMap<String, Vec<Column>>) -> Shapes {
        Shapes {
            by_table: durable
                .into_iter()
                .map(|(t, cols)| (t, vec![(Lsn(0), cols)]))
                .collect(),
        }
    }

    /// Compares `columns` with the table's current shape and, unless the same, takes
    /// them as its shape from the transaction committing at `at`.
    pub(crate) fn observe(&mut self, table: &str, at: Lsn, columns: &[Column]) -> Seen {
        let history = self.by_table.entry(table.to_owned()).or_default();
        let seen = match history.last() {
            None => Seen::First,
            Some((_, current)) if current.as_slice() == columns => return Seen::Same,
            Some((_, current)) => Seen::Changed {
                previous: current.clone(),
            },
        };
        // One entry per transaction: a table reshaped twice in one keeps the last.
        if history
            .last()
            .is_some_and(|(l, _)| *l == at && at != Lsn(0))
        {
            history.pop();
        }
        history.push((at, columns.to_vec()));
        seen
    }

    /// The stream resumes at `start`: transactions committing at or after it come
    /// again, so the shapes they brought are forgotten (they will be seen again).
    /// Everything before `start` is confirmed: each table keeps its latest as durable.
    pub(crate) fn rewind(&mut self, start: Lsn) {
        self.by_table.retain(|_, history| {
            history.retain(|(at, _)| *at < start);
            if let Some(last) = history.pop() {
                history.clear();
                history.push((Lsn(0), last.1));
            }
            !history.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<Column> {
        names
            .iter()
            .map(|n| Column {
                name: (*n).into(),
                type_name: "int4".into(),
                key: *n == "id",
            })
            .collect()
    }

    #[test]
    fn first_sight_then_same_then_changed() {
        let mut s = Shapes::default();
        assert_eq!(s.observe("public.t", Lsn(10), &cols(&["id"])), Seen::First);
        assert_eq!(s.observe("public.t", Lsn(20), &cols(&["id"])), Seen::Same);
        assert_eq!(
            s.observe("public.t", Lsn(30), &cols(&["id", "a"])),
            Seen::Changed {
                previous: cols(&["id"])
            }
        );
    }

    #[test]
    fn a_replayed_transaction_sees_its_change_again() {
        let mut s = Shapes::from_durable(HashMap::from([("public.t".into(), cols(&["id"]))]));
        assert!(matches!(
            s.observe("public.t", Lsn(30), &cols(&["id", "a"])),
            Seen::Changed { .. }
        ));
        // Reconnect before the commit at 30 was confirmed: it comes again.
        s.rewind(Lsn(25));
        assert_eq!(
            s.observe("public.t", Lsn(30), &cols(&["id", "a"])),
            Seen::Changed {
                previous: cols(&["id"])
            }
        );
        // Reconnect after it: the new shape is the durable one.
        s.rewind(Lsn(40));
        assert_eq!(
            s.observe("public.t", Lsn(50), &cols(&["id", "a"])),
            Seen::Same
        );
    }
}
