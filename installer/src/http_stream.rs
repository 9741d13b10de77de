//! One HTTP GET run on its own thread, handed over through a channel, so
//! the installer can give up on a server that stalls (before the headers or
//! mid-body) and honour an overall deadline: the blocking client has only a
//! whole-request timeout, which a large download would hit.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

const CHUNK: usize = 1 << 18;

/// Status line and the headers the downloader needs.
pub struct Head {
    pub status: StatusCode,
    pub content_length: Option<u64>,
    pub content_range: Option<String>,
}

enum Msg {
    Head(Head),
    Data(Vec<u8>),
    Fail(String),
}

/// How much must arrive in how long, and the bound on everything. A
/// window of `stall` must bring `min_bytes`: a server that drips a byte
/// now and then is as stalled as a silent one.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub stall: Duration,
    pub min_bytes: u64,
    pub deadline: Option<Instant>,
}

impl Limits {
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn wait(&self, window_end: Instant) -> Duration {
        let end = match self.deadline {
            Some(d) => window_end.min(d),
            None => window_end,
        };
        end.saturating_duration_since(Instant::now())
    }
}

pub struct HttpStream {
    rx: Receiver<Msg>,
    limits: Limits,
    pending: Vec<u8>,
    pos: usize,
    eof: bool,
    /// The current stall window ends here unless `min_bytes` arrive first.
    window_end: Instant,
    window_bytes: u64,
}

/// Starts the request; `head` waits for the status and headers.
pub fn get(client: &Client, url: &str, from: u64, limits: Limits) -> HttpStream {
    let (tx, rx) = sync_channel(4);
    let mut req = client.get(url);
    if from > 0 {
        req = req.header(RANGE, format!("bytes={from}-"));
    }
    let url = url.to_string();
    std::thread::spawn(move || {
        let mut resp = match req.send() {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Msg::Fail(format!("{url}: {}", error_chain(&e))));
                return;
            }
        };
        let head = Head {
            status: resp.status(),
            content_length: resp.content_length(),
            content_range: resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(String::from),
        };
        if tx.send(Msg::Head(head)).is_err() {
            return;
        }
        loop {
            let mut buf = vec![0u8; CHUNK];
            match resp.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    // A send error means the reader gave up: stop reading.
                    if tx.send(Msg::Data(buf)).is_err() || n == 0 {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Msg::Fail(format!("{url}: {e}")));
                    return;
                }
            }
        }
    });
    HttpStream {
        rx,
        limits,
        pending: Vec::new(),
        pos: 0,
        eof: false,
        window_end: Instant::now() + limits.stall,
        window_bytes: 0,
    }
}

/// reqwest's Display says only "error sending request": the cause (TLS,
/// refused connection, ...) is in the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out += &format!(": {c}");
        cur = c.source();
    }
    out
}

impl HttpStream {
    fn next(&mut self) -> io::Result<Msg> {
        let timeout = self.limits.wait(self.window_end);
        let msg = if timeout.is_zero() {
            Err(RecvTimeoutError::Timeout)
        } else {
            self.rx.recv_timeout(timeout)
        };
        match msg {
            Ok(m) => {
                if let Msg::Data(d) = &m {
                    self.window_bytes += d.len() as u64;
                    if self.window_bytes >= self.limits.min_bytes || d.is_empty() {
                        self.window_bytes = 0;
                        self.window_end = Instant::now() + self.limits.stall;
                    }
                }
                Ok(m)
            }
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                if self.limits.expired() {
                    "deadline exceeded".to_string()
                } else {
                    format!(
                        "fewer than {} bytes in {:?} (too slow or stalled)",
                        self.limits.min_bytes, self.limits.stall
                    )
                },
            )),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::other("download thread ended")),
        }
    }

    pub fn head(&mut self) -> Result<Head, String> {
        match self.next() {
            Ok(Msg::Head(h)) => Ok(h),
            Ok(Msg::Fail(e)) => Err(e),
            Ok(Msg::Data(_)) => Err("body before headers".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Read for HttpStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.pending.len() {
            if self.eof {
                return Ok(0);
            }
            match self.next()? {
                Msg::Data(d) if d.is_empty() => self.eof = true,
                Msg::Data(d) => {
                    self.pending = d;
                    self.pos = 0;
                }
                Msg::Fail(e) => return Err(io::Error::other(e)),
                Msg::Head(_) => return Err(io::Error::other("second response head")),
            }
        }
        let n = out.len().min(self.pending.len() - self.pos);
        out[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
