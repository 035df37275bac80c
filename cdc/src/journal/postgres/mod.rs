//! The state store in a Postgres database: `[state] url` (and `schema`, default
//! `pgcdc`). Same tables as the SQLite store (events, meta, cursors, dlq,
//! audit, row_state, resyncs) plus `stats` (the journal's byte count, so
//! `journal.max_bytes` needs no scan), `lease` (the fencing epoch) and
//! `schema_version`; made and migrated at open (`schema.rs`).
//!
//! The API is synchronous and its callers are blocking threads, some of them
//! inside the async engine: a tokio `Runtime::block_on` there would panic. So
//! the connections' I/O tasks run on one small runtime of their own
//! ([`runtime`]), and a caller waits for each query's future with a plain
//! park/unpark executor ([`wait`]) under a deadline: blocking, like a SQLite
//! call, from any thread.
//!
//! Fencing: with [`Postgres::set_fence`] every write transaction first reads
//! `lease.epoch FOR SHARE` and fails with [`JournalError::Fenced`] unless it is
//! this process's epoch. The share lock makes an epoch bump wait for writes in
//! flight, and every write after the bump sees it.
//!
//! Errors: every failure here is definite ([`JournalError::Store`]); pgcdc
//! stops and restarts from the slot, as after a disk error.
//!
//! Files: `mod.rs` (connection, transactions, fencing), `schema.rs`
//! (migrations), `session.rs` (the `StateStore` impl: events, meta, cursors),
//! `dlq.rs` (DLQ), `audit.rs` (audit log), `resync.rs`, `writer.rs` (the appender and
//! row state).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::{Access, Backend, JournalError, JournalWriter, StateStore};
use crate::replication::SourceUrl;

mod audit;
mod dlq;
mod known_keys;
pub(crate) mod lease;
mod relations;
mod resync;
mod schema;
mod session;
mod staging;
mod writer;

/// How long one statement (and the client's wait for it) may take. Bounds a hung
/// network or a lock that never comes; the store then fails like a broken disk.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a closed connection is retried before the call fails. Longer than the
/// default `wal_sender_timeout` (60 s): with the state in the source cluster, a
/// shutdown of that cluster waits for the walsender, which waits for pgcdc to
/// confirm, which cannot write its state until the cluster is back.
const RECONNECT_FOR: Duration = Duration::from_secs(90);

/// No fence: writes are not checked against the lease.
const NO_FENCE: i64 = i64::MIN;

/// The text timestamps the SQLite store writes (`2026-01-02T03:04:05.678Z`).
pub(super) const NOW_TEXT: &str =
    "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

/// Where the store is: the database and schema, and the fence shared by every
/// connection of this process.
#[derive(Debug)]
pub(crate) struct Postgres {
    target: Arc<Target>,
    fence: Arc<AtomicI64>,
}

/// How to (re)connect: the database and the schema.
#[derive(Debug)]
struct Target {
    url: SourceUrl,
    schema: String,
}

/// The fence of every store of one database and schema in this process: the HA
/// layer sets it on one `Store`, and the sessions the admin API or a command open
/// through another `Store` of the same config are fenced too.
fn shared_fence(at: &str) -> Arc<AtomicI64> {
    static FENCES: OnceLock<Mutex<HashMap<String, Arc<AtomicI64>>>> = OnceLock::new();
    let fences = FENCES.get_or_init(Mutex::default);
    let mut fences = fences
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    fences
        .entry(at.to_string())
        .or_insert_with(|| Arc::new(AtomicI64::new(NO_FENCE)))
        .clone()
}

impl Target {
    fn describe(&self) -> String {
        // SourceUrl's Display prints the password as ***.
        format!("{} schema {}", self.url, self.schema)
    }

