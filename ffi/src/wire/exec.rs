//! exec.*: a process inside a sandbox; its stdio are stream handles.
use lockbox_engine::ExecOptions;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartParams {
    pub sandbox: u64,
    #[serde(default)]
    pub argv: Vec<String>,
    /// Overrides the sandbox's environment key by key.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Give the process a stdin stream handle (else it reads /dev/null).
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
}

impl StartParams {
    /// The sandbox handle and the engine's own options.
    pub fn into_parts(self) -> (u64, ExecOptions) {
        let StartParams {
            sandbox,
            argv,
            env,
            cwd,
            user,
            timeout_ms,
            stdin,
            tty,
            rows,
            cols,
        } = self;
        let opts = ExecOptions {
            argv,
            env,
            cwd,
            user,
            timeout_ms,
            stdin,
            tty,
            rows,
            cols,
        };
        (sandbox, opts)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Started {
    pub exec: u64,
    pub pid: u32,
    /// Present when `stdin` was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<u64>,
    /// Absent with a tty (its output is all on stdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<u64>,
}

/// `{"exec"}`: an exec handle.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecRef {
    pub exec: u64,
}

/// How the process ended: exactly one of `code` and `signal`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Exited {
    /// The code, or 128 + signal.
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub timed_out: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignalParams {
    pub exec: u64,
    pub signal: i32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResizeParams {
    pub exec: u64,
    pub rows: u16,
    pub cols: u16,
}
