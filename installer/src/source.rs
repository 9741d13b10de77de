//! Where a release comes from: an HTTP(S) mirror or a local directory
//! (plain path or file:// URL). Layout at the source: <base>/<version>/<path>.
//!
//! Downloads hash while streaming, never accept more bytes than declared,
//! retry with backoff on 5xx and transport errors, and resume with a Range
//! request from the bytes already received.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::http_stream::{self, HttpStream, Limits};
use crate::manifest::Artifact;

const MAX_ATTEMPTS: u32 = 5;
const BUF_SIZE: usize = 1 << 18;
/// How much a download writes before it asks the kernel to start flushing
/// it, so the final fsync finds most of it on disk already.
const WRITEBACK_EVERY: u64 = 8 << 20;
/// An attempt that receives nothing for this long is abandoned and retried.
pub const DEFAULT_STALL: Duration = Duration::from_secs(30);

pub enum Source {
    Http {
        base: String,
        client: Client,
        limits: Limits,
    },
    Dir(PathBuf),
}

/// Progress of one artifact: bytes received so far and the declared total.
pub type ProgressFn<'a> = &'a mut dyn FnMut(u64, u64);

/// Why one attempt stopped: try again (after backoff) or give up.
enum Stop {
    Retry(String),
    Fatal(Error),
}

impl Source {
    pub fn parse(spec: &str) -> Result<Source> {
        Source::parse_with_roots(spec, &[])
    }

    /// `extra_roots`: PEM certificates trusted for https mirrors in
    /// addition to the bundled web PKI roots (a private CA).
    pub fn parse_with_roots(spec: &str, extra_roots: &[Vec<u8>]) -> Result<Source> {
        if spec.starts_with("http://") || spec.starts_with("https://") {
            let mut builder = Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(None::<Duration>);
            for pem in extra_roots {
                let cert = reqwest::Certificate::from_pem(pem)
                    .map_err(|e| Error::Usage(format!("CA certificate: {e}")))?;
                builder = builder.add_root_certificate(cert);
            }
            let client = builder
                .build()
                .map_err(|e| Error::Network(format!("HTTP client: {e}")))?;
            Ok(Source::Http {
                base: spec.trim_end_matches('/').to_string(),
                client,
                limits: Limits {
                    stall: DEFAULT_STALL,
                    min_bytes: 1,
                    deadline: None,
                },
            })
        } else if let Some(p) = spec.strip_prefix("file://") {
            Ok(Source::Dir(PathBuf::from(p)))
        } else if spec.contains("://") {
            Err(Error::Usage(format!(
                "release source {spec:?}: want http(s)://, file:// or a directory"
            )))
        } else {
            Ok(Source::Dir(PathBuf::from(spec)))
        }
    }

    /// Sets the stall window, the bytes each window must bring (a minimum
    /// rate: a server dripping bytes is a stalled one) and an overall
    /// deadline (HTTP sources only).
    pub fn with_limits(
        mut self,
        stall: Duration,
        min_bytes: u64,
        deadline: Option<std::time::Instant>,
    ) -> Source {
        if let Source::Http { limits, .. } = &mut self {
            *limits = Limits {
                stall,
                min_bytes: min_bytes.max(1),
                deadline,
            };
        }
        self
    }

    fn check_deadline(&self) -> Result<()> {
        match self {
            Source::Http { limits, .. } if limits.expired() => {
                Err(Error::Network("deadline exceeded (--timeout)".into()))
            }
            _ => Ok(()),
        }
    }

    pub fn describe(&self, rel: &str) -> String {
        match self {
            Source::Http { base, .. } => format!("{base}/{rel}"),
            Source::Dir(d) => d.join(rel).display().to_string(),
        }
    }

