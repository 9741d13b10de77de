//! What a crash (kill -9 of the process, or of the host) leaves in the
//! store, found and removed when the next engine opens it instead of
//! waiting for a Prune:
//! - `tmp/<unique>/`: an install that never finished. Each install claims
//!   its temp dir first, with a flock on `tmp/<unique>.lock` held until it
//!   returns, so only dirs nobody claims (their process is gone) go;
//! - `<key>/` without `.complete`: a crash between the rename and the
//!   marker (the digest lock is free when its installer is gone);
//! - Fork's unnamed images (`fork.lock` inside) that no sandbox uses. A
//!   fork holds `fork.lock` shared from the copy until its children's
//!   configs name the image, so neither this nor Prune takes it from
//!   under a fork in progress.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{ImageError, IoContext, Result};
use crate::store::ImageStore;

const FORK_LOCK: &str = "fork.lock";

/// A flock held on a file, released when dropped.
fn try_flock(path: &Path, create: bool, exclusive: bool) -> Option<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: a valid fd for the life of `f`.
    (unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0).then_some(f)
}

/// An install's claim on its temp dir: `<dir>.lock`, flocked, removed
/// when the install is over.
pub(crate) struct TempClaim {
    path: PathBuf,
    _file: File,
}

impl TempClaim {
    pub(crate) fn take(dir: &Path) -> Result<TempClaim> {
        let path = claim_path(dir);
        // A reclaim removes a lone claim (a process killed before its
        // mkdir) while holding its flock, so it may unlink the file between
        // our open and our flock: the claim counts only if the path still
        // names the file we locked. A retry makes a new one.
        for _ in 0..3 {
            let Some(file) = try_flock(&path, true, true) else {
                break;
            };
            if names_file(&path, &file) {
                return Ok(TempClaim { path, _file: file });
            }
        }
        Err(ImageError::io(
            "claim",
            &path,
            std::io::Error::other("the temp dir's claim is held"),
        ))
    }
}

