//! What `deploy/` ships, checked against the real tools: the OCI image built by
//! `scripts/build-image` (run from its root filesystem: `podman run` cannot
//! start containers in this sandbox), the Kubernetes manifests
//! (`kubernetes-validate --strict`, offline), the systemd unit
//! (`systemd-analyze verify`), the compose quick start's config and role SQL,
//! and the CLI habits the README promises (`PGCDC_CONFIG`, default paths,
//! `validate`, `check --json`, completions, man page).

mod e2e_fixture;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{run_output, run_output_env};
use pgcdc_tests::{pgcdc_bin, PgCluster, Pgcdc};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// The `pgcdc.toml` held by the manifest's ConfigMap (read with PyYAML, which
/// kubernetes-validate brings).
async fn configmap_toml(manifest: &Path) -> anyhow::Result<String> {
    let script = "import sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n\
                  print(next(d for d in docs if d['kind'] == 'ConfigMap')['data']['pgcdc.toml'])";
    let (code, out, err) = run_output(
        Path::new("python3"),
        &["-c", script, &manifest.to_string_lossy()],
    )
    .await?;
    ensure!(code == 0, "reading the ConfigMap failed: {err}");
    Ok(out)
}

const FAKE_ENV: [(&str, &str); 5] = [
    (
        "PGCDC_SOURCE_URL",
        "postgres://pgcdc@db.invalid:5432/portal",
    ),
    (
        "PGCDC_STATE_URL",
        "postgres://pgcdc_state@state.invalid:5432/pgcdc",
    ),
    ("PGCDC_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef"),
    ("REGISTRY_TOKEN", "registry-token"),
    ("PGCDC_CONFIG", ""),
];

#[tokio::test]
async fn kubernetes_manifests_validate_and_their_config_is_valid() -> anyhow::Result<()> {
    // (file, name, kinds): the single node and the HA pair.
    let manifests = [
        (
            "pgcdc.yaml",
            "pgcdc",
            &["configmap", "statefulset", "service", "poddisruptionbudget"][..],
        ),
        (
            "pgcdc-ha.yaml",
            "pgcdc-ha",
            &["configmap", "deployment", "service", "poddisruptionbudget"][..],
        ),
    ];
    for (file, name, kinds) in manifests {
        let manifest = repo().join("deploy/kubernetes").join(file);
        let (code, out, err) = run_output(
            Path::new("kubernetes-validate"),
            &["--strict", "-k", "1.30.0", &manifest.to_string_lossy()],
        )
        .await
        .context(
            "kubernetes-validate (pip install kubernetes-validate; scripts/test installs it)",
        )?;
        ensure!(
            code == 0,
            "kubernetes-validate {file} failed:\n{out}\n{err}"
        );
        for kind in kinds {
            ensure!(
                out.contains(&format!("resource {kind}/{name}")),
                "{file}: no {kind} validated:\n{out}"
            );
        }

        // The config the pod runs must itself be valid for this pgcdc.
        let toml = configmap_toml(&manifest).await?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pgcdc.toml");
        std::fs::write(&path, &toml)?;
        let (code, out, err) = run_output_env(
            &pgcdc_bin(),
            &["validate", "--config", &path.to_string_lossy()],
            &FAKE_ENV,
        )
        .await?;
        ensure!(
            code == 0,
            "{file}: the ConfigMap's pgcdc.toml is invalid:\n{out}{err}"
        );
        if name == "pgcdc-ha" {
            ensure!(
                toml.contains("[ha]") && toml.contains("${PGCDC_STATE_URL}"),
                "{file}: the HA config has no [ha] or no state url from the Secret"
            );
        }
    }
    // The HA pair: two replicas, one may be disrupted at a time, both probed.
    let ha = std::fs::read_to_string(repo().join("deploy/kubernetes/pgcdc-ha.yaml"))?;
    for needle in [
        "replicas: 2",
        "minAvailable: 1",
        "path: /readyz",
        "path: /healthz",
        "secretRef: {name: pgcdc-ha}",
    ] {
        ensure!(ha.contains(needle), "pgcdc-ha.yaml lacks {needle:?}");
    }
    Ok(())
}

#[tokio::test]
async fn systemd_unit_verifies() -> anyhow::Result<()> {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/pgcdc.service"))?;
    ensure!(unit.contains("Type=notify"), "the unit is not Type=notify");
    // `verify` checks that ExecStart's binary exists: point it at the built one.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pgcdc.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/pgcdc", &pgcdc_bin().to_string_lossy()),
    )?;
    let (code, out, err) = run_output(
        Path::new("systemd-analyze"),
        &["verify", &path.to_string_lossy()],
    )
    .await?;
    ensure!(
        code == 0 && err.trim().is_empty(),
        "systemd-analyze verify: exit {code}\n{out}\n{err}"
    );
    Ok(())
}

