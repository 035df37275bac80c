use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    let env = |name: &str| match name {
        "PG_URL" => Some("postgres://pgcdc:secret@127.0.0.1:5432/portal".to_string()),
        _ => None,
    };
    Config::parse(text, Path::new("test.toml"), &env)
}

const GOOD: &str = r#"
[source]
url = "${PG_URL}"
tables = ["public.permits", "inspections"]

[state]
dir = "/tmp/x"

[[sink]]
name = "out"
type = "stdout"
tables = ["public.permits"]
"#;

#[test]
fn good_config_loads_with_defaults() {
    let c = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.source.publication, "pgcdc");
    assert_eq!(c.source.slot, "pgcdc");
    assert_eq!(c.source.snapshot, SnapshotMode::Never);
    assert_eq!(
        c.source.url.expose(),
        "postgres://pgcdc:secret@127.0.0.1:5432/portal"
    );
    assert_eq!(
        c.tables()[1],
        TableName {
            schema: "public".into(),
            table: "inspections".into()
        }
    );
    assert_eq!(c.sink[0].name(), "out");
    assert!(
        !format!("{c:?}").contains("secret"),
        "Debug must redact the source url"
    );
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_keys_name_their_path() {
    let e = err(&GOOD.replace("name = \"out\"", "name = \"out\"\ncolour = \"red\""));
    assert!(e.contains("sink[0]") && e.contains("colour"), "{e}");
    let e = err(&GOOD.replace("[state]", "[state]\nsize = 3"));
    assert!(e.contains("state") && e.contains("size"), "{e}");
}

#[test]
fn missing_env_var_is_named() {
    let e = err(&GOOD.replace("${PG_URL}", "${NOPE_URL}"));
    assert!(e.contains("source.url") && e.contains("NOPE_URL"), "{e}");
    let c = parse(&GOOD.replace("${PG_URL}", "${NOPE_URL:-postgres://localhost/x}"));
    assert!(c.is_ok());
}

#[test]
fn bad_values_are_explained() {
    assert!(err("[source\nurl=1").contains("not valid TOML"));
    let e = err(&GOOD.replace(
        "tables = [\"public.permits\", \"inspections\"]",
        "tables = []",
    ));
    assert!(e.contains("source.tables"), "{e}");
    let e = err(&GOOD.replace("\"inspections\"", "\"a.b.c\""));
    assert!(e.contains("source.tables[1]"), "{e}");
    let e = err(&GOOD.replace(
        "tables = [\"public.permits\"]\n",
        "tables = [\"public.other\"]\n",
    ));
    assert!(
        e.contains("sink[0].tables[0]") && e.contains("not in source.tables"),
        "{e}"
    );
    let e = err(&GOOD.replace("type = \"stdout\"", "type = \"carrier-pigeon\""));
    assert!(e.contains("sink[0]") && e.contains("carrier-pigeon"), "{e}");
    let e = err(&format!(
        "{GOOD}\n[[sink]]\nname = \"out\"\ntype = \"stdout\"\n"
    ));
    assert!(e.contains("sink[1].name") && e.contains("twice"), "{e}");
    let e = err(&GOOD.replace("[state]", "[source.x]\n[state]"));
    assert!(e.contains("source"), "{e}");
    let e = err(&GOOD.replace(
        "url = \"${PG_URL}\"",
        "url = \"${PG_URL}\"\nslot = \"Bad-Slot\"",
    ));
    assert!(e.contains("source.slot"), "{e}");
    let e = err(&GOOD.replace("url = \"${PG_URL}\"", "url = \"mysql://x\""));
    assert!(e.contains("source.url"), "{e}");
    let e = err(&GOOD.replace(
        "url = \"${PG_URL}\"",
        "url = \"${PG_URL}\"\nsnapshot = \"sometimes\"",
    ));
    assert!(e.contains("snapshot"), "{e}");
}

