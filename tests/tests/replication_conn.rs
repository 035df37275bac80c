//! Live tests of `pgcdc::replication` against a throwaway Postgres 15:
//! startup with every auth method, TLS modes, slot creation, streaming,
//! standby status updates, keepalives and error reporting.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use pgcdc::replication::{
    connect_sql, ReplicationConnection, ReplicationError, ReplicationMessage, ReplicationStream,
    SourceUrl,
};
use pgcdc_tests::{wait_until_msg, PgCluster};
use tokio::net::{TcpListener, TcpStream};

const PASSWORD: &str = "p@ss:w/rd%";
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

fn lsn_text(lsn: u64) -> String {
    pgcdc_schema::Lsn(lsn).to_string()
}

async fn next(stream: &mut ReplicationStream) -> anyhow::Result<ReplicationMessage> {
    match tokio::time::timeout(RECV_TIMEOUT, stream.next_message()).await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => bail!("server ended the replication stream"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => bail!("no replication message within {RECV_TIMEOUT:?}"),
    }
}

/// Receives the next XLogData while a 1 ms timer keeps cancelling the read,
/// as the pipeline's `select!` does; counts the cancellations.
async fn next_xlog_cancelled(
    stream: &mut ReplicationStream,
    cancels: &mut u32,
) -> anyhow::Result<(u64, Vec<u8>)> {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        tokio::select! {
            m = stream.next_message() => match m? {
                Some(ReplicationMessage::XLogData { wal_start, data, .. }) => return Ok((wal_start, data.to_vec())),
                Some(ReplicationMessage::Keepalive { .. }) => {}
                None => bail!("server ended the replication stream"),
            },
            _ = tokio::time::sleep(Duration::from_millis(1)) => {
                *cancels += 1;
                ensure!(Instant::now() < deadline, "no XLogData within {RECV_TIMEOUT:?}");
            }
        }
    }
}

/// Reads XLogData until a Commit; returns the message tags seen and the commit's end LSN.
async fn until_commit(
    stream: &mut ReplicationStream,
    cancels: &mut u32,
) -> anyhow::Result<(Vec<u8>, Vec<Vec<u8>>, u64)> {
    let mut tags = Vec::new();
    let mut payloads = Vec::new();
    loop {
        let (_, data) = next_xlog_cancelled(stream, cancels).await?;
        let tag = *data.first().context("empty XLogData")?;
        ensure!(
            matches!(tag, b'B' | b'R' | b'I' | b'C' | b'Y' | b'O'),
            "unexpected pgoutput tag {:?}",
            char::from(tag)
        );
        tags.push(tag);
        if tag == b'C' {
            // Commit: tag, flags (u8), commit LSN (u64), end LSN (u64), time (i64).
            let end = data.get(10..18).context("short Commit message")?;
            let end_lsn = u64::from_be_bytes(end.try_into()?);
            return Ok((tags, payloads, end_lsn));
        }
        payloads.push(data);
    }
}

async fn sql_bool(pg: &PgCluster, sql: &str) -> bool {
    match pg.client().await {
        Ok(c) => matches!(
            c.query_one(sql, &[]).await.map(|r| r.try_get::<_, bool>(0)),
            Ok(Ok(true))
        ),
        Err(_) => false,
    }
}

