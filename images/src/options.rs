//! How the store unpacks: who owns the files and how much may be written.

/// Ownership of unpacked files.
///
/// The sandbox runs in a user namespace. Files in a shared read-only lower
/// dir must be owned by the host ids that the sandbox's ids map to, or the
/// sandbox sees them as `nobody`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Rootless: everything is owned by the unpacking user (the only id a
    /// rootless user namespace can map to sandbox root). Image ids are
    /// dropped.
    Caller,
    /// As root: image id `n` becomes host id `base + n` for `n < size`;
    /// larger ids become `base + 65534` (nobody), counted in the stats.
    Shift { base: u32, size: u32 },
}

impl Ownership {
    /// `Shift { base: 0, size: 65536 }` when running as root (ids kept as
    /// in the image), `Caller` otherwise. The engine passes the real
    /// mapping of its backend through [`StoreOptions`].
    pub fn for_current_user() -> Self {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            Ownership::Shift {
                base: 0,
                size: 65536,
            }
        } else {
            Ownership::Caller
        }
    }

    /// Content unpacked with another mapping lives in another directory,
    /// so changing the mapping never mixes owners.
    pub(crate) fn dir_suffix(&self) -> String {
        match self {
            Ownership::Shift { base: 0, .. } | Ownership::Caller => String::new(),
            Ownership::Shift { base, .. } => format!("-u{base}"),
        }
    }

    /// Host id for an image id, and whether it had to be clamped.
    pub(crate) fn map(&self, id: u64) -> Option<(u32, bool)> {
        match *self {
            Ownership::Caller => None,
            Ownership::Shift { base, size } => {
                if id < u64::from(size) {
                    Some((base + id as u32, false))
                } else {
                    Some((base + 65534, true))
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub ownership: Ownership,
    /// Bytes of file content one image may unpack to (all layers).
    pub max_unpacked_bytes: u64,
    /// Tar entries one image may hold (all layers).
    pub max_entries: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            ownership: Ownership::for_current_user(),
            max_unpacked_bytes: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}
