//! Memory checkpoints of a running VM (docs/microvm.md, "Checkpoint,
//! restore, fork"). A checkpoint is a directory `<home>/checkpoints/<name>/`
//! (0700, files 0600, made through directory fds):
//! - `state`: RAM and device state, written by qemu's migration to an fd
//!   the engine opened and passed over QMP (`getfd`, `migrate fd:`);
//! - `rw.img`, `config.img`: the writable disk and the config disk, copied
//!   while the VM is stopped (reflink or in-kernel copy);
//! - `l<i>.erofs`: the read-only layer images, hard links of the cache;
//! - `manifest.json`: the source's configuration and qemu command line,
//!   and the sha256 of `state`, `config.img` and the guest's kernel and
//!   initramfs. A restore hashes the file it hands to qemu through the
//!   very fd it hands over and refuses any difference: qemu parsing a
//!   tampered migration stream is host attack surface.
//!
//! The source is stopped (`stop`) for the migration and the disk copy and
//! resumed (`cont`) after, whatever happened.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ckpt_files as files;
use super::host::{Host, INITRAMFS, KERNEL};
use super::qmp::Qmp;
use crate::backend::{LaunchRequest, Launched};
use crate::config::SandboxConfig;
use crate::error::{EngineError, Result};

pub const DIR: &str = "checkpoints";
const STATE: &str = "state";
const RW: &str = "rw.img";
const CFG: &str = "config.img";
const MANIFEST: &str = "manifest.json";
const VERSION: u32 = 1;
const MAX_JSON: u64 = 1 << 20;
/// The migration of a stopped guest writes what it touched; TCG guests
/// here are a few hundred MiB at most.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(300);
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
/// The fd's name inside qemu (`getfd`).
const FD_NAME: &str = "lockbox-ckpt";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub name: String,
    /// The sandbox it was taken from.
    pub source: String,
    pub created_unix: i64,
    /// The source's configuration (secret values never stored).
    pub config: SandboxConfig,
    /// The source's `vmm.json` (qemu's command line as qemu sees it).
    pub vmm: Value,
    pub layers: usize,
    pub state_sha256: String,
    pub state_bytes: u64,
    pub config_sha256: String,
    pub disk_bytes: u64,
    /// sha256 of the guest kernel and initramfs: a restore needs the same.
    pub assets_sha256: String,
}

/// A verified checkpoint, ready for `launch_restored`.
pub struct Restore {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The state file, hashed through this fd; each restore reopens it.
    state: File,
}

fn read_bounded(mut f: File, what: &str) -> Result<Vec<u8>> {
    let mut b = Vec::new();
    (&mut f)
        .take(MAX_JSON + 1)
        .read_to_end(&mut b)
        .map_err(|e| EngineError::io(what, e))?;
    if b.len() as u64 > MAX_JSON {
        return Err(EngineError::invalid(format!("{what} is larger than 1 MiB")));
    }
    Ok(b)
}

fn assets_sha256(assets: &Path) -> Result<String> {
    let mut all = String::new();
    for f in [KERNEL, INITRAMFS] {
        let p = assets.join(f);
        let mut file = File::open(&p).map_err(|e| EngineError::io(p.display(), e))?;
        all.push_str(&files::sha256(&mut file)?.0);
    }
    Ok(all)
}

