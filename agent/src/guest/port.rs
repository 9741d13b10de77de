//! Finds the virtio-serial port by its name. Ports are added by the
//! device's control queue after virtio_console binds, so they appear a
//! little after the module loads: wait for it, bounded.

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

pub fn open(name: &str, wait: Duration) -> io::Result<File> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(dev) = find(name)? {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/dev/{dev}"))
            {
                // devtmpfs makes the node a moment after sysfs shows it.
                Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {}
                r => return r,
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio-serial port named {name} after {wait:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The device name (`vport0p1`) of the port called `name`, if present.
fn find(name: &str) -> io::Result<Option<String>> {
    let dir = match std::fs::read_dir("/sys/class/virtio-ports") {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in dir {
        let entry = entry?;
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim_end() == name {
            if let Some(dev) = entry.file_name().to_str() {
                return Ok(Some(dev.to_string()));
            }
        }
    }
    Ok(None)
}