/// Whether `path` (not followed) is the file `f` has open.
fn names_file(path: &Path, f: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(path), f.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A claim file with no temp dir beside it (its process died between the
/// claim and the mkdir, or after removing the dir): removed under its
/// flock when nobody holds it. True if it was removed.
fn remove_lone_claim(claim: &Path) -> bool {
    let Some(dir) = claim
        .to_str()
        .and_then(|s| s.strip_suffix(".lock"))
        .map(PathBuf::from)
    else {
        return false;
    };
    if std::fs::symlink_metadata(&dir).is_ok() {
        return false;
    }
    let Some(_held) = try_flock(claim, false, true) else {
        return false;
    };
    // Under the flock nobody can be between claim and mkdir.
    std::fs::symlink_metadata(&dir).is_err() && std::fs::remove_file(claim).is_ok()
}

impl Drop for TempClaim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn claim_path(dir: &Path) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// A fork in progress: its image may not be removed while this is held.
pub struct ForkHold {
    _file: File,
}

/// What a reclaim removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReclaimReport {
    pub temp_dirs: u64,
    /// Claim files whose temp dir was never made (or already gone).
    pub lone_claims: u64,
    pub incomplete_images: u64,
    pub unused_forks: Vec<Digest>,
}

impl ImageStore {
    /// Marks the image being filled at `image_dir` (still a temp dir) as
    /// a fork's and holds it as in progress.
    pub(crate) fn hold_fork(image_dir: &Path) -> Result<ForkHold> {
        let p = image_dir.join(FORK_LOCK);
        let file = try_flock(&p, true, false)
            .ok_or_else(|| ImageError::io("lock", &p, std::io::Error::last_os_error()))?;
        Ok(ForkHold { _file: file })
    }

    /// Whether `d` is a fork's image whose fork has not finished.
    pub(crate) fn fork_in_progress(&self, d: &Digest) -> bool {
        let p = self.image_dir(d).join(FORK_LOCK);
        p.exists() && try_flock(&p, false, true).is_none()
    }

    fn is_fork(&self, d: &Digest) -> bool {
        self.image_dir(d).join(FORK_LOCK).exists()
    }

    /// Removes what crashed installs and forks left (see the module doc).
    /// `in_use`: digests live sandboxes (of any engine) are made from.
    /// Fork images and incomplete dirs are only touched when the store's
    /// lock is free at once (no install, remove or prune running); temp
    /// dirs whenever their claim is free.
    pub fn reclaim_interrupted(&self, in_use: &[Digest]) -> Result<ReclaimReport> {
        let mut rep = ReclaimReport::default();
        let tmp = self.root().join("tmp");
        for ent in std::fs::read_dir(&tmp).ctx("readdir", &tmp)? {
            let ent = ent.ctx("readdir", &tmp)?;
            if ent.file_type().is_ok_and(|t| t.is_file()) {
                if remove_lone_claim(&ent.path()) {
                    rep.lone_claims += 1;
                }
                continue;
            }
            if !ent.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let claim = claim_path(&ent.path());
            let Some(_held) = try_flock(&claim, true, true) else {
                continue;
            };
            make_writable(&ent.path());
            std::fs::remove_dir_all(ent.path()).ctx("remove", &ent.path())?;
            let _ = std::fs::remove_file(&claim);
            rep.temp_dirs += 1;
        }
        let Some(_store) = try_flock(&self.root().join(".lock"), true, true) else {
            return Ok(rep);
        };
        let parents = self.referenced_parents()?;
        let named: Vec<Digest> = crate::refs::all(&self.root().join("refs"))?
            .into_iter()
            .map(|r| r.digest)
            .collect();
        for d in self.stored_digests()? {
            if !self.is_complete(&d) {
                let lock = self
                    .root()
                    .join("locks")
                    .join(format!("{}.lock", self.key(&d)));
                if try_flock(&lock, true, true).is_some() {
                    self.remove_content(&d)?;
                    rep.incomplete_images += 1;
                }
                continue;
            }
            if !self.is_fork(&d)
                || in_use.contains(&d)
                || parents.contains(&d)
                || named.contains(&d)
                || self.fork_in_progress(&d)
            {
                continue;
            }
            self.remove_content(&d)?;
            rep.unused_forks.push(d);
        }
        Ok(rep)
    }
}

/// Rootless copies keep the sandbox's modes: a directory without write
/// permission must get it back before its entries can be removed.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(
        dir,
        std::fs::Permissions::from_mode(m.permissions().mode() | 0o700),
    );
    if let Ok(list) = std::fs::read_dir(dir) {
        for e in list.flatten() {
            make_writable(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::Cancel;
    use crate::test_fixtures::{dir_fd, empty_layout, store};
    use crate::upper_copy::IdShift;

    fn listed(s: &ImageStore, d: &Digest) -> bool {
        s.list().unwrap().iter().any(|i| &i.digest == d)
    }

    // A crashed install's temp dir (no claim held) goes at the next
    // reclaim; a claimed one (an install running in some process) stays.
    // A fork's image stays while its fork holds it (from Prune too) and
    // while a sandbox uses it; after that the reclaim removes it. A
    // snapshot's image (no fork mark) is never touched.
    #[test]
    fn reclaims_only_what_nobody_holds() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        empty_layout(&t.path().join("layout"));
        let s = store(&home, 64 << 20);
        let base = s
            .import_oci_layout(
                &t.path().join("layout"),
                None,
                Some("base:1"),
                &Cancel::never(),
            )
            .unwrap();

        let crashed = s.root().join("tmp").join("123-crashed");
        std::fs::create_dir_all(crashed.join("rootfs/d")).unwrap();
        let running = s.root().join("tmp").join("456-running");
        let claim = TempClaim::take(&running).unwrap();
        std::fs::create_dir_all(running.join("rootfs")).unwrap();
        let rep = s.reclaim_interrupted(&[]).unwrap();
        assert_eq!(rep.temp_dirs, 1);
        assert!(!crashed.exists());
        assert!(running.exists(), "a claimed temp dir was removed");
        drop(claim);
        assert!(s.reclaim_interrupted(&[]).unwrap().temp_dirs == 1 && !running.exists());

        // A claim whose process died before its mkdir goes too; one still
        // held (a process between claim and mkdir) stays.
        let lone = s.root().join("tmp").join("789-killed.lock");
        std::fs::write(&lone, "").unwrap();
        let early = s.root().join("tmp").join("790-early");
        let held = TempClaim::take(&early).unwrap();
        let rep = s.reclaim_interrupted(&[]).unwrap();
        assert_eq!(rep.lone_claims, 1);
        assert!(!lone.exists(), "a lone claim was left");
        assert!(
            claim_path(&early).exists(),
            "a held claim without its dir yet was removed"
        );
        drop(held);
        assert!(!claim_path(&early).exists());

        let up = t.path().join("upper");
        std::fs::create_dir(&up).unwrap();
        std::fs::write(up.join("f"), "changed").unwrap();
        let (fork, hold) = s
            .install_fork_layer(
                &base.digest,
                dir_fd(&up),
                IdShift::Keep,
                None,
                "test fork".into(),
                false,
                &Cancel::never(),
            )
            .unwrap();
        let snap = s
            .install_layer(
                &base.digest,
                dir_fd(&up),
                IdShift::Keep,
                None,
                None,
                "test snapshot".into(),
                &Cancel::never(),
            )
            .unwrap();
        assert_eq!(
            std::fs::read(fork.rootfs.join("f")).unwrap(),
            b"changed".to_vec()
        );
        assert!(s.reclaim_interrupted(&[]).unwrap().unused_forks.is_empty());
        let pruned = s.prune(std::slice::from_ref(&base.digest)).unwrap();
        assert!(listed(&s, &fork.digest), "Prune took a fork in progress");
        assert!(
            pruned.removed.contains(&snap.digest),
            "control: Prune removes an unnamed snapshot"
        );
        drop(hold);
        assert!(s
            .reclaim_interrupted(std::slice::from_ref(&fork.digest))
            .unwrap()
            .unused_forks
            .is_empty());
        assert!(listed(&s, &fork.digest), "a fork image in use was removed");
        let rep = s.reclaim_interrupted(&[]).unwrap();
        assert_eq!(rep.unused_forks, vec![fork.digest.clone()]);
        assert!(!listed(&s, &fork.digest));
        assert!(listed(&s, &base.digest));
    }

    // Two forks of the same changes are two images: the digest of a layer
    // that is not hashed must not make one fork reuse another's image.
    #[test]
    fn fork_images_never_coincide() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        empty_layout(&t.path().join("layout"));
        let s = store(&home, 64 << 20);
        let base = s
            .import_oci_layout(&t.path().join("layout"), None, None, &Cancel::never())
            .unwrap();
        let up = t.path().join("upper");
        std::fs::create_dir(&up).unwrap();
        let mk = || {
            s.install_fork_layer(
                &base.digest,
                dir_fd(&up),
                IdShift::Keep,
                None,
                "f".into(),
                false,
                &Cancel::never(),
            )
            .unwrap()
            .0
            .digest
        };
        assert_ne!(mk(), mk());
    }
}