/// Builds the image from the test binary and returns its root filesystem.
async fn build_image_rootfs(tag: &str) -> anyhow::Result<tempfile::TempDir> {
    let rootfs = tempfile::Builder::new().prefix("pgcdc-rootfs-").tempdir()?;
    let script = repo().join("scripts/build-image");
    let (code, out, err) = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(&script)
            .args(["--tag", tag, "--rootfs", &rootfs.path().to_string_lossy()])
            .env("PGCDC_BIN", pgcdc_bin())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map(|r| {
        r.map(|o| {
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
    })
    .context("scripts/build-image took over 300 s")??;
    ensure!(code == 0, "scripts/build-image failed:\n{out}\n{err}");
    ensure!(
        out.contains(&format!("built {tag}")),
        "no image reported:\n{out}"
    );
    Ok(rootfs)
}

/// Mounts /proc inside the root filesystem (pgcdc starts its jq workers from
/// /proc/self/exe) and unmounts it on drop.
struct ProcMount(PathBuf);

impl ProcMount {
    fn new(rootfs: &Path) -> anyhow::Result<ProcMount> {
        let target = rootfs.join("proc");
        let status = std::process::Command::new("mount")
            .args(["-t", "proc", "proc", &target.to_string_lossy()])
            .status()?;
        ensure!(
            status.success(),
            "mount -t proc failed (the tests run as root)"
        );
        Ok(ProcMount(target))
    }
}

impl Drop for ProcMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn image_from_scratch_runs_check_and_streams_as_its_non_root_user() -> anyhow::Result<()> {
    let tag = format!("localhost/pgcdc-test:{}", std::process::id());
    let rootfs = build_image_rootfs(&tag).await?;
    let root = rootfs.path().to_string_lossy().into_owned();
    // The image is in buildah's store; the test keeps only its filesystem.
    let _ = run_output(Path::new("buildah"), &["rmi", "-f", &tag]).await;

    // Nothing from the build machine leaks in: the binary runs on what the image holds.
    let chroot = Path::new("chroot");
    let as_user = ["--userspec=10001:10001", &root];
    let (code, out, err) = run_output(
        chroot,
        &[as_user[0], as_user[1], "/usr/local/bin/pgcdc", "--version"],
    )
    .await?;
    ensure!(
        code == 0 && out.starts_with("pgcdc "),
        "--version in the image: {out}{err}"
    );

    // The compose quick start's database: its init.sql (sample table, least-privilege role).
    let pg = PgCluster::new().await?;
    pg.batch(&std::fs::read_to_string(
        repo().join("deploy/compose/init.sql"),
    )?)
    .await?;
    let compose_toml = std::fs::read_to_string(repo().join("deploy/compose/pgcdc.toml"))?;
    let toml = compose_toml.replace("0.0.0.0:9187", "127.0.0.1:0");
    std::fs::write(rootfs.path().join("etc/pgcdc/pgcdc.toml"), toml)?;
    let url = pg.url_for("pgcdc", "pgcdc", "postgres");
    let env = [
        ("PGCDC_SOURCE_URL", url.as_str()),
        ("PGCDC_ADMIN_TOKEN", "devtoken-change-me-0123456789"),
    ];
    let (code, out, err) = run_output_env(
        chroot,
        &[as_user[0], as_user[1], "/usr/local/bin/pgcdc", "check"],
        &env,
    )
    .await?;
    ensure!(
        code == 0,
        "pgcdc check in the image (exit {code}):\n{out}{err}"
    );

    // `run` as the image's user, state in the image's volume path.
    let _proc = ProcMount::new(rootfs.path())?;
    let mut p = Pgcdc::spawn_bin(
        chroot,
        &[as_user[0], as_user[1], "/usr/local/bin/pgcdc", "run"],
        &[env[0], env[1], ("PGCDC_CONFIG", "/etc/pgcdc/pgcdc.toml")],
    )?;
    // The snapshot brings the two sample rows first.
    let lines = p.collect_lines(2, Duration::from_secs(60)).await;
    ensure!(
        lines.len() == 2,
        "snapshot rows from the image: {lines:?}\n{}",
        p.stderr_tail(20)
    );
    for line in &lines {
        let e: Value = serde_json::from_str(line)?;
        ensure!(e["op"] == "read", "not a snapshot row: {line}");
    }
    pg.execute("UPDATE permits SET status = 'approved' WHERE id = 1")
        .await?;
    let line = p
        .next_line(Duration::from_secs(30))
        .await
        .with_context(|| format!("no event for the update:\n{}", p.stderr_tail(20)))?;
    let e: Value = serde_json::from_str(&line)?;
    ensure!(
        e["op"] == "update" && e["new"]["status"] == "approved" && e["key"]["id"] == 1,
        "unexpected event: {line}"
    );
    p.terminate()?;
    p.wait_exit(Duration::from_secs(30)).await;
    let journal = rootfs.path().join("var/lib/pgcdc/journal.db");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&journal)?);
    ensure!(
        owner == 10001,
        "the journal belongs to uid {owner}, not the image's user"
    );
    Ok(())
}

