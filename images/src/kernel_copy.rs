//! File data copied by the kernel instead of through a userspace buffer,
//! for layers whose digest does not cover their content (Fork's unnamed
//! layer): a reflink where the filesystem shares extents (btrfs, xfs with
//! reflink=1, same filesystem only), else `copy_file_range` (same
//! filesystem type), else `sendfile` (any two files). The caller falls
//! back to its own bounded read/write when every one is refused.
//!
//! Every call is bounded by the size the caller charged: a hostile writer
//! that grows the source while it is copied (a sandbox without a freezer)
//! cannot make the copy longer, and a reflink, which takes the whole file
//! as it is at that instant, is cut back to the charged size.

use std::io;
use std::os::fd::RawFd;

/// `_IOW(0x94, 9, int)`: clone all of the source's extents into the
/// destination (linux/fs.h).
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Which in-kernel ways still work for this copy: a refusal that says the
/// pair of filesystems cannot do it is remembered, so a million-file
/// layer does not ask a million times.
#[derive(Clone, Copy, Debug)]
pub struct Ways {
    pub clone: bool,
    pub copy_range: bool,
    pub sendfile: bool,
}

impl Default for Ways {
    fn default() -> Self {
        Ways {
            clone: true,
            copy_range: true,
            sendfile: true,
        }
    }
}

/// How one segment or file was copied.
pub enum Copied {
    /// `n` bytes (less than asked only when the source shrank).
    Bytes(u64),
    /// No in-kernel way works for this pair: copy it by hand.
    Refused,
}

/// Errors that mean "this pair of files cannot do it", not a failure.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EXDEV
                | libc::EOPNOTSUPP
                | libc::ENOSYS
                | libc::EINVAL
                | libc::ENOTTY
                | libc::EBADF
                | libc::ETXTBSY
        )
    )
}

/// Shares all of `src`'s extents with the empty file `dst`, then makes
/// `dst` exactly `size` long (what was charged; the source may have
/// changed size since it was looked at). `Refused` when the filesystem
/// does not reflink (ext4, tmpfs, two filesystems).
pub fn reflink(ways: &mut Ways, src: RawFd, dst: RawFd, size: u64) -> io::Result<Copied> {
    if !ways.clone {
        return Ok(Copied::Refused);
    }
    // SAFETY: two valid fds; FICLONE takes the source fd as its argument.
    if unsafe { libc::ioctl(dst, FICLONE, src) } < 0 {
        let e = io::Error::last_os_error();
        if refused(&e) {
            ways.clone = false;
            return Ok(Copied::Refused);
        }
        return Err(e);
    }
    // SAFETY: a valid fd; the length fits off_t (charged from st_size).
    if unsafe { libc::ftruncate(dst, size as libc::off_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Copied::Bytes(size))
}

/// Copies `[pos, end)` of `src` to the same offsets of `dst` in the
/// kernel. `Refused` (nothing copied) when neither `copy_file_range` nor
/// `sendfile` works for this pair; a short count means the source ended.
pub fn range(ways: &mut Ways, src: RawFd, dst: RawFd, pos: u64, end: u64) -> io::Result<Copied> {
    let mut at = pos;
    while at < end {
        let want = (end - at).min(1 << 30) as usize;
        let n = if ways.copy_range {
            let (mut i, mut o) = (at as libc::off64_t, at as libc::off64_t);
            // SAFETY: valid fds and offsets; copies at most `want` bytes.
            let n = unsafe { libc::copy_file_range(src, &mut i, dst, &mut o, want, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                if refused(&e) && at == pos {
                    ways.copy_range = false;
                    continue;
                }
                return Err(e);
            }
            n as u64
        } else if ways.sendfile {
            // sendfile writes at dst's file position.
            // SAFETY: a valid fd.
            if unsafe { libc::lseek(dst, at as libc::off_t, libc::SEEK_SET) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut i = at as libc::off_t;
            // SAFETY: valid fds and offset; sends at most `want` bytes.
            let n = unsafe { libc::sendfile(dst, src, &mut i, want) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                if refused(&e) && at == pos {
                    ways.sendfile = false;
                    return Ok(Copied::Refused);
                }
                return Err(e);
            }
            n as u64
        } else {
            return Ok(Copied::Refused);
        };
        if n == 0 {
            break;
        }
        if n > end - at {
            return Err(io::Error::other("the kernel copied more than asked"));
        }
        at += n;
    }
    Ok(Copied::Bytes(at - pos))
}
