//! The sandbox's volumes and tmpfs mounts inside the guest, mounted in
//! the new root in the plan's order once it is entered. A volume is a
//! virtio-fs share whose tag the engine chose (its host side is a
//! confined virtiofsd, agent/src/vmm/share.rs); a tmpfs is guest RAM and
//! counts against the sandbox's memory limit like any page it writes.
//!
//! Targets are walked from the root refusing every symlink, as native
//! does (setup::mountfd): the image is attacker content, and a link where
//! a mount goes would put the volume over /proc or the agent's files.

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::setup::mountfd::{self, Kind};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestMount {
    Share {
        tag: String,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        size_mib: u64,
    },
}

pub fn mount_all(mounts: &[GuestMount], report: &mut crate::report::Report) -> Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    let root = mountfd::open_root().context("open the root")?;
    for m in mounts {
        match m {
            GuestMount::Share {
                tag,
                target,
                read_only,
            } => {
                let t = mountfd::open_target(&root, target, Kind::Dir)
                    .map_err(|e| anyhow::anyhow!("volume at {target}: {e}"))?;
                let ro = if *read_only {
                    mountfd::MOUNT_ATTR_RDONLY
                } else {
                    0
                };
                let fs = mountfd::new_fs(
                    "virtiofs",
                    &[],
                    &[("source", tag)],
                    mountfd::MOUNT_ATTR_NOSUID | mountfd::MOUNT_ATTR_NODEV | ro,
                )
                .with_context(|| format!("virtiofs {tag} for {target}"))?;
                mountfd::attach(&fs, &t).with_context(|| format!("attach volume at {target}"))?;
                report.ok("volumes");
            }
            GuestMount::Tmpfs { target, size_mib } => {
                let t = mountfd::open_target(&root, target, Kind::Dir)
                    .map_err(|e| anyhow::anyhow!("tmpfs at {target}: {e}"))?;
                let size = format!("{size_mib}m");
                let fs = mountfd::new_fs(
                    "tmpfs",
                    &[],
                    &[("mode", "1777"), ("size", &size)],
                    mountfd::MOUNT_ATTR_NOSUID | mountfd::MOUNT_ATTR_NODEV,
                )?;
                mountfd::attach(&fs, &t).with_context(|| format!("tmpfs at {target}"))?;
                report.ok("tmpfs");
            }
        }
    }
    Ok(())
}