#[test]
fn expressions_urls_and_sink_keys_are_checked_before_anything_connects() {
    let with_sink = |sink: &str| {
        format!("{GOOD}\n[[trigger]]\nname = \"t\"\ntable = \"public.permits\"\nwhen = '.new.status == \"x\"'\n{sink}")
    };
    let http = |extra: &str| {
        with_sink(&format!("[[sink]]\nname = \"api\"\ntype = \"http\"\nurl = \"https://x.example/p/{{.new.id}}\"\n{extra}\n"))
    };
    assert!(parse(&http("")).is_ok(), "{:?}", parse(&http("")).err());

    let e2 = err(&GOOD.replace(
        "[state]",
        "[[trigger]]\nname = \"t\"\ntable = \"public.permits\"\nwhen = '.new.status =='\n[state]",
    ));
    assert!(e2.contains("trigger[0].when") && e2.contains("1:"), "{e2}");
    let e = err(&http("transform = '{a: .new.id'"));
    assert!(
        e.contains("sink[1].transform") && e.contains("invalid jq"),
        "{e}"
    );
    let e = err(&http("filter = 'nosuchfn(1)'"));
    assert!(e.contains("sink[1].filter"), "{e}");
    let e = err(&with_sink(
        "[[sink]]\nname = \"api\"\ntype = \"http\"\nurl = \"ftp://x\"\n",
    ));
    assert!(e.contains("sink[1].url") && e.contains("http"), "{e}");
    let e = err(&with_sink(
        "[[sink]]\nname = \"api\"\ntype = \"http\"\nurl = \"https://x/{new.id}\"\n",
    ));
    assert!(e.contains("sink[1].url"), "{e}");
    let e = err(&http("retry = { max_atempts = 3 }"));
    assert!(e.contains("sink[1]") && e.contains("max_atempts"), "{e}");
    let e = err(&http("events = [\"nope\"]"));
    assert!(e.contains("sink[1].events[0]") && e.contains("nope"), "{e}");
    let e = err(&with_sink(
        "[[sink]]\nname = \"out2\"\ntype = \"stdout\"\nurl = \"https://x\"\n",
    ));
    assert!(e.contains("sink[1].url") && e.contains("stdout"), "{e}");
    let e = err(&GOOD.replace(
        "[state]",
        "[[trigger]]\nname = \"t\"\ntable = \"public.other\"\nwhen = 'true'\n[state]",
    ));
    assert!(e.contains("trigger[0].table"), "{e}");
}

#[test]
fn a_relative_state_dir_is_taken_from_the_config_files_directory() {
    let mut state = StateConfig::default();
    state.resolve_dir(Path::new("/etc/pgcdc/pgcdc.toml"));
    assert_eq!(state.dir, Path::new("/etc/pgcdc/pgcdc-data"));
    let mut state = StateConfig {
        dir: PathBuf::from("/var/lib/pgcdc"),
        ..StateConfig::default()
    };
    state.resolve_dir(Path::new("/etc/pgcdc/pgcdc.toml"));
    assert_eq!(state.dir, Path::new("/var/lib/pgcdc"));
    // A bare file name: the working directory, made absolute.
    let mut state = StateConfig::default();
    state.resolve_dir(Path::new("pgcdc.toml"));
    assert!(state.dir.is_absolute() && state.dir.ends_with("pgcdc-data"));
}

#[test]
fn dollar_dollar_brace_is_a_literal() {
    let c = parse(&GOOD.replace("dir = \"/tmp/x\"", "dir = \"/tmp/$${PG_URL}\""))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.state.dir, Path::new("/tmp/${PG_URL}"));
    let e = err(&GOOD.replace("dir = \"/tmp/x\"", "dir = \"/tmp/${x\""));
    assert!(e.contains("$${"), "{e}");
}

#[test]
fn jq_programs_are_taken_verbatim() {
    let text = format!(
        "{GOOD}\n[[trigger]]\nname = \"t\"\ntable = \"public.permits\"\n\
         when = '.new.note == \"${{PG_URL}}\"'\n\n\
         [[sink]]\nname = \"h\"\ntype = \"stdout\"\n\
         transform = '{{a: \"cost ${{5}}\", b: \"${{HOME}}\"}}'\n\
         filter = '.new.x != \"${{PG_URL}}\"'\n"
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.trigger[0].when, ".new.note == \"${PG_URL}\"");
    assert_eq!(
        c.sink[1].transform.as_deref(),
        Some("{a: \"cost ${5}\", b: \"${HOME}\"}")
    );
    assert_eq!(c.sink[1].filter.as_deref(), Some(".new.x != \"${PG_URL}\""));
    // Everywhere else, `${VAR}` is still substituted.
    assert!(c.source.url.expose().contains("secret@"));
}

#[test]
fn program_paths_are_recognised() {
    assert!(is_jq_program("sink[3].transform"));
    assert!(is_jq_program("sink[0].filter"));
    assert!(is_jq_program("sink[0].key"));
    assert!(is_jq_program("trigger[12].when"));
    assert!(!is_jq_program("sink[0].url"));
    assert!(!is_jq_program("sink[0].headers.transform"));
    assert!(!is_jq_program("source.url"));
    assert!(!is_jq_program("trigger[0].table"));
}