/// Connects with `method` in pg_hba, checks IDENTIFY_SYSTEM and the method the
/// server logged, then checks that a wrong password is a clear Auth error.
async fn auth_roundtrip(method: &str) -> anyhow::Result<()> {
    let pg = PgCluster::builder().hba_method(method).start().await?;
    pg.create_user("repl", PASSWORD, true).await?;
    let url: SourceUrl = pg.url_for("repl", PASSWORD, "postgres").parse()?;
    ensure!(url.password.as_ref().map(|p| p.expose()) == Some(PASSWORD));

    let mut conn = ReplicationConnection::connect(&url)
        .await
        .with_context(|| format!("connect with {method}"))?;
    let id = conn.identify_system().await?;
    let sysid: i64 = pg
        .client()
        .await?
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await?
        .try_get(0)?;
    ensure!(id.systemid == sysid.to_string(), "{id:?} vs {sysid}");
    ensure!(id.timeline == 1, "{id:?}");
    ensure!(id.dbname == "postgres", "{id:?}");
    ensure!(id.xlogpos > 0, "{id:?}");
    conn.close().await;

    if method != "trust" {
        // The server logs the method it actually used (md5 is not silently SCRAM, etc.).
        let expected = format!("identity=\"repl\" method={method}");
        wait_until_msg(Duration::from_secs(10), &expected, || async {
            std::fs::read_to_string(pg.log_path()).is_ok_and(|log| log.contains(&expected))
        })
        .await;

        let wrong: SourceUrl = pg.url_for("repl", "wrong", "postgres").parse()?;
        match ReplicationConnection::connect(&wrong).await {
            Err(e @ ReplicationError::Auth { .. }) => {
                ensure!(!e.is_transient());
                let text = e.to_string();
                ensure!(text.contains("password authentication failed"), "{text}");
                ensure!(!text.contains("wrong"), "error echoes the password: {text}");
            }
            other => bail!("{method}: wrong password gave {other:?}"),
        }
        let none: SourceUrl = pg.url_for("repl", "", "postgres").parse()?;
        match ReplicationConnection::connect(&none).await {
            Err(ReplicationError::Auth { message }) => {
                ensure!(message.contains("has none"), "{message}")
            }
            other => bail!("{method}: missing password gave {other:?}"),
        }
    } else {
        let ghost: SourceUrl = pg.url_for("ghost", "", "postgres").parse()?;
        match ReplicationConnection::connect(&ghost).await {
            Err(ReplicationError::Auth { message }) => {
                ensure!(message.contains("does not exist"), "{message}")
            }
            other => bail!("unknown role gave {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_auth_trust() -> anyhow::Result<()> {
    auth_roundtrip("trust").await
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_auth_password() -> anyhow::Result<()> {
    auth_roundtrip("password").await
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_auth_md5() -> anyhow::Result<()> {
    auth_roundtrip("md5").await
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_auth_scram() -> anyhow::Result<()> {
    auth_roundtrip("scram-sha-256").await
}

/// Session settings from the startup packet, SQL and errors on a replication
/// connection, Unix sockets, and TLS refused by a server without it.
#[tokio::test(flavor = "multi_thread")]
async fn replication_session_settings_and_errors() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    let url: SourceUrl = format!("{}&application_name=repl_test", pg.url()).parse()?;
    let mut conn = ReplicationConnection::connect(&url).await?;
    for (setting, expected) in [
        ("TimeZone", "UTC"),
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "iso_8601"),
        ("extra_float_digits", "3"),
        ("bytea_output", "hex"),
        ("statement_timeout", "0"),
        ("application_name", "repl_test"),
        ("wal_level", "logical"),
    ] {
        let rows = conn.simple_query(&format!("SHOW {setting}")).await?;
        ensure!(
            rows == vec![vec![Some(expected.to_owned())]],
            "{setting}: {rows:?}"
        );
    }
    let rows = conn.simple_query("SELECT 1, NULL::text, 'x'").await?;
    ensure!(
        rows == vec![vec![Some("1".into()), None, Some("x".into())]],
        "{rows:?}"
    );

    // An error keeps SQLSTATE and leaves the connection usable.
    match conn.simple_query("SELECT * FROM no_such_table").await {
        Err(e) => {
            ensure!(e.sqlstate() == Some("42P01"), "{e}");
            ensure!(!e.is_transient());
            ensure!(e.to_string().contains("no_such_table"), "{e}");
        }
        Ok(rows) => bail!("missing table gave rows {rows:?}"),
    }
    ensure!(conn.identify_system().await?.dbname == "postgres");

    // Unix socket: ?host=/dir.
    let socket_url: SourceUrl = format!(
        "postgres://postgres@:{}/postgres?host={}",
        pg.port(),
        pg.socket_dir().display()
    )
    .parse()?;
    ensure!(socket_url.is_unix_socket());
    let mut over_socket = ReplicationConnection::connect(&socket_url).await?;
    ensure!(
        over_socket.identify_system().await?.systemid == conn.identify_system().await?.systemid
    );
    let sql = connect_sql(&socket_url).await?;
    let one: i32 = sql.query_one("SELECT 1", &[]).await?.try_get(0)?;
    ensure!(one == 1);

    // No TLS on this server: require fails clearly, prefer falls back.
    let require: SourceUrl = pg
        .url()
        .replace("sslmode=disable", "sslmode=require")
        .parse()?;
    match ReplicationConnection::connect(&require).await {
        Err(e @ ReplicationError::Tls { .. }) => {
            ensure!(e.to_string().contains("does not accept TLS"), "{e}");
            ensure!(!e.is_transient());
        }
        other => bail!("require without server TLS gave {other:?}"),
    }
    let prefer: SourceUrl = pg
        .url()
        .replace("sslmode=disable", "sslmode=prefer")
        .parse()?;
    ReplicationConnection::connect(&prefer).await?;

    // A closed port is transient.
    let closed: SourceUrl = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
        pgcdc_tests::free_port()?
    )
    .parse()?;
    match ReplicationConnection::connect(&closed).await {
        Err(e) => ensure!(e.is_transient(), "{e}"),
        Ok(_) => bail!("connected to a closed port"),
    }
    Ok(())
}

/// Forwards 127.0.0.2:<port> to the cluster so the TLS name (127.0.0.2) is
/// not in the certificate while the server stays the same.
async fn forwarder(target_port: u16) -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.2", 0)).await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target_port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok((port, task))
}

async fn ssl_in_use(conn: &mut ReplicationConnection) -> anyhow::Result<bool> {
    let rows = conn
        .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await?;
    Ok(rows == vec![vec![Some("t".to_owned())]])
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_tls_modes() -> anyhow::Result<()> {
    let pg = PgCluster::builder()
        .tls(true)
        .hba_method("scram-sha-256")
        .start()
        .await?;
    pg.create_user("repl", PASSWORD, true).await?;
    let ca = pg
        .ca_cert_path()
        .context("TLS cluster has no CA")?
        .to_path_buf();

    // require: encrypted, nothing verified.
    let require: SourceUrl = pg
        .url_for("repl", PASSWORD, "postgres")
        .replace("sslmode=disable", "sslmode=require")
        .parse()?;
    let mut conn = ReplicationConnection::connect(&require).await?;
    ensure!(ssl_in_use(&mut conn).await?, "require did not use TLS");

    // verify-full against the harness CA, host `localhost` (in the SAN).
    let full: SourceUrl = pg
        .tls_url_for("repl", PASSWORD, "postgres")
        .context("no TLS url")?
        .parse()?;
    let mut conn = ReplicationConnection::connect(&full).await?;
    ensure!(ssl_in_use(&mut conn).await?, "verify-full did not use TLS");
    conn.identify_system().await?;
    let sql = connect_sql(&full).await?;
    let ssl: bool = sql
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .try_get(0)?;
    ensure!(ssl, "connect_sql verify-full did not use TLS");

    // Same server reached as 127.0.0.2: verify-full must refuse the name,
    // verify-ca must accept the chain.
    let (port, task) = forwarder(pg.port()).await?;
    let via = |mode: &str| -> anyhow::Result<SourceUrl> {
        Ok(format!(
            "postgres://repl:p%40ss%3Aw%2Frd%25@127.0.0.2:{port}/postgres?sslmode={mode}&sslrootcert={}",
            ca.display()
        )
        .parse()?)
    };
    match ReplicationConnection::connect(&via("verify-full")?).await {
        Err(e @ ReplicationError::Tls { .. }) => {
            ensure!(!e.is_transient());
            ensure!(e.to_string().contains("not valid for name"), "{e}");
        }
        other => bail!("verify-full with the wrong host name gave {other:?}"),
    }
    match connect_sql(&via("verify-full")?).await {
        Err(e) => ensure!(!e.is_transient(), "{e:?}"),
        Ok(_) => bail!("connect_sql verify-full accepted the wrong host name"),
    }
    let mut conn = ReplicationConnection::connect(&via("verify-ca")?).await?;
    ensure!(ssl_in_use(&mut conn).await?, "verify-ca did not use TLS");
    connect_sql(&via("verify-ca")?).await?;

    // A CA that did not sign the server certificate fails verify-ca.
    let wrong_ca = pg.server_cert_path().context("no server cert")?;
    let wrong: SourceUrl = format!(
        "postgres://repl:x@localhost:{}/postgres?sslmode=verify-ca&sslrootcert={}",
        pg.port(),
        wrong_ca.display()
    )
    .parse()?;
    match ReplicationConnection::connect(&wrong).await {
        Err(e @ ReplicationError::Tls { .. }) => ensure!(!e.is_transient()),
        other => bail!("verify-ca with the wrong CA gave {other:?}"),
    }
    task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_stream_and_status() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE PUBLICATION p FOR TABLE t;",
    )
    .await?;
    let url: SourceUrl = pg.url().parse()?;
    let mut conn = ReplicationConnection::connect(&url).await?;

    // An exported snapshot shows the table as of the slot's consistent point.
    pg.execute("INSERT INTO t VALUES (0, 'before')").await?;
    let exported = conn.create_logical_slot("snap_slot", true).await?;
    ensure!(exported.slot_name == "snap_slot" && exported.output_plugin == "pgoutput");
    let snapshot = exported.snapshot_name.context("no exported snapshot")?;
    pg.execute("INSERT INTO t VALUES (-1, 'after')").await?;
    let sql = connect_sql(&url).await?;
    sql.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'"
    ))
    .await?;
    let seen: i64 = sql
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .try_get(0)?;
    ensure!(seen == 1, "snapshot saw {seen} rows, expected 1");
    sql.batch_execute("COMMIT").await?;
    pg.execute("DELETE FROM t").await?;

    let slot = conn.create_logical_slot("s", false).await?;
    ensure!(slot.snapshot_name.is_none());
    match conn.create_logical_slot("s", false).await {
        Err(e) => ensure!(e.sqlstate() == Some("42710"), "{e}"),
        Ok(s) => bail!("duplicate slot created: {s:?}"),
    }

    let mut stream = conn
        .start_replication("s", slot.consistent_point, "p", false)
        .await?;
    pg.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        .await?;
    let mut cancels = 0;
    let (tags, _, first_end) = until_commit(&mut stream, &mut cancels).await?;
    ensure!(
        tags == b"BRIIC",
        "tags {:?}",
        String::from_utf8_lossy(&tags)
    );

    // A multi-megabyte row crosses many reads while the timer cancels them.
    pg.execute(
        "INSERT INTO t SELECT 3, string_agg(md5(i::text), '' ORDER BY i) \
         FROM generate_series(1, 100000) i",
    )
    .await?;
    let (tags, payloads, end_lsn) = until_commit(&mut stream, &mut cancels).await?;
    ensure!(tags == b"BIC", "tags {:?}", String::from_utf8_lossy(&tags));
    ensure!(end_lsn > first_end);
    let insert = payloads.get(1).context("no Insert payload")?;
    let last: String = pg
        .client()
        .await?
        .query_one("SELECT md5('100000')", &[])
        .await?
        .try_get(0)?;
    ensure!(insert.len() > 3_200_000, "Insert is {} bytes", insert.len());
    ensure!(
        insert.ends_with(last.as_bytes()),
        "Insert payload corrupted"
    );
    ensure!(cancels > 0, "the timer never cancelled a read");

    // The slot moves only because of our status update.
    let at_end = format!(
        "SELECT confirmed_flush_lsn = '{}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 's'",
        lsn_text(end_lsn)
    );
    ensure!(
        !sql_bool(&pg, &at_end).await,
        "slot already at the commit end"
    );
    stream.send_status(end_lsn, end_lsn, end_lsn, false).await?;
    wait_until_msg(
        Duration::from_secs(15),
        "confirmed_flush_lsn at commit end",
        || sql_bool(&pg, &at_end),
    )
    .await;

    // A second consumer of an active slot gets 55006, classified transient.
    let other = ReplicationConnection::connect(&url).await?;
    match other.start_replication("s", 0, "p", false).await {
        Err(e @ ReplicationError::Server { .. }) => {
            ensure!(e.sqlstate() == Some("55006"), "{e}");
            ensure!(e.is_transient());
            ensure!(e.to_string().contains("is active for PID"), "{e}");
        }
        other => bail!("second START_REPLICATION gave {other:?}"),
    }

    stream.finish().await?;
    wait_until_msg(
        Duration::from_secs(15),
        "slot released after finish",
        || {
            sql_bool(
                &pg,
                "SELECT NOT active FROM pg_replication_slots WHERE slot_name = 's'",
            )
        },
    )
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_keepalive_reply_requested() -> anyhow::Result<()> {
    let pg = PgCluster::builder()
        .wal_sender_timeout(Duration::from_secs(2))
        .start()
        .await?;
    pg.batch("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t")
        .await?;
    let url: SourceUrl = pg.url().parse()?;
    let mut conn = ReplicationConnection::connect(&url).await?;
    let slot = conn.create_logical_slot("s", false).await?;
    let mut stream = conn
        .start_replication("s", slot.consistent_point, "p", false)
        .await?;
    let flushed = slot.consistent_point;

    // Silent client: the server asks for a reply within wal_sender_timeout.
    let started = Instant::now();
    loop {
        if let ReplicationMessage::Keepalive {
            reply_requested: true,
            ..
        } = next(&mut stream).await?
        {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "no reply request"
        );
    }

    // Answering every request keeps the stream alive past several timeouts.
    let answering = Instant::now();
    let mut answered = 0;
    let mut last_status = Instant::now();
    while answering.elapsed() < Duration::from_secs(5) {
        stream.send_status(flushed, flushed, flushed, false).await?;
        last_status = Instant::now();
        answered += 1;
        while let ReplicationMessage::XLogData { .. } = next(&mut stream).await? {}
    }
    ensure!(answered >= 2, "only {answered} keepalives in 5 s");

    // Silent again: the server drops us, which is a transient error.
    loop {
        match tokio::time::timeout(RECV_TIMEOUT, stream.next_message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("server ended the COPY instead of timing out"),
            Ok(Err(e)) => {
                ensure!(e.is_transient(), "{e}");
                break;
            }
            Err(_) => bail!("server never timed out the silent client"),
        }
    }
    let silent = last_status.elapsed();
    ensure!(
        silent >= Duration::from_millis(1500),
        "dropped {silent:?} after the last status, before wal_sender_timeout"
    );
    Ok(())
}
