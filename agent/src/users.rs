//! User specs ("uid", "uid:gid", "name", "name:group") resolved against the
//! sandbox's own /etc/passwd and /etc/group. This runs in PID 1 after the
//! root is built, so the files read are the merged root's, including users
//! a workload added with `useradd`: what `id` inside would say.
//!
//! The files are the sandbox's to shape: they are opened beneath the root
//! (`RESOLVE_IN_ROOT`, no magic links), non-blocking (a FIFO cannot stall
//! PID 1), must be regular files, and are read up to a bound.

use std::io::Read;

use lockbox_protocol::{bounds::MAX_USER_SPEC_BYTES, ErrorCode, WireError};

/// Larger than any real passwd or group file.
pub const MAX_DB_BYTES: u64 = 4 << 20;

/// What a user spec resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The passwd entry's home directory, when the user was named and it
    /// has an absolute one.
    pub home: Option<String>,
}

impl User {
    /// HOME for a process that was given none: the passwd entry's, else
    /// /root for root and / for anyone else.
    pub fn home_or_default(&self) -> &str {
        match &self.home {
            Some(h) => h,
            None if self.uid == 0 => "/root",
            None => "/",
        }
    }
}

fn invalid(m: String) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, m)
}

/// Resolves `spec` against the databases under `root` (a directory fd; "/"
/// of the sandbox in PID 1). A number alone is also its group; a name
/// alone takes its passwd entry's group.
pub fn resolve_in(root: std::os::fd::RawFd, spec: &str) -> Result<User, WireError> {
    if spec.is_empty() || spec.len() > MAX_USER_SPEC_BYTES || spec.contains('\0') {
        return Err(invalid(format!(
            "user {:?} is not valid (1..={MAX_USER_SPEC_BYTES} bytes, no NUL)",
            spec.chars().take(64).collect::<String>()
        )));
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if u.is_empty() {
        return Err(invalid(format!("user {spec:?} has no user part")));
    }
    let mut user = match parse_id(u) {
        Some(uid) => User {
            uid,
            gid: uid,
            home: None,
        },
        None if u.parse::<u64>().is_ok() => return Err(not_an_id("user", u)),
        None => {
            let f = lookup(root, "etc/passwd", u)?.ok_or_else(|| {
                WireError::new(
                    ErrorCode::NotFound,
                    format!("user {u:?} is not in the sandbox's /etc/passwd"),
                )
            })?;
            let (Some(uid), Some(gid)) = (num(f.get(2)), num(f.get(3))) else {
                return Err(invalid(format!(
                    "user {u:?} has a malformed entry in the sandbox's /etc/passwd"
                )));
            };
            let home = f.get(5).filter(|h| h.starts_with('/')).cloned();
            User { uid, gid, home }
        }
    };
    match g {
        None | Some("") => {}
        Some(g) => {
            user.gid = match parse_id(g) {
                Some(n) => n,
                None if g.parse::<u64>().is_ok() => return Err(not_an_id("group", g)),
                None => lookup(root, "etc/group", g)?
                    .and_then(|f| num(f.get(2)))
                    .ok_or_else(|| {
                        WireError::new(
                            ErrorCode::NotFound,
                            format!("group {g:?} is not in the sandbox's /etc/group"),
                        )
                    })?,
            }
        }
    }
    Ok(user)
}

/// `resolve_in` against the current root.
pub fn resolve(spec: &str) -> Result<User, WireError> {
    let root = std::fs::File::open("/").map_err(|e| wire_io(e, "/"))?;
    resolve_in(std::os::fd::AsRawFd::as_raw_fd(&root), spec)
}

fn num(f: Option<&String>) -> Option<u32> {
    f.and_then(|v| parse_id(v))
}

/// An id a process can switch to. (uid_t)-1 is not one: setresuid and
/// setresgid read it as "leave this id unchanged", so a passwd line or a
/// spec naming it would keep the caller's root.
fn parse_id(s: &str) -> Option<u32> {
    s.parse::<u32>().ok().filter(|&n| n != u32::MAX)
}

fn not_an_id(what: &str, s: &str) -> WireError {
    invalid(format!(
        "{what} id {s} is out of range (0..={})",
        u32::MAX - 1
    ))
}

fn wire_io(e: std::io::Error, what: &str) -> WireError {
    let code = e
        .raw_os_error()
        .map(ErrorCode::from_errno)
        .unwrap_or(ErrorCode::Internal);
    WireError::new(code, format!("{what}: {e}"))
}

/// The fields of the first line of `rel` whose first field is `name`, or
/// `None` when the file or the entry does not exist. A database that is
/// not a readable regular file within the bound holds no one: `not_found`,
/// naming the entry and why.
fn lookup(
    root: std::os::fd::RawFd,
    rel: &str,
    name: &str,
) -> Result<Option<Vec<String>>, WireError> {
    let text = read_db(root, rel).map_err(|e| {
        WireError::new(
            ErrorCode::NotFound,
            format!("{name:?} cannot be looked up: the sandbox's /{rel} is unusable ({e})"),
        )
    })?;
    let Some(text) = text else {
        return Ok(None);
    };
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(|l| l.split(':'))
        .find_map(|mut f| {
            (f.next() == Some(name)).then(|| {
                std::iter::once(name.to_string())
                    .chain(f.map(str::to_string))
                    .collect()
            })
        }))
}

