//! fs.*: files inside a sandbox. Every method names the sandbox and may
//! name a `user` to act as for that one call (opt-in; default: the
//! sandbox's own user).
use lockbox_engine::FileKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathParams {
    pub sandbox: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub path: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MkdirParams {
    pub sandbox: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub path: String,
    #[serde(default = "dir_mode")]
    pub mode: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameParams {
    pub sandbox: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SymlinkParams {
    pub sandbox: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub target: String,
    pub link: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenParams {
    pub sandbox: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub path: String,
    /// Refuse anything but a regular file (after following links).
    #[serde(default)]
    pub regular: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateParams {
    pub sandbox: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub path: String,
    #[serde(default = "file_mode")]
    pub mode: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CopyToHostParams {
    pub sandbox: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub src: String,
    /// An absolute host path.
    pub dst: String,
    /// Cap on what is written to the host; the engine's default if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CopyFromHostParams {
    pub sandbox: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// An absolute host path.
    pub src: String,
    pub dst: String,
}

fn dir_mode() -> u32 {
    0o755
}

fn file_mode() -> u32 {
    0o644
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileInfo {
    /// Base name (read_dir) or the path asked for (stat).
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
    /// Seconds since the Unix epoch.
    pub mtime: i64,
    /// A symlink's target, as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

impl From<lockbox_engine::FileInfo> for FileInfo {
    fn from(i: lockbox_engine::FileInfo) -> Self {
        FileInfo {
            name: i.name,
            kind: i.kind,
            size: i.size,
            mode: i.mode,
            mtime: i.mtime,
            link_target: i.link_target,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DirEntries {
    pub entries: Vec<FileInfo>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Copied {
    pub bytes: u64,
}
