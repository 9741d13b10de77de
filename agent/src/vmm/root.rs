//! What qemu's jail (jail.rs) and virtiofsd's (share.rs) share: the
//! mounts cloned on the host while the helper can still read them, the
//! small read-only root built from them inside the jail's own mount
//! namespace, and the few calls every jailed child makes.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// Where the root is built, inside the jail's own mount namespace (a
/// tmpfs mounted over it there; the host's /tmp is not touched).
const BUILD_AT: &str = "/tmp";

/// A detached mount of a host file or directory, and where the jail sees it.
pub struct Tree {
    pub fd: OwnedFd,
    /// Path below the jail's root.
    pub dst: PathBuf,
    pub is_dir: bool,
    pub writable: bool,
}

/// Clones `src` with `attrs`. Whether it is a directory is asked of the
/// clone, not of the path again.
pub fn tree(src: &Path, dst: &str, attrs: u64) -> io::Result<Tree> {
    let fd = sys::clone_tree(src)
        .map_err(|e| io::Error::new(e.kind(), format!("clone {}: {e}", src.display())))?;
    sys::set_tree_attrs(fd.as_raw_fd(), attrs, None)?;
    // SAFETY: fstat into a zeroed struct on a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Tree {
        fd,
        dst: PathBuf::from(dst.trim_start_matches('/')),
        is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
        writable: attrs & MOUNT_ATTR_RDONLY == 0,
    })
}

/// Top-level names that are symlinks on the host (merged /usr), and
/// what they point to.
pub type Links = Vec<(String, PathBuf)>;

/// What every jailed program needs of the host: /usr read-only (the
/// program, its libraries), /lib, /lib64 and /bin as the host has them
/// (directories cloned, merged-/usr symlinks copied as links) and
/// /dev/null.
pub fn system() -> io::Result<(Vec<Tree>, Links)> {
    let ro = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    let mut trees = vec![tree(Path::new("/usr"), "usr", ro)?];
    let mut links = Vec::new();
    for top in ["lib", "lib64", "bin"] {
        let host = Path::new("/").join(top);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                links.push((top.to_string(), std::fs::read_link(&host)?));
            }
            Ok(m) if m.is_dir() => trees.push(tree(&host, top, ro)?),
            _ => {}
        }
    }
    trees.push(tree(
        Path::new("/dev/null"),
        "dev/null",
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
    )?);
    Ok((trees, links))
}

/// Builds the root from `trees` and `links` on a 1 MiB tmpfs, mounts a
/// proc of the jail's pid namespace (`proc_required`: fail without it;
/// else go on, as where the host's /proc is partly masked), pivots into
/// it, drops the old root, remounts it read-only and names the host.
/// Runs as PID 1 of the jail, in its own mount namespace.
pub fn enter(
    trees: &[Tree],
    links: &[(String, PathBuf)],
    proc_required: bool,
    hostname: &[u8],
) -> io::Result<()> {
    let none: Option<&str> = None;
    ctx(
        "private /",
        sys::mount(
            none,
            Path::new("/"),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            none,
        ),
    )?;
    let root = Path::new(BUILD_AT);
    ctx(
        "root tmpfs",
        mount(
            "tmpfs",
            root,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755,size=1m",
        ),
    )?;
    for t in trees {
        let at = root.join(&t.dst);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if t.is_dir {
            std::fs::create_dir_all(&at)?;
        } else {
            std::fs::File::create(&at)?;
        }
        ctx(
            &format!("attach {}", t.dst.display()),
            sys::attach_tree(t.fd.as_raw_fd(), &at),
        )?;
    }
    for (name, to) in links {
        std::os::unix::fs::symlink(to, root.join(name))?;
    }
    std::fs::create_dir_all(root.join("proc"))?;
    let proc = mount(
        "proc",
        &root.join("proc"),
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    );
    if proc_required {
        ctx("proc", proc)?;
    }
    std::fs::create_dir_all(root.join("old"))?;
    ctx("pivot_root", sys::pivot_root(root, &root.join("old")))?;
    std::env::set_current_dir("/")?;
    // SAFETY: umount2/rmdir with C strings.
    unsafe {
        cvt(libc::umount2(c"/old".as_ptr(), libc::MNT_DETACH))?;
        cvt(libc::rmdir(c"/old".as_ptr()))?;
    }
    ctx(
        "read-only root",
        sys::mount(
            none,
            Path::new("/"),
            none,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            none,
        ),
    )?;
    // SAFETY: sethostname with a local buffer.
    cvt(unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) })
}

pub fn mount(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    sys::mount(Some(src), target, Some(fstype), flags, Some(data))
}

/// Writes why the jail failed to the parent's pipe and leaves without
/// running any destructor (a forked child of the helper).
pub fn report_and_exit(wr: &OwnedFd, e: &io::Error) -> ! {
    let m = e.to_string();
    // SAFETY: write to our pipe, then _exit.
    unsafe {
        libc::write(wr.as_raw_fd(), m.as_ptr().cast(), m.len());
        libc::_exit(127)
    }
}

/// SIGKILL when the parent goes; if it already went (`parent` is not
/// None and differs), go now. Set again after every credential change,
/// which clears it.
pub fn die_with(parent: Option<libc::pid_t>) -> io::Result<()> {
    // SAFETY: prctl with integers; getppid.
    unsafe {
        cvt(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        if parent.is_some_and(|p| libc::getppid() != p) {
            libc::_exit(1);
        }
    }
    Ok(())
}

pub fn ctx<T>(what: &str, r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

pub fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
