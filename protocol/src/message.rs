//! Control messages. The frame header's `id` says which operation a message
//! belongs to; the engine allocates ids, the agent echoes them.
//!
//! Every request gets exactly one terminal reply (`Ok`, `Error`, `Exited`,
//! or a typed result). Streams of an operation end with an `Eof` frame.

use serde::{Deserialize, Serialize};

use crate::WireError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    // ----- handshake (id 0) -----
    /// First message from the engine.
    Hello {
        version: u32,
    },
    /// The agent's answer; `version` is the agent's protocol version.
    HelloAck {
        version: u32,
        agent_pid: u32,
        sandbox: String,
    },

    // ----- exec -----
    /// Start a process. The agent replies `Started`, then streams stdout
    /// (stream 1) and stderr (stream 2, absent with a tty), reads stdin
    /// (stream 0), and ends with `Exited`.
    Exec(ExecRequest),
    Started {
        pid: u32,
    },
    /// The process ended. Exactly one of `code` and `signal` is set.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
    /// Deliver a signal to a running exec (its whole process group).
    Signal {
        signal: i32,
    },
    /// Change the tty size of a running exec started with `tty: true`.
    Resize {
        rows: u16,
        cols: u16,
    },

    // ----- files (paths are absolute paths inside the sandbox) -----
    Stat {
        path: String,
    },
    StatResult(FileInfo),
    ReadDir {
        path: String,
    },
    DirEntries {
        entries: Vec<FileInfo>,
    },
    MkdirAll {
        path: String,
        mode: u32,
    },
    Remove {
        path: String,
    },
    RemoveAll {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        link: String,
    },
    /// Open for reading; on success the agent replies `Ok` and then sends
    /// the contents on stream 1 followed by `Eof`.
    ReadFile {
        path: String,
    },
    /// Create or truncate; the engine then sends contents on stream 0 and
    /// `Eof`; the agent replies `Written` once the file is complete.
    WriteFile {
        path: String,
        mode: u32,
    },
    Written {
        bytes: u64,
    },
    /// Runs one file request (any of the above) as `user` ("uid",
    /// "uid:gid", "name" or "name:group", names resolved by the agent in
    /// the sandbox's /etc/passwd and /etc/group) with that gid as its only
    /// group, instead of as the sandbox's configured user, which is what an
    /// unwrapped file request acts as. The reply and streams are those of
    /// `request`, under this frame's id.
    AsUser {
        user: String,
        request: Box<Message>,
    },

    // ----- sandbox -----
    /// Cgroup-independent view of the sandbox from inside (process count).
    Ping,
    /// Ask the agent to end every process and exit (graceful stop).
    Shutdown,
    /// A microVM restored from a checkpoint becomes a new machine: the
    /// agent answers to sandbox `name` from then on (HelloAck), the guest
    /// sets `hostname`, mixes `entropy` (host random bytes) into its RNG
    /// with credit and reseeds it, so copies of one checkpoint do not
    /// share random numbers. Only a VM's init can (it keeps a privileged
    /// helper process for it); elsewhere the reply is an error.
    Reseed {
        name: String,
        hostname: String,
        entropy: Vec<u8>,
    },

    // ----- generic replies -----
    Ok,
    Error(WireError),
}

impl Message {
    /// Whether this is a file request: what `AsUser` may wrap.
    pub fn is_file_request(&self) -> bool {
        matches!(
            self,
            Message::Stat { .. }
                | Message::ReadDir { .. }
                | Message::MkdirAll { .. }
                | Message::Remove { .. }
                | Message::RemoveAll { .. }
                | Message::Rename { .. }
                | Message::Symlink { .. }
                | Message::ReadFile { .. }
                | Message::WriteFile { .. }
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// argv[0] is looked up in PATH (of `env`) when it has no slash.
    pub argv: Vec<String>,
    /// The complete environment as KEY=VALUE: the engine merged the
    /// sandbox's in before sending; the agent adds only HOME, when absent,
    /// from the user it resolved.
    pub env: Vec<String>,
    /// Absolute; required (the engine fills in the sandbox's workdir).
    pub cwd: String,
    /// "uid", "uid:gid", "name" or "name:group", resolved by the agent in
    /// the sandbox's own /etc/passwd (so users made inside work); `None`:
    /// the sandbox's user, as resolved at launch.
    pub user: Option<String>,
    pub tty: bool,
    /// Kill the process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// When false, stdin is /dev/null and no stream 0 is expected.
    pub stdin: bool,
    /// Initial tty size (ignored without tty).
    pub rows: Option<u16>,
    pub cols: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Base name (for `ReadDir`) or the path asked for (for `Stat`).
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
    /// Seconds since the Unix epoch.
    pub mtime: i64,
    /// For symlinks: the link's target, as stored.
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    #[default]
    File,
    Dir,
    Symlink,
    Other,
}