    /// A new connection with the session settings (search path, limits).
    fn client(&self, durable: bool) -> Result<Client, JournalError> {
        let at = self.describe();
        let url = self.url.clone();
        let connecting =
            runtime().spawn(async move { crate::replication::connect_sql(&url).await });
        let client = match wait(connecting, STATEMENT_TIMEOUT) {
            Some(Ok(Ok(client))) => client,
            Some(Ok(Err(e))) => return Err(message(&at, format!("cannot connect: {e}"))),
            Some(Err(e)) => return Err(JournalError::Task(e.to_string())),
            None => return Err(message(&at, "connecting timed out".into())),
        };
        // Sessions' commits (cursors, DLQ, audit) need atomicity only: one lost to a
        // server crash rolls a cursor back with its DLQ rows and the events are
        // delivered again, which at-least-once allows. The writer's commits back what
        // the slot is told: they wait for the disk.
        let sync_commit = if durable { "on" } else { "off" };
        let settings = format!(
            "SET search_path TO {}; SET statement_timeout = '{}s'; SET synchronous_commit = {sync_commit}",
            schema::quote(&self.schema),
            STATEMENT_TIMEOUT.as_secs()
        );
        match wait(client.batch_execute(&settings), STATEMENT_TIMEOUT) {
            Some(Ok(())) => Ok(client),
            Some(Err(e)) => Err(message(&at, format!("cannot set up the session: {e}"))),
            None => Err(message(&at, "setting up the session timed out".into())),
        }
    }
}

impl Postgres {
    /// The store in `schema` of `url`'s database (nothing is opened yet).
    pub(crate) fn new(url: SourceUrl, schema: &str) -> Postgres {
        let target = Arc::new(Target {
            url,
            schema: schema.to_string(),
        });
        let fence = shared_fence(&target.describe());
        Postgres { target, fence }
    }

    fn describe(&self) -> String {
        self.target.describe()
    }

    fn connect(&self, access: Access, durable: bool) -> Result<Pg, JournalError> {
        let pg = Pg {
            client: RefCell::new(self.target.client(durable)?),
            at: self.describe(),
            target: self.target.clone(),
            durable,
            in_transaction: Cell::new(false),
            lost: Cell::new(false),
            fence: self.fence.clone(),
            statements: RefCell::new(HashMap::new()),
        };
        schema::prepare(&pg, &self.target.schema, access)?;
        Ok(pg)
    }
}

impl Backend for Postgres {
    fn open(&self, access: Access) -> Result<Box<dyn StateStore>, JournalError> {
        Ok(Box::new(session::PgStore::new(
            self.connect(access, false)?,
        )))
    }

    fn writer(&self) -> Result<Box<dyn JournalWriter>, JournalError> {
        Ok(Box::new(writer::PgWriter::open(
            self.connect(Access::Create, true)?,
        )?))
    }

    fn exists(&self) -> bool {
        self.connect(Access::Existing, false).is_ok()
    }

    fn describe(&self) -> String {
        Postgres::describe(self)
    }

    fn set_fence(&self, epoch: Option<i64>) -> Result<(), JournalError> {
        self.fence
            .store(epoch.unwrap_or(NO_FENCE), Ordering::SeqCst);
        Ok(())
    }
}

