//! A Kafka-protocol broker for tests: `nisshi` with in-memory storage, behind a
//! TCP proxy that the test can cut to simulate a broker outage.
//!
//! ```text
//!  pgcdc / consumers ──▶ proxy (advertised port) ──▶ nisshi (listener port)
//!                        cut(): drop connections, refuse new ones
//! ```
//!
//! The proxy exists because the nisshi build available here keeps records only
//! in memory: a real broker restart would lose every record, so an outage is
//! simulated at the network instead, which is what a client sees of a restart.
//! The binary is `$NISSHI_BIN` or `~/.cargo/bin/nisshi` (`scripts/test` installs it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::{HarnessError, Result};

/// The nisshi binary.
pub fn nisshi_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NISSHI_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cargo/bin/nisshi")
}

/// A running broker and its proxy; both stop on drop.
pub struct Broker {
    child: std::process::Child,
    proxy_port: u16,
    broker_port: u16,
    up: watch::Sender<bool>,
    cut_flag: Arc<AtomicBool>,
    log: tempfile::NamedTempFile,
}

impl Broker {
    /// Starts nisshi on a free port and a proxy in front of it; waits until it answers.
    /// The port is free when it is picked, but another test may take it before
    /// nisshi binds it: then nisshi stops ("Address already in use") and a new
    /// port is tried, up to three times.
    pub async fn start() -> Result<Broker> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut broker = Broker::start_once().await?;
            match broker.wait_ready().await {
                Ok(()) => return Ok(broker),
                Err(_) if attempt < 3 && broker.lost_its_port() => {
                    eprintln!(
                        "nisshi lost port {} to another process; starting it again",
                        broker.broker_port
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether nisshi exited because its port was taken.
    fn lost_its_port(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
            && self.log_tail().contains("Address already in use")
    }

    async fn start_once() -> Result<Broker> {
        let bin = nisshi_bin();
        if !bin.exists() {
            return Err(HarnessError::Environment(format!(
                "{} not found: run ./scripts/test (it installs nisshi), or set NISSHI_BIN",
                bin.display()
            )));
        }
        let broker_port = crate::free_port()?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::Environment(format!("proxy bind: {e}")))?;
        let proxy_port = listener
            .local_addr()
            .map_err(|e| HarnessError::Environment(format!("proxy addr: {e}")))?
            .port();
        let log = tempfile::NamedTempFile::new()
            .map_err(|e| HarnessError::Environment(format!("broker log: {e}")))?;
        let log_file = log
            .reopen()
            .map_err(|e| HarnessError::Environment(format!("broker log: {e}")))?;
        let child = std::process::Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{broker_port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{proxy_port}"),
                "--storage-engine",
                "memory://nisshi/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: bin.display().to_string(),
                source,
            })?;
        let (up, up_rx) = watch::channel(true);
        let cut_flag = Arc::new(AtomicBool::new(false));
        tokio::spawn(proxy(listener, broker_port, up_rx, cut_flag.clone()));
        Ok(Broker {
            child,
            proxy_port,
            broker_port,
            up,
            cut_flag,
            log,
        })
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let bootstrap = self.bootstrap();
        loop {
            let b = bootstrap.clone();
            let ok = tokio::task::spawn_blocking(move || {
                let consumer: std::result::Result<BaseConsumer, _> =
                    ClientConfig::new().set("bootstrap.servers", &b).create();
                consumer
                    .ok()
                    .and_then(|c| c.fetch_metadata(None, Duration::from_secs(2)).ok())
                    .is_some_and(|md| !md.brokers().is_empty())
            })
            .await
            .unwrap_or(false);
            if ok {
                return Ok(());
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                return Err(HarnessError::Environment(format!(
                    "nisshi did not answer on port {} within 30s (or exited); its log:\n{}",
                    self.broker_port,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.proxy_port)
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Creates a topic with `nisshi topic create`.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let bin = nisshi_bin();
        let out = std::process::Command::new(&bin)
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.broker_port),
            ])
            .output()
            .map_err(|source| HarnessError::Spawn {
                program: bin.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                program: format!("nisshi topic create {name}"),
                status: out.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(())
    }

    /// Simulates an outage: open connections are dropped and new ones refused.
    pub fn cut(&self) {
        self.cut_flag.store(true, Ordering::SeqCst);
        let _ = self.up.send(false);
    }

    /// Ends the outage.
    pub fn restore(&self) {
        self.cut_flag.store(false, Ordering::SeqCst);
        let _ = self.up.send(true);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nisshi log tail ---\n{}", self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn proxy(
    listener: TcpListener,
    broker_port: u16,
    up: watch::Receiver<bool>,
    cut: Arc<AtomicBool>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        if cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut up = up.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
                return;
            };
            // Without this, Nagle's algorithm and delayed ACKs add ~40 ms per exchange.
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::select! {
                _ = tokio::io::copy(&mut cr, &mut sw) => {}
                _ = tokio::io::copy(&mut sr, &mut cw) => {}
                _ = up.wait_for(|u| !*u) => {}
            }
        });
    }
}

/// One record as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes as text.
    pub key: Option<String>,
    /// Value as text (None for a tombstone).
    pub value: Option<String>,
    /// Headers (text values).
    pub headers: BTreeMap<String, String>,
}

/// Reads every record of `topic` (all partitions) from the beginning to the end.
pub fn read_topic(bootstrap: &str, topic: &str) -> Result<Vec<Record>> {
    let err = |m: String| HarnessError::Environment(format!("reading {topic}: {m}"));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "pgcdc-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| err(e.to_string()))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| err(e.to_string()))?;
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(err("the topic has no partitions (does it exist?)".into()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| err(e.to_string()))?;
    }
    consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
    let mut open: std::collections::HashSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(err(format!(
                "partitions {open:?} did not reach their end in 60s"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(err(e.to_string())),
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                    headers,
                });
            }
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// Writes one record without pgcdc's headers (a "foreign" writer).
pub fn produce_foreign(bootstrap: &str, topic: &str, key: &str, value: &str) -> Result<()> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let err = |m: String| HarnessError::Environment(format!("producing to {topic}: {m}"));
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .create()
        .map_err(|e| err(e.to_string()))?;
    producer
        .send(BaseRecord::<str, str>::to(topic).key(key).payload(value))
        .map_err(|(e, _)| err(e.to_string()))?;
    producer
        .flush(Duration::from_secs(10))
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}
