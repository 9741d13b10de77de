//! The mounts a kernel leaves to init. The initramfs is the root (rootfs,
//! writable); /proc, /sys and /dev are what the agent and module loading
//! read, /run and /tmp are scratch space for workloads.

use std::ffi::CStr;
use std::io;

fn mount(
    fstype: &CStr,
    target: &CStr,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let data = data.map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // A kernel with CONFIG_DEVTMPFS_MOUNT mounts /dev itself.
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(io::Error::new(
        e.kind(),
        format!("mount {fstype:?} on {target:?}: {e}"),
    ))
}

pub fn early() -> io::Result<()> {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(c"proc", c"/proc", nodev, None)?;
    mount(c"sysfs", c"/sys", nodev, None)?;
    mount(
        c"devtmpfs",
        c"/dev",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"mode=0755"),
    )?;
    mount(
        c"tmpfs",
        c"/run",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(c"mode=0755,size=16m"),
    )?;
    mount(
        c"tmpfs",
        c"/tmp",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(c"mode=1777,size=64m"),
    )?;
    Ok(())
}
