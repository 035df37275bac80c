//! Records the git commit the binary is built from, for `pgcdc --version`.
//! Outside a git checkout (a source tarball, a container build without `.git`)
//! the version is the crate's alone; `PGCDC_COMMIT` set by the builder wins.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PGCDC_COMMIT");
    if let Ok(commit) = std::env::var("PGCDC_COMMIT") {
        println!("cargo:rustc-env=PGCDC_COMMIT={commit}");
        return;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    // Rebuild when HEAD moves: HEAD itself (branch switch) and the ref it points to.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &reference]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
    let suffix = if dirty { "-modified" } else { "" };
    println!("cargo:rustc-env=PGCDC_COMMIT={commit}{suffix}");
}