#[test]
fn jq_limits_default_and_are_validated_by_key() {
    let c = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.jq.limits(), pgcdc_schema::mapping::Limits::DEFAULT);
    let with = |lines: &str| GOOD.replace("[state]", &format!("[jq]\n{lines}\n\n[state]"));
    let c = parse(&with("timeout_ms = 250\nmax_outputs = 5")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((c.jq.timeout_ms, c.jq.max_outputs), (250, 5));
    for (lines, key) in [
        ("timeout_ms = 0", "jq.timeout_ms"),
        ("timeout_ms = 600001", "jq.timeout_ms"),
        ("max_outputs = 0", "jq.max_outputs"),
        ("max_output_bytes = 10", "jq.max_output_bytes"),
        ("max_memory_mb = 64", "jq.max_memory_mb"),
        ("fuel = 3", "fuel"),
    ] {
        let e = err(&with(lines));
        assert!(e.contains(key), "{lines}: {e}");
    }
}

#[test]
fn durations_are_parsed_at_load_and_bad_ones_name_their_key() {
    use std::time::Duration;
    let c = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.source.heartbeat(), Some(Duration::from_secs(10)));
    assert_eq!(c.journal.retention(), Duration::from_secs(7 * 86_400));
    assert_eq!(c.audit.retention(), Duration::from_secs(30 * 86_400));
    assert_eq!(c.admin.ready_max_sink_lag(), Duration::from_secs(300));
    let set = |section: &str, line: &str| {
        GOOD.replace("[state]", &format!("[{section}]\n{line}\n\n[state]"))
    };
    let c = parse(&set("journal", "retention = \"12h\"")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.journal.retention(), Duration::from_secs(12 * 3600));
    let c = parse(&GOOD.replacen("tables = [", "heartbeat = \"0s\"\ntables = [", 1))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.source.heartbeat(), None);
    for (section, line, key, example) in [
        (
            "journal",
            "retention = \"soon\"",
            "journal.retention",
            "\"7d\"",
        ),
        (
            "audit",
            "retention = \"1 fortnight\"",
            "audit.retention",
            "\"30d\"",
        ),
        (
            "admin",
            "ready_max_sink_lag = \"x\"",
            "admin.ready_max_sink_lag",
            "\"5m\"",
        ),
    ] {
        let e = err(&set(section, line));
        assert!(
            e.contains(&format!("`{key}`"))
                && e.contains("is not a duration")
                && e.contains(example),
            "{line}: {e}"
        );
    }
    let e = err(&GOOD.replacen("tables = [", "heartbeat = \"often\"\ntables = [", 1));
    assert!(
        e.contains("`source.heartbeat`") && e.contains("\"0s\" to turn it off"),
        "{e}"
    );
}

#[test]
fn table_names_are_parsed_at_load() {
    let c = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.sink[0].tables()[0].to_string(), "public.permits");
    let e = err(&GOOD.replace(
        "tables = [\"public.permits\"]",
        "tables = [\"public.permits\", \"a.b.c\"]",
    ));
    assert!(
        e.contains("`sink[0].tables[1]`") && e.contains("\"a.b.c\" is not a table name"),
        "{e}"
    );
}

