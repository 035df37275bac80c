//! Where a producer's acknowledgements land: one slot per record handed over,
//! in lots that the sink awaits as a whole.
//!
//! rdkafka's `FutureProducer` gives every record a oneshot channel (two heap
//! blocks) and wakes the awaiting task once per acknowledgement that arrives
//! while it waits. Here a record carries a number (its lot and its place in
//! it) as librdkafka's opaque, the delivery callback writes the outcome into
//! the lot's slot, and the waiting task is woken once, when the lot's last
//! outcome is in. A plain producer handing 450k records to the benchmark's
//! broker used 1.52-1.67 s of CPU this way against 1.73-2.17 s with the
//! `FutureProducer` (four runs each, alternating; docs/benchmarks.md).

use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

use super::context::SinkContext;

/// Where a record landed (partition, offset), or why it did not.
pub(crate) type Outcome = Result<(i32, i64), KafkaError>;

/// The sink's producer: its delivery reports go to its [`Acks`].
pub(crate) type SinkProducer = ThreadedProducer<ProducingContext>;

/// Bits of a record's opaque that hold its place in its lot; the rest holds
/// the lot's number.
const PLACE_BITS: u32 = 24;
/// Records in one lot at most (a batch has at most 2 x 10,000: far fewer).
pub(crate) const MAX_LOT: usize = 1 << PLACE_BITS;

/// The outcomes of the lots under way on one producer.
#[derive(Default)]
pub(crate) struct Acks {
    lots: Mutex<Lots>,
    /// Woken when a lot's last outcome is in.
    done: Notify,
}

#[derive(Default)]
struct Lots {
    next_id: usize,
    open: Vec<LotSlots>,
}

struct LotSlots {
    id: usize,
    outcomes: Vec<Option<Outcome>>,
    /// Slots still without an outcome.
    left: usize,
}

impl Acks {
    fn lock(&self) -> MutexGuard<'_, Lots> {
        // A panic while holding the lock leaves plain data behind: still usable.
        self.lots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a lot of `len` records (at most [`MAX_LOT`]).
    pub(crate) fn open(self: &Arc<Self>, len: usize) -> Lot {
        let len = len.min(MAX_LOT);
        let mut lots = self.lock();
        let id = lots.next_id;
        lots.next_id = (id + 1) % (usize::MAX >> PLACE_BITS);
        lots.open.push(LotSlots {
            id,
            outcomes: vec![None; len],
            left: len,
        });
        Lot {
            acks: self.clone(),
            id,
            len,
        }
    }

    /// Books `outcome` for the record with this opaque; wakes the waiters when
    /// its lot is complete. Outcomes of lots no longer open are dropped.
    fn book(&self, opaque: usize, outcome: Outcome) {
        let (id, place) = (opaque >> PLACE_BITS, opaque & (MAX_LOT - 1));
        let mut lots = self.lock();
        let Some(lot) = lots.open.iter_mut().find(|l| l.id == id) else {
            return;
        };
        let Some(slot) = lot.outcomes.get_mut(place) else {
            return;
        };
        if slot.is_none() {
            *slot = Some(outcome);
            lot.left -= 1;
            if lot.left == 0 {
                drop(lots);
                self.done.notify_waiters();
            }
        }
    }

    /// The outcomes of lot `id`, once complete (and the lot closed).
    fn take_if_complete(&self, id: usize) -> Option<Vec<Outcome>> {
        let mut lots = self.lock();
        let at = lots.open.iter().position(|l| l.id == id)?;
        if lots.open[at].left > 0 {
            return None;
        }
        let lot = lots.open.swap_remove(at);
        Some(
            lot.outcomes
                .into_iter()
                .map(|o| o.unwrap_or(Err(KafkaError::Canceled)))
                .collect(),
        )
    }

    fn close(&self, id: usize) {
        self.lock().open.retain(|l| l.id != id);
    }
}

/// Records handed to the producer together, awaited together. Dropped before
/// it completes, it is closed: late outcomes of its records are ignored.
pub(crate) struct Lot {
    acks: Arc<Acks>,
    id: usize,
    len: usize,
}

impl Lot {
    /// The opaque of the lot's record at `place` (below the lot's length).
    pub(crate) fn opaque(&self, place: usize) -> usize {
        debug_assert!(place < self.len);
        (self.id << PLACE_BITS) | place
    }

    /// Books an outcome known without the broker (the record was not handed over).
    pub(crate) fn book(&self, place: usize, outcome: Outcome) {
        self.acks.book(self.opaque(place), outcome);
    }

    /// Every record's outcome, in the order of their places.
    pub(crate) async fn outcomes(self) -> Vec<Outcome> {
        loop {
            let done = self.acks.done.notified();
            tokio::pin!(done);
            // Registered before the check, so a completion in between still wakes it.
            done.as_mut().enable();
            if let Some(outcomes) = self.acks.take_if_complete(self.id) {
                return outcomes;
            }
            done.await;
        }
    }
}

impl Drop for Lot {
    fn drop(&mut self) {
        self.acks.close(self.id);
    }
}

/// The client context of the sink's producer: its logs and errors as the
/// sink's, and its delivery reports booked in its [`Acks`].
pub(crate) struct ProducingContext {
    pub(crate) sink: SinkContext,
    pub(crate) acks: Arc<Acks>,
}

impl ClientContext for ProducingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.sink.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.sink.error(error, reason);
    }
}

impl ProducerContext for ProducingContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let outcome = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        self.acks.book(opaque, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lot_completes_when_its_last_outcome_is_in_and_ignores_the_rest() {
        let acks = Arc::new(Acks::default());
        let a = acks.open(3);
        let b = acks.open(1);
        // Outcomes in any order, from another thread, one of them booked twice.
        let (oa, ob) = (a.opaque(0), b.opaque(0));
        let (o2, o1) = (a.opaque(2), a.opaque(1));
        let booker = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                acks.book(o2, Ok((2, 7)));
                acks.book(ob, Err(KafkaError::Canceled));
                acks.book(oa, Ok((0, 5)));
                acks.book(oa, Ok((0, 99)));
                std::thread::sleep(std::time::Duration::from_millis(20));
                acks.book(o1, Ok((1, 6)));
            })
        };
        let got = a.outcomes().await;
        booker.join().expect("the booking thread");
        let got: Vec<_> = got.into_iter().map(|o| o.ok()).collect();
        assert_eq!(got, vec![Some((0, 5)), Some((1, 6)), Some((2, 7))]);
        assert!(b.outcomes().await[0].is_err());
        // Closed lots are gone; an outcome for one is dropped.
        acks.book(oa, Ok((0, 1)));
        assert!(acks.lock().open.is_empty());
        // A lot dropped unfinished is closed.
        let c = acks.open(2);
        c.book(0, Ok((0, 1)));
        drop(c);
        assert!(acks.lock().open.is_empty());
    }
}