    /// A small file (manifest, signature), refused if larger than `limit`.
    pub fn fetch_small(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let what = self.describe(rel);
        let mut last = String::new();
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt));
            }
            self.check_deadline()?;
            let reader: Box<dyn Read> = match self {
                Source::Dir(d) => Box::new(open_dir_file(&d.join(rel), &what)?),
                Source::Http { .. } => match self.get(rel, 0) {
                    Ok((h, r)) if h.status == StatusCode::OK => Box::new(r),
                    Ok((h, _)) => match classify_status(h.status, &what) {
                        Stop::Retry(m) => {
                            last = m;
                            continue;
                        }
                        Stop::Fatal(e) => return Err(e),
                    },
                    Err(Stop::Retry(m)) => {
                        last = m;
                        continue;
                    }
                    Err(Stop::Fatal(e)) => return Err(e),
                },
            };
            let mut out = Vec::new();
            match reader.take(limit + 1).read_to_end(&mut out) {
                Ok(_) if out.len() as u64 > limit => {
                    return Err(Error::Verification(format!(
                        "{what}: larger than {limit} bytes"
                    )))
                }
                Ok(_) => return Ok(out),
                Err(e) => last = format!("{what}: {e}"),
            }
        }
        Err(Error::Network(format!(
            "{last} (after {MAX_ATTEMPTS} attempts)"
        )))
    }

    /// Downloads `rel` into `file` (new and empty), hashing while it streams
    /// and checking the artifact's size and sha256. An interrupted HTTP
    /// transfer is resumed with a Range request within this call; nothing
    /// is resumed across calls.
    pub fn download(
        &self,
        rel: &str,
        artifact: &Artifact,
        file: &mut File,
        progress: ProgressFn,
    ) -> Result<()> {
        let what = self.describe(rel);
        let mut got = Received {
            file,
            hasher: Sha256::new(),
            have: 0,
            flushed: 0,
            size: artifact.size,
            what: &what,
        };
        let mut last = String::new();
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt));
            }
            self.check_deadline()?;
            let outcome = match self {
                Source::Dir(d) => {
                    let f = open_dir_file(&d.join(rel), &what)?;
                    got.restart()?;
                    // A local file does not get longer by retrying.
                    got.stream(f, progress).map_err(|s| match s {
                        Stop::Retry(m) => Stop::Fatal(Error::Verification(m)),
                        fatal => fatal,
                    })
                }
                Source::Http { .. } => self.http_attempt(rel, &mut got, progress),
            };
            match outcome {
                Ok(()) => break,
                Err(Stop::Fatal(e)) => return Err(e),
                Err(Stop::Retry(m)) => last = m,
            }
        }
        if got.have != artifact.size {
            self.check_deadline()?;
            return Err(Error::Network(format!(
                "{last} (after {MAX_ATTEMPTS} attempts, {} of {} bytes)",
                got.have, artifact.size
            )));
        }
        let sum = hex::encode(got.hasher.finalize());
        if sum != artifact.sha256 {
            return Err(Error::Verification(format!(
                "{what}: sha256 {sum}, manifest says {}",
                artifact.sha256
            )));
        }
        Ok(())
    }

    fn get(
        &self,
        rel: &str,
        from: u64,
    ) -> std::result::Result<(http_stream::Head, HttpStream), Stop> {
        let Source::Http {
            base,
            client,
            limits,
        } = self
        else {
            unreachable!("get on a directory source")
        };
        let mut s = http_stream::get(client, &format!("{base}/{rel}"), from, *limits);
        match s.head() {
            Ok(h) => Ok((h, s)),
            // A certificate the trusted roots do not vouch for stays so.
            Err(m) if m.contains("invalid peer certificate") => Err(Stop::Fatal(Error::Network(
                format!("{m} (a private CA can be trusted with --ca-cert)"),
            ))),
            Err(m) => Err(Stop::Retry(m)),
        }
    }

    fn http_attempt(
        &self,
        rel: &str,
        got: &mut Received,
        progress: ProgressFn,
    ) -> std::result::Result<(), Stop> {
        let (head, resp) = self.get(rel, got.have)?;
        match head.status {
            StatusCode::PARTIAL_CONTENT if got.have > 0 => {
                let start = head.content_range.as_deref().and_then(range_start);
                if start != Some(got.have) {
                    got.restart().map_err(Stop::Fatal)?;
                    return Err(Stop::Retry(format!(
                        "{}: unexpected Content-Range",
                        got.what
                    )));
                }
            }
            StatusCode::OK => got.restart().map_err(Stop::Fatal)?,
            StatusCode::RANGE_NOT_SATISFIABLE => {
                got.restart().map_err(Stop::Fatal)?;
                return Err(Stop::Retry(format!("{}: range not satisfiable", got.what)));
            }
            s => return Err(classify_status(s, got.what)),
        }
        if let Some(len) = head.content_length {
            if got.have + len != got.size {
                return Err(Stop::Fatal(Error::Verification(format!(
                    "{}: server sends {} bytes, manifest says {}",
                    got.what,
                    got.have + len,
                    got.size
                ))));
            }
        }
        got.stream(resp, progress)
    }
}

/// The bytes of one artifact received so far, hashed as they arrive.
struct Received<'a> {
    file: &'a mut File,
    hasher: Sha256,
    have: u64,
    flushed: u64,
    size: u64,
    what: &'a str,
}

