//! Loads the guest's kernel modules with finit_module(2): no modprobe, no
//! busybox. The initramfs holds them uncompressed (Debian's 6.1 modules
//! are), with an `order` file that already puts each module after its
//! dependencies (scripts/vm/build-assets.sh resolves them).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

pub fn load_all(dir: &Path) -> io::Result<()> {
    let order = std::fs::read_to_string(dir.join("order"))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = File::open(dir.join(format!("{name}.ko")))?;
        let params = params_for(name, &cmdline);
        load(&file, &params).map_err(|e| io::Error::new(e.kind(), format!("load {name}: {e}")))?;
    }
    Ok(())
}

fn load(file: &File, params: &str) -> io::Result<()> {
    let params = std::ffi::CString::new(params)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in module parameters"))?;
    // SAFETY: a valid fd and a NUL-terminated string that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // Already there: built in, or loaded as a dependency.
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(e)
}

/// The `module.param=value` words of the kernel command line for `module`
/// (what modprobe would pass): the kernel applies them itself only to
/// built-in code. qemu's microvm passes its virtio-mmio devices this way
/// (`virtio_mmio.device=...`) when the guest has no ACPI table for them.
fn params_for(module: &str, cmdline: &str) -> String {
    let norm = |s: &str| s.replace('-', "_");
    let want = norm(module);
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| {
            let (m, rest) = w.split_once('.')?;
            (norm(m) == want && rest.contains('=')).then_some(rest)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::params_for;

    #[test]
    fn picks_only_the_modules_own_words() {
        let cmd = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=1K@0x1:5 \
                   virtio_console.x=1 virtio_mmio.nothing";
        assert_eq!(
            params_for("virtio_mmio", cmd),
            "device=512@0xfeb00e00:12 device=1K@0x1:5"
        );
        assert_eq!(params_for("virtio_console", cmd), "x=1");
        assert_eq!(params_for("erofs", cmd), "");
    }
}
