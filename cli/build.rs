//! Records the commit the binary is built from (`SHARDPOOL_COMMIT`, for the provenance of bench and
//! compare reports): `git rev-parse --short=12 HEAD`, or "unknown" outside a git checkout.
//! Uncommitted changes are not flagged: the script reruns when HEAD moves, not on every edit.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // A new commit moves HEAD or the branch it names.
    for path in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SHARDPOOL_COMMIT={commit}");
}