#[tokio::test]
async fn config_is_found_by_flag_env_and_default_path() -> anyhow::Result<()> {
    let bin = pgcdc_bin();
    let dir = tempfile::tempdir()?;
    let cfg = repo().join("deploy/compose/pgcdc.toml");
    let env = [
        ("PGCDC_SOURCE_URL", "postgres://pgcdc@db.invalid/portal"),
        ("PGCDC_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef"),
    ];
    let in_dir = |args: &'static [&'static str], extra: Vec<(&'static str, String)>| {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(args)
            .current_dir(dir.path())
            .env_remove("PGCDC_CONFIG")
            .envs(env)
            .envs(extra)
            .kill_on_drop(true);
        async move {
            let o = cmd.output().await?;
            anyhow::Ok((
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ))
        }
    };
    // Nothing given, no ./pgcdc.toml (and none in /etc/pgcdc on a test machine).
    if !Path::new("/etc/pgcdc/pgcdc.toml").exists() {
        let (code, _, err) = in_dir(&["validate"], vec![]).await?;
        ensure!(
            code == 2 && err.contains("PGCDC_CONFIG") && err.contains("--config"),
            "no config: exit {code}: {err}"
        );
    }
    // PGCDC_CONFIG.
    let (code, out, err) = in_dir(
        &["validate"],
        vec![("PGCDC_CONFIG", cfg.to_string_lossy().into_owned())],
    )
    .await?;
    ensure!(
        code == 0 && out.contains("pgcdc.toml"),
        "PGCDC_CONFIG: {code} {out}{err}"
    );
    // ./pgcdc.toml.
    std::fs::copy(&cfg, dir.path().join("pgcdc.toml"))?;
    let (code, out, err) = in_dir(&["validate"], vec![]).await?;
    ensure!(code == 0, "./pgcdc.toml: {code} {out}{err}");
    Ok(())
}

#[tokio::test]
async fn validate_names_the_bad_key_offline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.toml");
    // A jq syntax error in the second sink's filter; the source is unreachable on
    // purpose: validate connects to nothing.
    std::fs::write(
        &path,
        "[source]\nurl = \"postgres://x@db.invalid/portal\"\ntables = [\"public.permits\"]\n\
         [[sink]]\nname = \"a\"\ntype = \"stdout\"\n\
         [[sink]]\nname = \"b\"\ntype = \"stdout\"\nfilter = '.op == '\n",
    )?;
    let (code, out, err) = run_output(
        &pgcdc_bin(),
        &["validate", "--config", &path.to_string_lossy()],
    )
    .await?;
    ensure!(code == 2, "exit {code}: {out}{err}");
    ensure!(
        err.contains("sink[1].filter"),
        "the key path is missing: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn check_json_reports_each_check() -> anyhow::Result<()> {
    let pg = PgCluster::builder()
        .setting("wal_level", "logical")
        .start()
        .await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pgcdc.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = \"{}\"\ntables = [\"public.permits\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[sink]]\nname = \"out\"\ntype = \"stdout\"\n",
            pg.url()
        ),
    )?;
    let (code, out, err) = run_output(
        &pgcdc_bin(),
        &["check", "--json", "--config", &path.to_string_lossy()],
    )
    .await?;
    let doc: Value = serde_json::from_str(&out)
        .with_context(|| format!("not JSON (exit {code}): {out}{err}"))?;
    ensure!(
        doc["ok"] == (code == 0),
        "ok does not match the exit code {code}: {doc}"
    );
    let checks = doc["checks"].as_array().context("no checks")?;
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    for want in ["config", "source connection", "wal_level", "sink out"] {
        ensure!(names.contains(&want), "no {want} check in {names:?}");
    }
    ensure!(
        checks
            .iter()
            .all(|c| matches!(c["status"].as_str(), Some("ok" | "warn" | "fail"))),
        "a status outside ok/warn/fail: {doc}"
    );
    Ok(())
}

#[tokio::test]
async fn shell_completions_man_page_version_and_strict_flags() -> anyhow::Result<()> {
    let bin = pgcdc_bin();
    for (shell, marker) in [
        ("bash", "complete -F _pgcdc"),
        ("zsh", "#compdef pgcdc"),
        ("fish", "complete -c pgcdc"),
    ] {
        let (code, out, err) = run_output(&bin, &["completions", shell]).await?;
        ensure!(
            code == 0 && out.contains(marker),
            "{shell} completions: {err}"
        );
        ensure!(
            out.contains("checkpoint"),
            "{shell} completions lack subcommands"
        );
    }
    let (code, out, _) = run_output(&bin, &["man"]).await?;
    ensure!(
        code == 0 && out.contains(".TH pgcdc 1"),
        "man page: {out:.200}"
    );

    let (_, version, _) = run_output(&bin, &["--version"]).await?;
    ensure!(
        version
            .trim()
            .starts_with(&format!("pgcdc {}", env!("CARGO_PKG_VERSION"))),
        "--version: {version}"
    );

    // Flags that mean nothing for a subcommand are refused, not ignored.
    for args in [
        &["dlq", "replay", "--sink", "s", "--all", "--json"][..],
        &["dlq", "list", "--sink", "s", "--all"][..],
        &["dlq", "drop", "--sink", "s"][..],
    ] {
        let (code, _, err) = run_output(&bin, args).await?;
        ensure!(
            code == 2 && err.contains("error:"),
            "{args:?} accepted: {err}"
        );
    }
    Ok(())
}