/// Host paths of the source's read-only layer images, in qemu's order
/// (`/layers/<i>.erofs`), from its vmm.json.
fn layer_sources(vmm: &Value) -> Vec<(String, String)> {
    vmm.get("binds")
        .and_then(Value::as_array)
        .map(|b| {
            b.iter()
                .filter_map(|b| {
                    let dst = b.get("dst")?.as_str()?;
                    let src = b.get("src")?.as_str()?;
                    dst.starts_with("/layers/")
                        .then(|| (dst.to_string(), src.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a half-made checkpoint directory unless disarmed.
struct TmpDir(Option<PathBuf>);
impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Saves the running VM in `dir` as checkpoint `name` under `home`.
/// Blocking: run it off the async threads.
pub fn save(
    dir: &Path,
    home: &Path,
    name: &str,
    source: &str,
    config: &SandboxConfig,
) -> Result<Manifest> {
    let root = files::open_root(home)?;
    if files::exists_at(&root, name)? {
        return Err(EngineError::already_exists(format!(
            "a checkpoint named {name:?} already exists"
        )));
    }
    let vmm: Value = serde_json::from_slice(&read_bounded(
        File::open(dir.join("vmm.json")).map_err(|e| EngineError::io("vmm.json", e))?,
        "vmm.json",
    )?)
    .map_err(|e| EngineError::internal(format!("vmm.json: {e}")))?;
    if vmm.get("net").is_some_and(|n| !n.is_null()) {
        return Err(EngineError::unsupported(
            "microvm backend: a checkpoint of a VM with a network is not supported (its open connections, resolved names and the per-sandbox CA live in the host's forwarder, not in the VM)",
        ));
    }
    if vmm
        .get("shares")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(EngineError::unsupported(
            "microvm backend: a checkpoint of a VM with volumes is not supported (the shared directories' state is not in the VM)",
        ));
    }
    let assets = vmm
        .get("binds")
        .and_then(Value::as_array)
        .and_then(|b| {
            b.iter()
                .find(|b| b.get("dst").and_then(Value::as_str) == Some("/vm"))
        })
        .and_then(|b| b.get("src").and_then(Value::as_str))
        .ok_or_else(|| EngineError::internal("vmm.json names no assets"))?
        .to_string();
    let tmp = format!(".tmp-{}", crate::names::new_id());
    let tdir = files::mkdir_at(&root, &tmp)?;
    // Held until the rename: a sweep (remove) leaves a locked one alone,
    // and removes one whose engine died mid-save.
    files::lock(&tdir)?;
    let mut guard = TmpDir(Some(home.join(DIR).join(&tmp)));

    let layers = layer_sources(&vmm);
    for (i, (dst, src)) in layers.iter().enumerate() {
        if dst != &format!("/layers/{i}.erofs") {
            return Err(EngineError::internal(format!(
                "unexpected layer bind {dst}"
            )));
        }
        files::link_into(Path::new(src), &tdir, &format!("l{i}.erofs"))?;
    }
    let mut state = files::create_at(&tdir, STATE)?;
    let rw = files::create_at(&tdir, RW)?;
    let cfg = files::create_at(&tdir, CFG)?;

    let mut q = Qmp::connect(dir, QMP_TIMEOUT)?;
    // The default (32 MiB/s) is for a live migration over a network; the
    // guest is stopped, so the only limit is the disk.
    q.execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": 1u64 << 40}),
    )?;
    q.execute("stop", json!({}))?;
    let copied = (|| -> Result<u64> {
        q.execute_fd("getfd", json!({"fdname": FD_NAME}), Some(state.as_raw_fd()))?;
        q.execute("migrate", json!({"uri": format!("fd:{FD_NAME}")}))?;
        q.extend(MIGRATE_TIMEOUT);
        q.wait_migration("checkpoint")?;
        // qemu flushed and released the disks at the migration's end; the
        // guest is still stopped, so the copy is the state the memory has.
        let src_rw = File::open(dir.join(RW)).map_err(|e| EngineError::io("rw.img", e))?;
        let n = files::copy_disk(&src_rw, &rw)?;
        let src_cfg = File::open(dir.join(CFG)).map_err(|e| EngineError::io("config.img", e))?;
        files::copy_disk(&src_cfg, &cfg)?;
        Ok(n)
    })();
    q.extend(QMP_TIMEOUT);
    if copied.is_err() {
        // A migration still running (timed out) must end before `cont`.
        let _ = q.execute("migrate_cancel", json!({}));
    }
    let resumed = q.execute("cont", json!({}));
    let disk_bytes = copied?;
    resumed?;
    drop(q);

    for f in [&state, &rw, &cfg] {
        f.sync_all()
            .map_err(|e| EngineError::io("sync checkpoint", e))?;
    }
    let (state_sha256, state_bytes) = files::sha256(&mut state)?;
    let mut cfg_r = cfg;
    let (config_sha256, _) = files::sha256(&mut cfg_r)?;
    let m = Manifest {
        version: VERSION,
        name: name.to_string(),
        source: source.to_string(),
        created_unix: crate::state::now_unix(),
        config: config.clone(),
        vmm,
        layers: layers.len(),
        state_sha256,
        state_bytes,
        config_sha256,
        disk_bytes,
        assets_sha256: assets_sha256(Path::new(&assets))?,
    };
    let mut mf = files::create_at(&tdir, MANIFEST)?;
    mf.write_all(&serde_json::to_vec_pretty(&m).unwrap_or_default())
        .and_then(|()| mf.sync_all())
        .map_err(|e| EngineError::io(MANIFEST, e))?;
    files::fsync_dir(&tdir);
    files::rename_new(&root, &tmp, name)?;
    files::fsync_dir(&root);
    guard.0 = None;
    Ok(m)
}

fn open_manifest(dir: &OwnedFd, name: &str) -> Result<Manifest> {
    let m: Manifest =
        serde_json::from_slice(&read_bounded(files::open_at(dir, MANIFEST)?, MANIFEST)?)
            .map_err(|e| EngineError::invalid(format!("checkpoint {name:?}: {MANIFEST}: {e}")))?;
    if m.version != VERSION || m.name != name {
        return Err(EngineError::invalid(format!(
            "checkpoint {name:?} was not written by this engine (version {}, name {:?})",
            m.version, m.name
        )));
    }
    Ok(m)
}

/// Reads and verifies checkpoint `name`: its manifest, the state file's
/// and config disk's digests. Blocking.
pub fn open(home: &Path, name: &str) -> Result<Restore> {
    let root = files::open_root(home)?;
    let d = files::open_dir_at(&root, name)?;
    let manifest = open_manifest(&d, name)?;
    let mut state = files::open_at(&d, STATE)?;
    let (sum, n) = files::sha256(&mut state)?;
    if sum != manifest.state_sha256 || n != manifest.state_bytes {
        return Err(EngineError::invalid(format!(
            "checkpoint {name:?}: the state file is not the one the engine wrote (sha256 differs): refused"
        )));
    }
    let (csum, _) = files::sha256(&mut files::open_at(&d, CFG)?)?;
    if csum != manifest.config_sha256 {
        return Err(EngineError::invalid(format!(
            "checkpoint {name:?}: config.img differs from the one the engine wrote: refused"
        )));
    }
    for i in 0..manifest.layers {
        files::open_at(&d, &format!("l{i}.erofs"))?;
    }
    Ok(Restore {
        dir: home.join(DIR).join(name),
        manifest,
        state,
    })
}

/// The manifests of every checkpoint under `home` (unverified: a listing).
pub fn list(home: &Path) -> Result<Vec<Manifest>> {
    let root = files::open_root(home)?;
    let p = home.join(DIR);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&p).map_err(|e| EngineError::io(p.display(), e))? {
        let Ok(e) = e else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || crate::names::validate("checkpoint", &name).is_err() {
            continue;
        }
        if let Ok(m) = files::open_dir_at(&root, &name).and_then(|d| open_manifest(&d, &name)) {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes checkpoint `name`: renamed away first, so the name is free at
/// once and a crash leaves only a dot-directory the next removal sweeps.
pub fn remove(home: &Path, name: &str) -> Result<()> {
    let root = files::open_root(home)?;
    if !files::exists_at(&root, name)? {
        return Err(EngineError::not_found(format!(
            "no checkpoint named {name:?}"
        )));
    }
    let trash = format!(".trash-{}", crate::names::new_id());
    files::rename_new(&root, name, &trash)?;
    sweep(home, &root);
    Ok(())
}

/// Removes what removals and dead saves left: every `.trash-*`, and each
/// `.tmp-*` whose save no longer holds its lock.
fn sweep(home: &Path, root: &OwnedFd) {
    let base = home.join(DIR);
    let Ok(rd) = std::fs::read_dir(&base) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let stale = n.starts_with(".trash-")
            || (n.starts_with(".tmp-")
                && files::open_dir_at(root, &n)
                    .and_then(|d| files::try_lock(&d))
                    .unwrap_or(false));
        if stale {
            let _ = std::fs::remove_dir_all(base.join(n));
        }
    }
}

/// Starts qemu from the checkpoint: the same command line with
/// `-incoming defer`, the disks copied into the new sandbox's directory,
/// the state handed over QMP; returns once the guest runs again.
pub async fn launch_restored(
    helper: &Path,
    host: &Host,
    req: &LaunchRequest<'_>,
    r: &Restore,
) -> Result<Launched> {
    let dir = req.dir.to_path_buf();
    let m = &r.manifest;
    if assets_sha256(&host.assets)? != m.assets_sha256 {
        return Err(EngineError::invalid(format!(
            "checkpoint {:?} was taken with other VM assets (kernel, initramfs) than {}",
            m.name,
            host.assets.display()
        )));
    }
    let (ck, d) = (r.dir.clone(), dir.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        for f in [RW, CFG] {
            let src = File::open(ck.join(f)).map_err(|e| EngineError::io(f, e))?;
            let dst = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(d.join(f))
                .map_err(|e| EngineError::io(f, e))?;
            files::copy_disk(&src, &dst)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| EngineError::internal(format!("disk task: {e}")))??;

    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut vmm = m.vmm.clone();
    vmm["id"] = json!(req.id);
    vmm["socket"] = json!(s(&dir.join("agent.sock")));
    vmm["qmp"] = json!(s(&dir.join(super::qmp::SOCKET)));
    if let Some(binds) = vmm.get_mut("binds").and_then(Value::as_array_mut) {
        for b in binds {
            let dst = b
                .get("dst")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let src = match dst.as_str() {
                "/vm" => s(&host.assets),
                "/disk/rw.img" => s(&dir.join(RW)),
                "/disk/config.img" => s(&dir.join(CFG)),
                l if l.starts_with("/layers/") => {
                    let i = l
                        .trim_start_matches("/layers/")
                        .trim_end_matches(".erofs")
                        .parse::<usize>()
                        .map_err(|_| EngineError::invalid(format!("checkpoint bind {l}")))?;
                    s(&r.dir.join(format!("l{i}.erofs")))
                }
                other => {
                    return Err(EngineError::invalid(format!(
                        "checkpoint {:?}: unexpected bind {other}",
                        m.name
                    )))
                }
            };
            b["src"] = json!(src);
        }
    }
    if let Some(a) = vmm.get_mut("args").and_then(Value::as_array_mut) {
        a.push(json!("-incoming"));
        a.push(json!("defer"));
    }
    let state = files::reopen(&r.state)?;
    let launched = super::launch::spawn_helper(helper, &dir, &vmm, req.plan.detached).await?;
    // From here an error drops `launched`: its lifeline's end stops qemu.
    tokio::task::spawn_blocking(move || incoming(&dir, state))
        .await
        .map_err(|e| EngineError::internal(format!("restore task: {e}")))??;
    Ok(launched)
}

/// Hands the state to the waiting qemu and lets the guest run.
fn incoming(dir: &Path, state: File) -> Result<()> {
    let mut q = Qmp::connect(dir, QMP_TIMEOUT)?;
    q.execute_fd("getfd", json!({"fdname": FD_NAME}), Some(state.as_raw_fd()))?;
    drop(state);
    q.execute("migrate-incoming", json!({"uri": format!("fd:{FD_NAME}")}))?;
    q.extend(MIGRATE_TIMEOUT);
    // The destination's query-migrate loses its status once it is done;
    // the run state leaves "inmigrate" instead (a failed load ends qemu,
    // which ends this connection).
    loop {
        let st = q.execute("query-status", json!({}))?;
        match st.get("status").and_then(Value::as_str) {
            Some("inmigrate") => std::thread::sleep(Duration::from_millis(5)),
            Some("paused") | Some("postmigrate") | Some("prelaunch") => break,
            Some("running") => return Ok(()),
            other => {
                return Err(EngineError::internal(format!(
                    "restore: qemu is {other:?} after the incoming migration"
                )))
            }
        }
    }
    q.extend(QMP_TIMEOUT);
    q.execute("cont", json!({}))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_takes_dead_saves_and_leaves_live_ones() {
        let home = tempfile::tempdir().unwrap();
        let root = files::open_root(home.path()).unwrap();
        let live = files::mkdir_at(&root, ".tmp-live").unwrap();
        files::lock(&live).unwrap();
        drop(files::mkdir_at(&root, ".tmp-dead").unwrap());
        drop(files::mkdir_at(&root, ".trash-old").unwrap());
        drop(files::mkdir_at(&root, "kept").unwrap());
        remove(home.path(), "kept").unwrap();
        let left: Vec<String> = std::fs::read_dir(home.path().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![".tmp-live".to_string()], "{left:?}");
        drop(live);
        assert_eq!(
            remove(home.path(), "kept").unwrap_err().code,
            lockbox_protocol::ErrorCode::NotFound
        );
    }
}
