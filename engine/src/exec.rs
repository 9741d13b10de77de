//! Processes started inside a sandbox: start, stream, signal, resize, wait.

use std::sync::Arc;

use lockbox_protocol::{stream, ExecRequest, Message};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};

use crate::client::AgentClient;
use crate::error::{EngineError, Result};
use crate::streams::{demux, StreamReader, StreamWriter};

/// How a process ended. Exactly one of `code` and `signal` is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

impl ExitStatus {
    /// The shell convention: the code, or 128 + signal.
    pub fn exit_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => -1,
        }
    }
}

/// A running (or finished) process. The readers and writer are shared so a
/// C ABI handle can own each of them independently.
pub struct ExecProcess {
    pub pid: u32,
    client: AgentClient,
    id: u32,
    /// The stdio streams, until `take_stdio` hands them out. Whoever holds
    /// a reader decides its fate: dropping it discards the rest of that
    /// stream instead of stalling the process.
    pub stdin: Option<Arc<StreamWriter>>,
    pub stdout: Option<Arc<StreamReader>>,
    /// Absent with a tty (the tty merges both).
    pub stderr: Option<Arc<StreamReader>>,
    exit: Mutex<ExitWait>,
}

struct ExitWait {
    control: mpsc::UnboundedReceiver<Result<Message>>,
    result: Option<Result<ExitStatus>>,
}

impl ExecProcess {
    /// Starts `req` (already merged with the sandbox defaults) and waits for
    /// the agent to confirm the process exists.
    pub async fn start(client: &AgentClient, req: ExecRequest) -> Result<ExecProcess> {
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return Err(EngineError::invalid("exec needs a program name"));
        }
        let tty = req.tty;
        let wants_stdin = req.stdin;
        let op = client.op()?;
        op.send(&Message::Exec(req))?;
        let streams: &[u8] = if tty {
            &[stream::STDOUT]
        } else {
            &[stream::STDOUT, stream::STDERR]
        };
        let mut d = demux(op, streams);
        let pid = match d.control.recv().await {
            Some(Ok(Message::Started { pid })) => pid,
            Some(Ok(other)) => {
                return Err(EngineError::internal(format!(
                    "agent answered exec with {other:?}"
                )))
            }
            Some(Err(e)) => return Err(e),
            None => return Err(EngineError::unavailable("sandbox went away during exec")),
        };
        let mut readers = d.readers.into_iter();
        let stdout = readers.next().map(Arc::new);
        let stderr = readers.next().map(Arc::new);
        let stdin = wants_stdin.then(|| {
            Arc::new(StreamWriter::new(
                d.shared.clone(),
                d.id,
                stream::STDIN,
                d.credits,
            ))
        });
        Ok(ExecProcess {
            pid,
            client: client.clone(),
            id: d.id,
            stdin,
            stdout,
            stderr,
            exit: Mutex::new(ExitWait {
                control: d.control,
                result: None,
            }),
        })
    }

    /// Moves the stdio streams out: (stdin, stdout, stderr).
    #[allow(clippy::type_complexity)]
    pub fn take_stdio(
        &mut self,
    ) -> (
        Option<Arc<StreamWriter>>,
        Option<Arc<StreamReader>>,
        Option<Arc<StreamReader>>,
    ) {
        (self.stdin.take(), self.stdout.take(), self.stderr.take())
    }

    /// Waits for the process to end (cancel-safe; may be called repeatedly).
    pub async fn wait(&self) -> Result<ExitStatus> {
        let mut w = self.exit.lock().await;
        loop {
            if let Some(r) = &w.result {
                return r.clone();
            }
            let r = match w.control.recv().await {
                Some(Ok(Message::Exited {
                    code,
                    signal,
                    timed_out,
                })) => Ok(ExitStatus {
                    code,
                    signal,
                    timed_out,
                }),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Err(e),
                None => Err(EngineError::unavailable(
                    "sandbox went away before the process exited",
                )),
            };
            w.result = Some(r);
        }
    }

    /// Sends a signal to the process group.
    pub fn signal(&self, signal: i32) -> Result<()> {
        if !(1..=64).contains(&signal) {
            return Err(EngineError::invalid(format!(
                "signal {signal} is not valid"
            )));
        }
        self.client.shared().send(lockbox_protocol::Frame::control(
            self.id,
            &Message::Signal { signal },
        ))
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.client.shared().send(lockbox_protocol::Frame::control(
            self.id,
            &Message::Resize { rows, cols },
        ))
    }
}

/// Everything a finished process produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// What `run_collect` keeps of each output stream. Past it the process is
/// killed and the call fails with `resource_exhausted` ("output limit").
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 << 20;

/// Runs to completion, feeding `stdin` (if any) and collecting output (at
/// most `DEFAULT_OUTPUT_LIMIT` bytes per stream).
pub async fn run_collect(
    client: &AgentClient,
    mut req: ExecRequest,
    stdin: Option<Vec<u8>>,
) -> Result<ExecOutput> {
    req.stdin = stdin.is_some();
    let mut p = ExecProcess::start(client, req).await?;
    let (w_in, r_out, r_err) = p.take_stdio();
    let feed = async {
        if let (Some(w), Some(data)) = (w_in, stdin) {
            // A process may exit without reading its input: not an error.
            if w.write_all(&data).await.is_ok() {
                let _ = w.close_write().await;
            }
        }
    };
    let p = &p;
    let read_all = |r: Option<Arc<StreamReader>>| async move {
        let r = match r {
            Some(r) => r.read_to_end_max(DEFAULT_OUTPUT_LIMIT).await,
            None => Ok(Vec::new()),
        };
        if r.is_err() {
            // Nobody will read the rest: end the process rather than let
            // it run on writing into a stream that is only drained.
            let _ = p.signal(libc::SIGKILL);
        }
        r
    };
    let ((), out, err) = tokio::join!(feed, read_all(r_out), read_all(r_err));
    let status = p.wait().await?;
    Ok(ExecOutput {
        status,
        stdout: out?,
        stderr: err?,
    })
}
