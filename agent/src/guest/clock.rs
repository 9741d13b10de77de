//! The guest's wall clock. qemu's microvm here has no RTC (`rtc=off`), so
//! the guest kernel starts at 1970: every certificate is then "not yet
//! valid" and TLS through the VM's network fails. The engine writes the
//! host's time on the config disk when it launches the VM; PID 1 sets it
//! before it drops CAP_SYS_TIME. It is behind by the boot's length (a few
//! seconds; certificates' validity is counted in hours), and the guest's
//! clock runs on from there by its own clocksource.

use std::io;

pub fn set(unix_ms: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_ms / 1000) as libc::time_t,
        tv_nsec: ((unix_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime with a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