/// The runtime that drives every state connection's I/O (one small thread).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pgcdc-state")
            .enable_all()
            .build()
            // Without a thread pgcdc cannot run at all; there is nothing to recover.
            .unwrap_or_else(|e| panic!("cannot start the state store's I/O thread: {e}"))
    })
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` on this thread until it completes, or None after `limit`. Works from
/// any thread, async context or not: the I/O itself runs on [`runtime`].
fn wait<F: Future>(fut: F, limit: Duration) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + limit;
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

fn message(at: &str, text: String) -> JournalError {
    JournalError::Store {
        at: at.to_string(),
        source: text.into(),
    }
}

pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// How a transaction failed: before COMMIT (nothing committed), or at it (unknown).
enum WriteError<E> {
    Before(E),
    AtCommit(E),
}

impl<E> WriteError<E> {
    fn into_inner(self) -> E {
        match self {
            WriteError::Before(e) | WriteError::AtCommit(e) => e,
        }
    }
}

/// One connection to the state database.
pub(super) struct Pg {
    client: RefCell<Client>,
    /// Where it is, for errors (no password).
    at: String,
    target: Arc<Target>,
    durable: bool,
    in_transaction: Cell<bool>,
    /// The server closed the connection (seen in an error): make it again.
    lost: Cell<bool>,
    fence: Arc<AtomicI64>,
    /// Prepared statements by SQL text: one round trip per query instead of two.
    statements: RefCell<HashMap<String, Statement>>,
}

impl Pg {
    pub(super) fn err(&self, e: tokio_postgres::Error) -> JournalError {
        let text = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        message(&self.at, text)
    }

    /// A stored value this store cannot read back.
    pub(super) fn corrupt(&self, text: String) -> JournalError {
        message(&self.at, text)
    }

    fn wait<T>(
        &self,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, JournalError> {
        match wait(fut, STATEMENT_TIMEOUT + Duration::from_secs(5)) {
            Some(out) => out.map_err(|e| {
                // The server went away (admin shutdown, crash, network): make the
                // connection again before the next call.
                let code = e.as_db_error().map(|d| d.code().code().to_string());
                if e.is_closed()
                    || code.is_some_and(|c| c.starts_with("57P") || c.starts_with("08"))
                    || e.to_string().contains("connection closed")
                {
                    self.lost.set(true);
                }
                self.err(e)
            }),
            None => Err(message(
                &self.at,
                format!(
                    "no answer from the state database within {} s",
                    STATEMENT_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    /// Between transactions: a connection the server closed (a restart, a failover,
    /// an idle timeout) is made again, waiting up to [`RECONNECT_FOR`] for the server.
    /// A call that was running when it closed has failed already.
    pub(super) fn reconnect_if_closed(&self) -> Result<bool, JournalError> {
        if self.in_transaction.get() || !self.is_closed() {
            return Ok(false);
        }
        let deadline = Instant::now() + RECONNECT_FOR;
        loop {
            match self.target.client(self.durable) {
                Ok(client) => {
                    *self.client.borrow_mut() = client;
                    self.lost.set(false);
                    self.statements.borrow_mut().clear();
                    tracing::warn!(at = %self.at, "state database connection made again");
                    return Ok(true);
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "state database unreachable; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Whether the server closed the connection.
    pub(super) fn is_closed(&self) -> bool {
        self.lost.get() || self.client.borrow().is_closed()
    }

    /// Runs `call`; outside a transaction, once more on a new connection when the
    /// server closed this one under it. Every statement run this way is a read or
    /// a write that may run twice (a delivery attempt listed twice at worst).
    fn again<T>(&self, call: impl Fn() -> Result<T, JournalError>) -> Result<T, JournalError> {
        match call() {
            Err(e) if !self.in_transaction.get() && self.is_closed() => {
                tracing::warn!(error = %e, "state database connection lost; trying again");
                self.reconnect_if_closed()?;
                call()
            }
            other => other,
        }
    }

    fn statement(&self, sql: &str) -> Result<Statement, JournalError> {
        self.reconnect_if_closed()?;
        if let Some(st) = self.statements.borrow().get(sql) {
            return Ok(st.clone());
        }
        let st = self.wait(self.client.borrow().prepare(sql))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), st.clone());
        Ok(st)
    }

    /// Runs a query; its rows.
    pub(super) fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, JournalError> {
        self.again(|| {
            let st = self.statement(sql)?;
            self.wait(self.client.borrow().query(&st, params))
        })
    }

    /// Runs a query; its one row or none.
    pub(super) fn query_opt(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, JournalError> {
        self.again(|| {
            let st = self.statement(sql)?;
            self.wait(self.client.borrow().query_opt(&st, params))
        })
    }

    /// Runs a query that returns exactly one row.
    pub(super) fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, JournalError> {
        self.again(|| {
            let st = self.statement(sql)?;
            self.wait(self.client.borrow().query_one(&st, params))
        })
    }

    /// Runs a statement; rows changed.
    pub(super) fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, JournalError> {
        self.again(|| {
            let st = self.statement(sql)?;
            self.wait(self.client.borrow().execute(&st, params))
        })
    }

    /// Runs statements without parameters (simple protocol).
    pub(super) fn batch(&self, sql: &str) -> Result<(), JournalError> {
        self.again(|| {
            self.reconnect_if_closed()?;
            self.wait(self.client.borrow().batch_execute(sql))
        })
    }

    /// A column of a row, typed.
    pub(super) fn get<'r, T: tokio_postgres::types::FromSql<'r>>(
        &self,
        row: &'r Row,
        i: usize,
    ) -> Result<T, JournalError> {
        row.try_get(i).map_err(|e| self.err(e))
    }

    /// Runs `f` in one transaction, after checking the fence, and commits it when `f`
    /// succeeds (rolls back otherwise).
    pub(super) fn write<T, E: From<JournalError>>(
        &self,
        f: impl FnMut(&Pg) -> Result<T, E>,
    ) -> Result<T, E> {
        self.write_retrying(f, false)
    }

    /// [`Pg::write`] for a transaction that may commit twice to the same effect: one
    /// cut at COMMIT (committed or not, nobody knows) runs again too.
    pub(super) fn write_idempotent<T, E: From<JournalError>>(
        &self,
        f: impl FnMut(&Pg) -> Result<T, E>,
    ) -> Result<T, E> {
        self.write_retrying(f, true)
    }

    fn write_retrying<T, E: From<JournalError>>(
        &self,
        mut f: impl FnMut(&Pg) -> Result<T, E>,
        idempotent: bool,
    ) -> Result<T, E> {
        match self.write_once(&mut f) {
            // Cut before COMMIT: nothing of it committed, so it runs again on a new
            // connection.
            Err(WriteError::Before(_)) if self.is_closed() => {
                self.reconnect_if_closed()?;
                self.write_once(&mut f).map_err(WriteError::into_inner)
            }
            Err(WriteError::AtCommit(_)) if idempotent && self.is_closed() => {
                self.reconnect_if_closed()?;
                self.write_once(&mut f).map_err(WriteError::into_inner)
            }
            other => other.map_err(WriteError::into_inner),
        }
    }

    /// [`Pg::write`] without the second try (the journal writer retries itself, after
    /// reading back what is durable).
    pub(super) fn write_no_retry<T, E: From<JournalError>>(
        &self,
        mut f: impl FnMut(&Pg) -> Result<T, E>,
    ) -> Result<T, E> {
        self.write_once(&mut f).map_err(WriteError::into_inner)
    }

    fn write_once<T, E: From<JournalError>>(
        &self,
        f: &mut impl FnMut(&Pg) -> Result<T, E>,
    ) -> Result<T, WriteError<E>> {
        self.batch("BEGIN")
            .map_err(|e| WriteError::Before(E::from(e)))?;
        self.in_transaction.set(true);
        let out = self.check_fence().map_err(E::from).and_then(|()| f(self));
        // Still "in the transaction" for COMMIT: a connection closed meanwhile must
        // fail it, never be made again for a COMMIT of nothing.
        let out = match out {
            Ok(v) => self
                .batch("COMMIT")
                .map(|()| v)
                .map_err(|e| WriteError::AtCommit(E::from(e))),
            Err(e) => {
                // The transaction's error is the one to report; a failed rollback
                // (a broken connection) leaves nothing committed either.
                let _ = self.batch("ROLLBACK");
                Err(WriteError::Before(e))
            }
        };
        self.in_transaction.set(false);
        out
    }

    /// Runs one statement as its own write: in a fenced transaction when a fence is
    /// set, on its own (one round trip) otherwise.
    pub(super) fn write_one(&self, sql: &str, params: Params<'_>) -> Result<u64, JournalError> {
        if self.fence.load(Ordering::SeqCst) == NO_FENCE {
            self.execute(sql, params)
        } else {
            self.write(|pg| pg.execute(sql, params))
        }
    }

    /// Inside a transaction: fails unless the lease's epoch is this process's fence.
    /// `FOR SHARE` holds an epoch bump back until this transaction ends.
    fn check_fence(&self) -> Result<(), JournalError> {
        let mine = self.fence.load(Ordering::SeqCst);
        if mine == NO_FENCE {
            return Ok(());
        }
        let row = self.query_opt("SELECT epoch FROM lease WHERE id = 1 FOR SHARE", &[])?;
        let current = match &row {
            Some(row) => Some(self.get::<i64>(row, 0)?),
            None => None,
        };
        if current == Some(mine) {
            Ok(())
        } else {
            Err(JournalError::Fenced {
                epoch: mine,
                current,
            })
        }
    }
}
