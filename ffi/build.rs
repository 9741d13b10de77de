//! Stamps the git commit and build profile into the library (reported by
//! the `version` method), and marks the cdylib as never-unloadable.
use std::path::Path;
use std::process::Command;

fn main() {
    // A release build names its source (make: the last commit that changed
    // a build input), so a later commit touching only other files rebuilds
    // the same bytes; otherwise HEAD.
    println!("cargo:rerun-if-env-changed=LOCKBOX_SOURCE_COMMIT");
    let source = std::env::var("LOCKBOX_SOURCE_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(12).collect());
    let commit = source.clone().unwrap_or_else(git_head);
    println!("cargo:rustc-env=LOCKBOX_GIT_COMMIT={commit}");
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=LOCKBOX_BUILD_PROFILE={profile}");

    // Rebuild when HEAD moves, so the commit stays truthful.
    let git = Path::new("../.git");
    for f in ["HEAD", "refs/heads"] {
        let p = git.join(f);
        if source.is_none() && p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");

    // The library owns runtime threads and a panic hook; unloading it while
    // they live would leave dangling code pointers in the host. dlclose()
    // becomes a no-op with -z nodelete.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}

fn git_head() -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
