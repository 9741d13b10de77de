//! The sandbox's spec reaches the guest on a small read-only disk whose
//! virtio serial is `lockbox-cfg`: JSON, then zero padding to a whole
//! number of sectors. A disk and not the kernel command line: that is
//! 2 KiB at most and visible to every process in /proc/cmdline.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use lockbox_protocol::LaunchSpec;
use serde::Deserialize;

pub const SERIAL: &str = "lockbox-cfg";
/// The engine writes far less; a spec is bounded (env, mounts) long before.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    pub spec: LaunchSpec,
    /// Serials of the read-only root layer disks (erofs), topmost first.
    pub layers: Vec<String>,
    /// Serial of the writable layer's disk (ext4, made by the engine).
    pub upper: String,
    /// Volumes and tmpfs mounts, in the plan's order (volumes.rs).
    #[serde(default)]
    pub mounts: Vec<super::volumes::GuestMount>,
    /// A virtio-net interface to configure (net.rs).
    #[serde(default)]
    pub network: bool,
    /// The host's time at launch (clock.rs).
    #[serde(default)]
    pub clock_unix_ms: Option<u64>,
}

/// `/dev/vdX` of the disk whose serial is `serial`, if there is one.
pub fn find_disk(serial: &str) -> io::Result<Option<String>> {
    let dir = match std::fs::read_dir("/sys/block") {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in dir {
        let entry = entry?;
        let s = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if s.trim_end_matches(['\n', '\0']) == serial {
            if let Some(name) = entry.file_name().to_str() {
                // devtmpfs makes the node a moment after sysfs shows the
                // disk (kdevtmpfs runs on its own): not there yet is "not
                // found yet".
                let dev = format!("/dev/{name}");
                return Ok(std::path::Path::new(&dev).exists().then_some(dev));
            }
        }
    }
    Ok(None)
}

/// Waits (bounded) for a disk that must be there.
pub fn wait_disk(serial: &str, wait: Duration) -> io::Result<String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(d) = find_disk(serial)? {
            return Ok(d);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no disk with serial {serial} after {wait:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// On the kernel command line of an engine-made VM (launch.rs): wait for
/// the config disk instead of taking its absence for a bare boot.
const EXPECT_WORD: &str = "lockbox.config=disk";

/// The config, or None for a bare boot of the agent (no config disk
/// expected, as in agent/tests/guest_boot.rs and the KVM probe).
pub fn read() -> io::Result<Option<GuestConfig>> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !cmdline.split_ascii_whitespace().any(|w| w == EXPECT_WORD) {
        return Ok(None);
    }
    let dev = wait_disk(SERIAL, Duration::from_secs(10))?;
    let mut bytes = Vec::new();
    std::fs::File::open(&dev)?
        .take(MAX_BYTES)
        .read_to_end(&mut bytes)?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    serde_json::from_slice(&bytes[..end])
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("config disk: {e}")))
}