#[test]
fn state_url_selects_postgres_with_its_password_hidden() {
    let c = parse(&GOOD.replace(
        "dir = \"/tmp/x\"",
        "url = \"${PG_URL}\"\nschema = \"cdc_state\"",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let url = c.state.url().ok().flatten().map(|u| u.to_string());
    assert_eq!(
        url.as_deref(),
        Some("postgres://pgcdc:***@127.0.0.1:5432/portal?sslmode=prefer")
    );
    assert_eq!(c.state.schema, "cdc_state");
    assert!(
        !format!("{c:?}").contains("secret"),
        "Debug must redact the state url"
    );
    let store = crate::journal::Store::from_config(&c.state);
    assert!(!store.describe().contains("secret"), "{}", store.describe());
    assert!(
        store.describe().contains("cdc_state"),
        "{}",
        store.describe()
    );
    // The default schema, and a bad url named by its key without the password.
    let c = parse(&GOOD.replace("dir = \"/tmp/x\"", "url = \"${PG_URL}\""));
    assert_eq!(c.map(|c| c.state.schema).ok().as_deref(), Some("pgcdc"));
    let e = err(&GOOD.replace("dir = \"/tmp/x\"", "url = \"mysql://u:secret@h/db\""));
    assert!(e.contains("state.url") && !e.contains("secret"), "{e}");
    let e = err(&GOOD.replace(
        "dir = \"/tmp/x\"",
        "url = \"${PG_URL}\"\nschema = \"Bad-Name\"",
    ));
    assert!(e.contains("state.schema"), "{e}");
}

#[test]
fn tables_take_a_row_filter_and_column_list() {
    let text = GOOD.replace(
        "tables = [\"public.permits\", \"inspections\"]",
        "tables = [{ name = \"public.permits\", where = \"id > 100\", columns = [\"id\", \"status\"] }, \"inspections\"]\npublish = \"insert, update\"",
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let entries = c.source.tables.entries();
    assert_eq!(c.tables()[1].to_string(), "public.inspections");
    assert_eq!(entries[0].row_filter.as_deref(), Some("id > 100"));
    assert_eq!(
        entries[0].publication_sql(),
        "\"public\".\"permits\" (\"id\", \"status\") WHERE (id > 100)"
    );
    assert!(!entries[1].is_filtered());
    assert_eq!(c.source.published_operations(), ["insert", "update"]);

    let with = |entry: &str| {
        GOOD.replace(
            "tables = [\"public.permits\", \"inspections\"]",
            &format!("tables = [\"inspections\", {entry}]"),
        )
    };
    let e = err(&with("{ name = \"public.permits\", wher = \"x\" }"));
    assert!(e.contains("source.tables[1]") && e.contains("wher"), "{e}");
    let e = err(&with("{ name = \"public.permits\", where = \" \" }"));
    assert!(e.contains("source.tables[1].where"), "{e}");
    let e = err(&with("{ name = \"public.permits\", columns = [] }"));
    assert!(e.contains("source.tables[1].columns"), "{e}");
    let e = err(&with(
        "{ name = \"public.permits\", columns = [\"id\", \"id\"] }",
    ));
    assert!(e.contains("source.tables[1].columns[1]"), "{e}");
    let e = err(&with("\"public.inspections\""));
    assert!(e.contains("listed twice"), "{e}");
    let e = err(&with("42"));
    assert!(
        e.contains("source.tables[1]") && e.contains("a table name"),
        "{e}"
    );
    let e = err(&GOOD.replace(
        "tables = [\"public.permits\", \"inspections\"]",
        "tables = [\"public.permits\"]\npublish = \"insert, upsert\"",
    ));
    assert!(e.contains("source.publish"), "{e}");
}

const DELIVER: &str = r#"
[deliver]
brokers = "127.0.0.1:9092"
topics = ["portal.public.permits"]
group = "registry"

[[trigger]]
name = "approved"
table = "public.permits"
when = '.new.status == "approved"'

[[sink]]
name = "registry"
type = "http"
events = ["approved"]
url = "http://127.0.0.1:1/hook"
"#;

#[test]
fn a_deliver_config_needs_no_source_and_allows_only_http_and_stdout_sinks() {
    let c = parse(DELIVER).unwrap_or_else(|e| panic!("{e}"));
    let d = c.deliver.unwrap_or_else(|| panic!("no [deliver]"));
    assert_eq!((d.group.as_str(), d.max_batch), ("registry", 500));
    let both = format!(
        "{GOOD}{}",
        DELIVER.replace("[[sink]]\nname = \"registry\"", "[[sink]]\nname = \"r2\"")
    );
    assert!(err(&both).contains("either [source]"), "{}", err(&both));
    let kafka =
        format!("{DELIVER}\n[[sink]]\nname = \"bus\"\ntype = \"kafka\"\nbrokers = \"b:1\"\n");
    assert!(err(&kafka).contains("sink[1].type"), "{}", err(&kafka));
    for (from, to, key) in [
        (
            "topics = [\"portal.public.permits\"]",
            "topics = []",
            "deliver.topics",
        ),
        (
            "topics = [\"portal.public.permits\"]",
            "topics = [\"a b\"]",
            "deliver.topics[0]",
        ),
        ("group = \"registry\"", "group = \"\"", "deliver.group"),
        (
            "group = \"registry\"",
            "group = \"registry\"\nmax_batch = 0",
            "deliver.max_batch",
        ),
        (
            "group = \"registry\"",
            "group = \"registry\"\nauto_commit = true",
            "deliver.auto_commit",
        ),
    ] {
        let e = err(&DELIVER.replace(from, to));
        assert!(e.contains(key), "{key}: {e}");
    }
}

#[test]
fn source_commands_refuse_a_deliver_config() {
    let c = parse(DELIVER).unwrap_or_else(|e| panic!("{e}"));
    let e = c
        .require_source()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("pgcdc deliver") && e.contains("pgcdc run"),
        "{e}"
    );
    let e = c
        .source_url()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("pgcdc deliver"), "{e}");
    assert!(parse(GOOD).is_ok_and(|c| c.require_source().is_ok()));
}