impl Received<'_> {
    fn restart(&mut self) -> Result<()> {
        if self.have > 0 {
            self.file
                .set_len(0)
                .and_then(|_| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
                .map_err(|e| Error::io(format!("truncate download of {}", self.what), e))?;
            self.hasher = Sha256::new();
            self.have = 0;
            self.flushed = 0;
        }
        Ok(())
    }

    fn stream(&mut self, mut r: impl Read, progress: ProgressFn) -> std::result::Result<(), Stop> {
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Stop::Retry(format!("{}: {e}", self.what))),
            };
            if self.have + n as u64 > self.size {
                return Err(Stop::Fatal(Error::Verification(format!(
                    "{}: more than the {} bytes the manifest declares",
                    self.what, self.size
                ))));
            }
            self.file
                .write_all(&buf[..n])
                .map_err(|e| Stop::Fatal(Error::io(format!("write {}", self.what), e)))?;
            self.hasher.update(&buf[..n]);
            self.have += n as u64;
            if self.have - self.flushed >= WRITEBACK_EVERY {
                start_writeback(self.file, self.flushed, self.have - self.flushed);
                self.flushed = self.have;
            }
            progress(self.have, self.size);
        }
        if self.have < self.size {
            return Err(Stop::Retry(format!(
                "{}: truncated at {} of {} bytes",
                self.what, self.have, self.size
            )));
        }
        Ok(())
    }
}

/// A file of a directory mirror: a regular file, opened without following
/// a link or blocking (a FIFO there must not hold the install).
fn open_dir_file(path: &std::path::Path, what: &str) -> Result<File> {
    crate::fsutil::open_source_file(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(what.to_string()),
        std::io::ErrorKind::InvalidInput => {
            Error::Verification(format!("{what}: not a regular file"))
        }
        _ if e.raw_os_error() == Some(libc::ELOOP) => {
            Error::Verification(format!("{what}: a symbolic link"))
        }
        _ => Error::io_at("open", path, e),
    })
}

/// Asynchronous writeback of a written range (sync_file_range WRITE): a
/// hint, so its result does not matter; the fsync afterwards is the
/// durability point.
fn start_writeback(file: &File, off: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a syscall on a descriptor we own, with no memory arguments.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

fn classify_status(s: StatusCode, what: &str) -> Stop {
    if s == StatusCode::NOT_FOUND || s == StatusCode::GONE {
        Stop::Fatal(Error::NotFound(format!("{what} (HTTP {s})")))
    } else if s.is_server_error()
        || s == StatusCode::REQUEST_TIMEOUT
        || s == StatusCode::TOO_MANY_REQUESTS
    {
        Stop::Retry(format!("{what}: HTTP {s}"))
    } else {
        Stop::Fatal(Error::Network(format!("{what}: HTTP {s}")))
    }
}

/// "bytes 100-199/200" -> 100.
fn range_start(v: &str) -> Option<u64> {
    v.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)).min(2000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_sources() {
        assert!(matches!(
            Source::parse("http://127.0.0.1:1/x").unwrap(),
            Source::Http { .. }
        ));
        assert!(
            matches!(Source::parse("file:///tmp/d").unwrap(), Source::Dir(p) if p == Path::new("/tmp/d"))
        );
        assert!(matches!(Source::parse("/tmp/d").unwrap(), Source::Dir(_)));
        assert!(Source::parse("ftp://x").is_err());
    }

    #[test]
    fn reads_content_range() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
    }

    #[test]
    fn directory_download_checks_size_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("v")).unwrap();
        std::fs::write(dir.path().join("v/a"), b"hello").unwrap();
        let src = Source::Dir(dir.path().to_path_buf());
        let mut art = Artifact {
            name: "a".into(),
            path: "lib/a".into(),
            kind: crate::manifest::ArtifactKind::Library,
            size: 5,
            sha256: crate::fsutil::sha256_hex(b"hello"),
        };
        let run = |art: &Artifact| {
            let mut f = tempfile::tempfile().unwrap();
            src.download("v/a", art, &mut f, &mut |_, _| {})
        };
        run(&art).unwrap();
        art.sha256 = crate::fsutil::sha256_hex(b"hellO");
        assert!(matches!(run(&art), Err(Error::Verification(_))));
        art.size = 4;
        assert!(matches!(run(&art), Err(Error::Verification(_))));
        assert!(matches!(
            src.download(
                "v/missing",
                &art,
                &mut tempfile::tempfile().unwrap(),
                &mut |_, _| {}
            ),
            Err(Error::NotFound(_))
        ));
    }
}
