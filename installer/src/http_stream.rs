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

/// How long to wait for the next byte, and for everything.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub stall: Duration,
    pub deadline: Option<Instant>,
}

impl Limits {
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn wait(&self) -> Duration {
        match self.deadline {
            Some(d) => self.stall.min(d.saturating_duration_since(Instant::now())),
            None => self.stall,
        }
    }
}

pub struct HttpStream {
    rx: Receiver<Msg>,
    limits: Limits,
    pending: Vec<u8>,
    pos: usize,
    eof: bool,
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
    fn next(&self) -> io::Result<Msg> {
        match self.rx.recv_timeout(self.limits.wait()) {
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                if self.limits.expired() {
                    "deadline exceeded".to_string()
                } else {
                    format!("no data for {:?}", self.limits.stall)
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