fn read_db(root: std::os::fd::RawFd, rel: &str) -> std::io::Result<Option<Vec<u8>>> {
    let c = crate::sys::cstr(rel)?;
    let f = match crate::sys::openat2(
        root,
        &c,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        crate::sys::RESOLVE_IN_ROOT | crate::sys::RESOLVE_NO_MAGICLINKS,
    ) {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut out = Vec::new();
    f.take(MAX_DB_BYTES + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_DB_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {MAX_DB_BYTES} bytes"),
        ));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn root_with(passwd: &str, group: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(d.path().join("etc/group"), group).unwrap();
        d
    }

    fn at(d: &tempfile::TempDir, spec: &str) -> Result<User, WireError> {
        let f = std::fs::File::open(d.path()).unwrap();
        resolve_in(f.as_raw_fd(), spec)
    }

    #[test]
    fn the_keep_unchanged_id_is_never_a_user() {
        // (uid_t)-1 in a spec or a passwd line would make setresuid a no-op
        // and leave the exec as root; the id below it is an ordinary user.
        let d = root_with(
            "evil:x:4294967295:1000::/:/bin/sh\nedge:x:4294967294:4294967294::/:/bin/sh\n",
            "evilg:x:4294967295:\n",
        );
        for spec in [
            "4294967295",
            "4294967295:1000",
            "1000:4294967295",
            "99999999999",
        ] {
            assert_eq!(
                at(&d, spec).unwrap_err().code,
                ErrorCode::InvalidArgument,
                "{spec}"
            );
        }
        assert!(at(&d, "evil").is_err());
        assert!(at(&d, "1000:evilg").is_err());
        let edge = at(&d, "edge").unwrap();
        assert_eq!((edge.uid, edge.gid), (u32::MAX - 1, u32::MAX - 1));
    }

    #[test]
    fn names_numbers_and_groups() {
        let d = root_with(
            "root:x:0:0::/root:/bin/sh\nbob:x:1000:1001::/home/bob:/bin/sh\nodd:x:5:5::rel:/bin/sh\n",
            "root:x:0:\nstaff:x:50:\n",
        );
        let u = |uid, gid, home: Option<&str>| User {
            uid,
            gid,
            home: home.map(str::to_string),
        };
        assert_eq!(at(&d, "bob").unwrap(), u(1000, 1001, Some("/home/bob")));
        assert_eq!(at(&d, "bob:staff").unwrap(), u(1000, 50, Some("/home/bob")));
        assert_eq!(at(&d, "bob:7").unwrap(), u(1000, 7, Some("/home/bob")));
        assert_eq!(at(&d, "7:8").unwrap(), u(7, 8, None));
        assert_eq!(at(&d, "7").unwrap(), u(7, 7, None));
        assert_eq!(at(&d, "7:").unwrap(), u(7, 7, None));
        assert_eq!(at(&d, "odd").unwrap().home_or_default(), "/");
        assert_eq!(at(&d, "0").unwrap().home_or_default(), "/root");
        let e = at(&d, "nobody").unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains("\"nobody\""), "{}", e.message);
        assert_eq!(at(&d, "bob:wheel").unwrap_err().code, ErrorCode::NotFound);
        for bad in ["", ":5", "a\0b"] {
            assert_eq!(
                at(&d, bad).unwrap_err().code,
                ErrorCode::InvalidArgument,
                "{bad:?}"
            );
        }
        let long = "x".repeat(MAX_USER_SPEC_BYTES + 1);
        assert_eq!(at(&d, &long).unwrap_err().code, ErrorCode::InvalidArgument);
    }

    /// The databases are the sandbox's: a link resolves inside the root
    /// (never to the host's file), and FIFOs, devices and huge files are
    /// refused without blocking.
    #[test]
    fn hostile_databases() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let d = root_with("bob:x:1000:1000::/:/bin/sh\n", "");
        let passwd = d.path().join("etc/passwd");
        // Control: the name resolves while the file is a plain one.
        assert_eq!(at(&d, "bob").unwrap().uid, 1000);
        std::fs::remove_file(&passwd).unwrap();
        std::os::unix::fs::symlink(outside.path().join("passwd"), &passwd).unwrap();
        assert_eq!(at(&d, "evil").unwrap_err().code, ErrorCode::NotFound);
        std::fs::remove_file(&passwd).unwrap();
        std::os::unix::fs::symlink("../../../../../dev/zero", &passwd).unwrap();
        assert_eq!(at(&d, "evil").unwrap_err().code, ErrorCode::NotFound);
        std::fs::remove_file(&passwd).unwrap();
        let p = crate::sys::cstr(&passwd).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o644) }, 0);
        let t = std::time::Instant::now();
        let e = at(&d, "bob").unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
        assert!(e.message.contains("not a regular file"), "{}", e.message);
        // A blocked open would never return: 10 s is room for load only.
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        std::fs::remove_file(&passwd).unwrap();
        let mut big = "bob:x:1000:1000::/:/bin/sh\n".to_string();
        big.push_str(&"#".repeat(MAX_DB_BYTES as usize));
        std::fs::write(&passwd, big).unwrap();
        let e = at(&d, "bob").unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
        assert!(e.message.contains("larger than"), "{}", e.message);
    }
}
