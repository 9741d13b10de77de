//! HTTP/1.1 requests from the sandbox to a secret host, head by head:
//! each head is read whole (at most `MAX_HEAD`), the placeholders in its
//! credential headers are replaced (`Secret::substituted_in`), and the
//! body that follows is streamed unread, framed by Content-Length or
//! chunked encoding. Anything this code would frame differently from a
//! strict server is refused rather than guessed at.
//!
//! A request with a body is the last one on its connection: it goes out
//! with `Connection: close`, and a head the sandbox sends after it is
//! refused. A server that frames a body differently (one that ignores
//! Content-Length on some route, a "CL.0" desync) would otherwise read
//! the body as the start of another request and the next head, real
//! value in it, as that request's body, which it may store where the
//! sandbox can read it (attack review s5, S5-NET-7).

use std::io;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::secrets::{find_placeholders, Secret, Secrets};

/// The sandbox sends every byte: a head longer than this is refused.
pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 128;
/// A head after substitution: placeholders (47 bytes) become values of up
/// to 16 KiB, so a 64 KiB head could otherwise grow to megabytes.
pub const MAX_REWRITTEN: usize = 256 * 1024;
/// A chunk-size line with its extensions.
const MAX_CHUNK_LINE: usize = 4096;
const READ: usize = 16 * 1024;

/// What one request head turned into.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub head: Vec<u8>,
    pub substituted: u64,
    /// Placeholders of secrets not bound to this host (left as they are).
    pub misdirected: Vec<String>,
    /// Placeholders of this host's secrets outside the headers they are
    /// substituted in: in the request target or another header (left as
    /// they are).
    pub elsewhere: Vec<String>,
    pub framing: Framing,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub enum Framing {
    #[default]
    None,
    Length(u64),
    Chunked,
    /// CONNECT or Upgrade: what follows is no longer HTTP/1.1 requests.
    Opaque,
}

impl Framing {
    /// A body follows the head: the request ends its connection.
    pub fn has_body(self) -> bool {
        matches!(self, Framing::Chunked) || matches!(self, Framing::Length(n) if n > 0)
    }
}

pub fn refused(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Parses and rewrites one complete head (ending with its empty line).
pub fn rewrite_head(raw: &[u8], secrets: &Secrets, host: &str) -> io::Result<Rewritten> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(raw) {
        Ok(httparse::Status::Complete(n)) if n == raw.len() => {}
        Ok(_) => return Err(refused("request head is incomplete")),
        Err(e) => return Err(refused(format!("bad request head: {e}"))),
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(refused("bad request line"));
    };
    // TRACE (and IIS's TRACK) asks the server to send the request back as
    // it received it, substituted values included; Apache answers it
    // unless told not to (attack review s5, S5-NET-2).
    if method.eq_ignore_ascii_case("TRACE") || method.eq_ignore_ascii_case("TRACK") {
        return Err(refused(format!(
            "{method} would echo the request, secrets included"
        )));
    }
    check_target(method, path, req.headers, host)?;
    let mut out = Rewritten::default();
    for (_, s) in find_placeholders(secrets, path.as_bytes()) {
        note(&mut out, s, host);
    }
    let mut head = Vec::with_capacity(raw.len() + 256);
    head.extend_from_slice(format!("{method} {path} HTTP/1.{version}\r\n").as_bytes());
    let (mut length, mut chunked, mut te_count, mut opaque) = (None, false, 0, method == "CONNECT");
    // Connection and Keep-Alive go last, replaced when a body follows.
    let mut persistence: Vec<&httparse::Header<'_>> = Vec::new();
    for h in req.headers.iter() {
        let name = h.name;
        let value = substitute(h.value, secrets, host, name, &mut out)?;
        let value = if is_auth(name) {
            basic_auth(&value, secrets, host, name, &mut out)?.unwrap_or(value)
        } else {
            value
        };
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
            persistence.push(h);
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| refused("bad Content-Length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(refused("conflicting Content-Length"));
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te_count += 1;
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
            if !chunked || te_count > 1 {
                return Err(refused("Transfer-Encoding other than one \"chunked\""));
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            opaque = true;
        }
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(&value);
        head.extend_from_slice(b"\r\n");
        if head.len() > MAX_REWRITTEN {
            return Err(too_big());
        }
    }
    if chunked && length.is_some() {
        return Err(refused("both Content-Length and Transfer-Encoding"));
    }
    out.framing = match (opaque, chunked, length) {
        (true, _, _) => Framing::Opaque,
        (_, true, _) => Framing::Chunked,
        (_, _, Some(n)) => Framing::Length(n),
        _ => Framing::None,
    };
    if out.framing.has_body() {
        head.extend_from_slice(b"Connection: close\r\n");
    } else {
        for h in persistence {
            head.extend_from_slice(h.name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(h.value);
            head.extend_from_slice(b"\r\n");
        }
    }
    if head.len() + 2 > MAX_REWRITTEN {
        return Err(too_big());
    }
    head.extend_from_slice(b"\r\n");
    out.head = head;
    Ok(out)
}

/// The request must be for the name the TLS connection was verified for:
/// a server behind one address may serve other names too (a CDN, a
/// shared host), and it would route by the Host header or an absolute
/// target, sending the real value to whoever owns that other name.
fn check_target(
    method: &str,
    path: &str,
    headers: &[httparse::Header<'_>],
    host: &str,
) -> io::Result<()> {
    let mismatch = |what: &str, got: &str| {
        refused(format!(
            "{what} {:?} is not {host}, the verified TLS name",
            got.chars().take(64).collect::<String>()
        ))
    };
    let mut hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    // Without a Host a shared server routes by its default, not by the
    // TLS name (HTTP/1.0 allows that; Go's server takes it as Host ""):
    // every real client sends one, so a request without it gets nothing.
    let Some(h) = hosts.next() else {
        return Err(refused(format!(
            "no Host header: the request must name {host}, the verified TLS name"
        )));
    };
    let v = std::str::from_utf8(h.value).map_err(|_| refused("Host is not text"))?;
    if !same_authority(v, host) {
        return Err(mismatch("Host", v));
    }
    if hosts.next().is_some() {
        return Err(refused("more than one Host header"));
    }
    if method == "CONNECT" {
        if !same_authority(path, host) {
            return Err(mismatch("CONNECT target", path));
        }
    } else if !path.starts_with('/') && path != "*" {
        // Absolute form: scheme://authority/... A backslash ends the
        // authority too, as in the WHATWG URL parser (and Node's legacy
        // url.parse): "https://evil\\@api/" is evil's (attack review s5).
        let authority = path
            .split_once("://")
            .map(|(_, rest)| rest.split(['/', '?', '#', '\\']).next().unwrap_or(""))
            .ok_or_else(|| refused("request target is neither a path nor absolute"))?;
        let authority = authority.rsplit('@').next().unwrap_or("");
        if !same_authority(authority, host) {
            return Err(mismatch("request target", authority));
        }
    }
    Ok(())
}

/// `authority` (name, optional port) names `host`.
fn same_authority(authority: &str, host: &str) -> bool {
    let name = match authority.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => authority,
    };
    name.trim_end_matches('.').eq_ignore_ascii_case(host)
}

fn is_auth(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("proxy-authorization")
}

/// A placeholder left as it is: sent to a host its secret is not bound
/// to, or somewhere other than the headers it is substituted in.
fn note(out: &mut Rewritten, s: &Secret, host: &str) {
    let list = if !s.bound_to(host) {
        &mut out.misdirected
    } else {
        &mut out.elsewhere
    };
    if !list.contains(&s.placeholder) {
        list.push(s.placeholder.clone());
    }
}

fn too_big() -> io::Error {
    refused(format!(
        "request head over {MAX_REWRITTEN} bytes once substituted"
    ))
}

/// `value` of header `name` with every placeholder of a secret bound to
/// `host` and substituted in `name` replaced.
fn substitute(
    value: &[u8],
    secrets: &Secrets,
    host: &str,
    name: &str,
    out: &mut Rewritten,
) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(value.len());
    let mut at = 0;
    for (i, s) in find_placeholders(secrets, value) {
        if i < at {
            continue;
        }
        if s.bound_to(host) && s.substituted_in(name) {
            if v.len() + (i - at) + s.value.len() > MAX_REWRITTEN {
                return Err(too_big());
            }
            v.extend_from_slice(&value[at..i]);
            v.extend_from_slice(s.value.as_bytes());
            at = i + s.placeholder.len();
            out.substituted += 1;
        } else {
            note(out, s, host);
        }
    }
    v.extend_from_slice(&value[at..]);
    Ok(v)
}

/// `Basic <base64(user:password)>` with a placeholder inside the
/// credentials: decoded, substituted, encoded again. None: not Basic, or
/// nothing to replace.
fn basic_auth(
    value: &[u8],
    secrets: &Secrets,
    host: &str,
    name: &str,
    out: &mut Rewritten,
) -> io::Result<Option<Vec<u8>>> {
    let Some(sp) = value.iter().position(|&b| b == b' ') else {
        return Ok(None);
    };
    let (scheme, rest) = value.split_at(sp);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Ok(None);
    }
    let Ok(creds) = B64.decode(rest.trim_ascii()) else {
        return Ok(None);
    };
    let before = out.substituted;
    let replaced = substitute(&creds, secrets, host, name, out)?;
    if out.substituted == before {
        return Ok(None);
    }
    if replaced.len() / 3 * 4 + 8 > MAX_REWRITTEN {
        return Err(too_big());
    }
    let mut v = scheme.to_vec();
    v.push(b' ');
    v.extend_from_slice(B64.encode(replaced).as_bytes());
    Ok(Some(v))
}

/// Where a head ends: after the first empty line at or after `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(k) = memchr::memchr(b'\n', &buf[i..]) {
        let nl = i + k;
        match &buf[nl + 1..] {
            [b'\n', ..] => return Some(nl + 2),
            [b'\r', b'\n', ..] => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// The sandbox's side of the connection, with what was read but not yet
/// forwarded (never more than `MAX_HEAD` plus one read).
pub struct Requests<R> {
    r: R,
    buf: Vec<u8>,
    tmp: Box<[u8; READ]>,
}

pub struct Seen {
    pub substituted: u64,
    pub misdirected: Vec<String>,
    pub elsewhere: Vec<String>,
}

impl<R: AsyncRead + Unpin> Requests<R> {
    pub fn new(r: R) -> Self {
        Requests {
            r,
            buf: Vec::new(),
            tmp: Box::new([0; READ]),
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let n = self.r.read(&mut self.tmp[..]).await?;
        self.buf.extend_from_slice(&self.tmp[..n]);
        Ok(n)
    }

    /// Relays requests to `w` until the sandbox closes; `seen` is told
    /// about each head.
    pub async fn relay<W: AsyncWrite + Unpin>(
        mut self,
        w: &mut W,
        secrets: &Secrets,
        host: &str,
        mut seen: impl FnMut(Seen),
    ) -> io::Result<()> {
        loop {
            let Some(end) = self.read_head().await? else {
                return Ok(());
            };
            let r = rewrite_head(&self.buf[..end], secrets, host)?;
            self.buf.drain(..end);
            w.write_all(&r.head).await?;
            seen(Seen {
                substituted: r.substituted,
                misdirected: r.misdirected,
                elsewhere: r.elsewhere,
            });
            if r.framing.has_body() {
                if let Framing::Length(n) = r.framing {
                    self.copy_exact(w, n).await?;
                } else {
                    self.copy_chunked(w).await?;
                }
                w.flush().await?;
                return self.after_last().await;
            }
            match r.framing {
                Framing::None => {}
                Framing::Length(n) => self.copy_exact(w, n).await?,
                Framing::Chunked => self.copy_chunked(w).await?,
                Framing::Opaque => {
                    w.write_all(&std::mem::take(&mut self.buf)).await?;
                    w.flush().await?;
                    tokio::io::copy(&mut self.r, w).await?;
                    return Ok(());
                }
            }
            w.flush().await?;
        }
    }

    /// After a request that ended the connection: Ok at the sandbox's
    /// end, refused if it sends more.
    async fn after_last(&mut self) -> io::Result<()> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            return Ok(());
        }
        Err(refused(
            "a request after one with a body on the same connection \
             (that one went out with Connection: close; open a new connection)",
        ))
    }

    /// The length of the next head in `buf`; None at a clean end.
    async fn read_head(&mut self) -> io::Result<Option<usize>> {
        let mut from = 0;
        loop {
            if let Some(end) = head_end(&self.buf, from) {
                if end > MAX_HEAD {
                    return Err(refused(format!("request head over {MAX_HEAD} bytes")));
                }
                return Ok(Some(end));
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(refused(format!("request head over {MAX_HEAD} bytes")));
            }
            // The terminator may straddle the old end.
            from = self.buf.len().saturating_sub(2);
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    async fn copy_exact<W: AsyncWrite + Unpin>(&mut self, w: &mut W, mut n: u64) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let k = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            w.write_all(&self.buf[..k]).await?;
            self.buf.drain(..k);
            n -= k as u64;
        }
        Ok(())
    }

    async fn copy_chunked<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        loop {
            let (line, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(c)) => break c,
                    Ok(httparse::Status::Partial) if self.buf.len() < MAX_CHUNK_LINE => {
                        if self.fill().await? == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    _ => return Err(refused("bad chunk size line")),
                }
            };
            w.write_all(&self.buf[..line]).await?;
            self.buf.drain(..line);
            if size == 0 {
                // Trailers, then the empty line: forwarded as they are.
                let end = loop {
                    if self.buf.starts_with(b"\r\n") {
                        break 2;
                    }
                    if let Some(e) = head_end(&self.buf, 0) {
                        break e;
                    }
                    if self.buf.len() >= MAX_HEAD {
                        return Err(refused("chunked trailers too long"));
                    }
                    if self.fill().await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                };
                w.write_all(&self.buf[..end]).await?;
                self.buf.drain(..end);
                return Ok(());
            }
            self.copy_exact(w, size).await?;
            while self.buf.len() < 2 {
                if self.fill().await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            if &self.buf[..2] != b"\r\n" {
                return Err(refused("chunk not followed by CRLF"));
            }
            w.write_all(b"\r\n").await?;
            self.buf.drain(..2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretSpec;

    const P: &str = "lockbox-secret-0123456789abcdef0123456789abcdef";
    const Q: &str = "lockbox-secret-ffffffffffffffffffffffffffffffff";

    fn secrets(value: &str) -> Secrets {
        Secrets::new(vec![
            SecretSpec {
                placeholder: P.into(),
                value: value.into(),
                hosts: vec!["api.test".into()],
                headers: vec![],
            },
            SecretSpec {
                placeholder: Q.into(),
                value: "other".into(),
                hosts: vec!["else.test".into()],
                headers: vec![],
            },
        ])
        .unwrap()
    }

    fn run(input: &[u8]) -> io::Result<(Vec<u8>, u64, Vec<String>)> {
        run_with(input, "sk-real")
    }

    fn run_with(input: &[u8], value: &str) -> io::Result<(Vec<u8>, u64, Vec<String>)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            let (mut n, mut mis) = (0, vec![]);
            Requests::new(input)
                .relay(&mut out, &secrets(value), "api.test", |s| {
                    n += s.substituted;
                    mis.extend(s.misdirected);
                })
                .await?;
            Ok((out, n, mis))
        })
    }

    /// S5-NET-3: only credential headers get the value; a header a server
    /// reflects (Origin, Referer, X-Forwarded-Host) keeps the placeholder
    /// and is reported.
    #[test]
    fn only_credential_headers_are_substituted() {
        let head = format!(
            "GET /?k={P} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {P}\r\nX-Api-Key: {P}\r\n\
             Origin: https://{P}.test\r\nReferer: https://api.test/{P}\r\nX-Forwarded-Host: {P}\r\n\
             Cookie: k={P}\r\nX-Other: {Q}\r\n\r\n"
        );
        let r = rewrite_head(head.as_bytes(), &secrets("sk-real"), "api.test").unwrap();
        let want = format!(
            "GET /?k={P} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer sk-real\r\nX-Api-Key: sk-real\r\n\
             Origin: https://{P}.test\r\nReferer: https://api.test/{P}\r\nX-Forwarded-Host: {P}\r\n\
             Cookie: k={P}\r\nX-Other: {Q}\r\n\r\n"
        );
        assert_eq!(String::from_utf8(r.head).unwrap(), want);
        assert_eq!(r.substituted, 2);
        assert_eq!(r.elsewhere, [P]);
        assert_eq!(r.misdirected, [Q]);
        // A secret naming a header of its own gets it substituted there,
        // and only there; without that name the header keeps the
        // placeholder (the control).
        let own = Secrets::new(vec![SecretSpec {
            placeholder: P.into(),
            value: "sk-real".into(),
            hosts: vec!["api.test".into()],
            headers: vec!["x-custom".into()],
        }])
        .unwrap();
        let head =
            format!("GET / HTTP/1.1\r\nHost: api.test\r\nX-Custom: {P}\r\nOrigin: {P}\r\n\r\n");
        let r = rewrite_head(head.as_bytes(), &own, "api.test").unwrap();
        assert_eq!(
            String::from_utf8(r.head).unwrap(),
            format!("GET / HTTP/1.1\r\nHost: api.test\r\nX-Custom: sk-real\r\nOrigin: {P}\r\n\r\n")
        );
        let r = rewrite_head(head.as_bytes(), &secrets("sk-real"), "api.test").unwrap();
        assert!(!String::from_utf8(r.head).unwrap().contains("sk-real"));
        assert_eq!(r.elsewhere, [P]);
    }

    #[test]
    fn bearer_basic_and_keep_alive_are_substituted() {
        let basic = B64.encode(format!("user:{P}"));
        let req = format!(
            "GET /a HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {P}\r\nConnection: keep-alive\r\n\r\n\
             GET /b HTTP/1.1\nHost: api.test\nAuthorization: Basic {basic}\nX-Other: {Q}\n\n"
        );
        let (out, n, mis) = run(req.as_bytes()).unwrap();
        let want = format!(
            "GET /a HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer sk-real\r\nConnection: keep-alive\r\n\r\n\
             GET /b HTTP/1.1\r\nHost: api.test\r\nAuthorization: Basic {}\r\nX-Other: {Q}\r\n\r\n",
            B64.encode("user:sk-real")
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        assert_eq!((n, mis), (2, vec![Q.to_string()]));
    }

    /// S5-NET-7: after a request with a body nothing more goes out on the
    /// connection, so a server misframing that body cannot take the next
    /// head (value in it) as part of something it stores.
    #[test]
    fn a_request_with_a_body_is_the_last_on_its_connection() {
        let bodies = [
            format!("Content-Length: 52\r\nConnection: keep-alive\r\n\r\nbody {P}"),
            "Transfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n"
                .to_string(),
        ];
        for body in bodies {
            let first = format!(
                "POST /a HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {P}\r\n{body}"
            );
            let next =
                format!("GET /b HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {P}\r\n\r\n");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut out = Vec::new();
            let both = first.clone() + &next;
            let r = rt.block_on(Requests::new(both.as_bytes()).relay(
                &mut out,
                &secrets("sk-real"),
                "api.test",
                |_| {},
            ));
            let e = r.expect_err("a head after a body went through");
            assert!(e.to_string().contains("after one with a body"), "{e}");
            let out = String::from_utf8(out).unwrap();
            assert_eq!(out.matches("sk-real").count(), 1, "{out}");
            assert!(!out.contains("GET /b"), "{out}");
            assert!(out.contains("\r\nConnection: close\r\n\r\n"), "{out}");
            assert!(
                !out.contains("keep-alive") && !out.contains("Keep-Alive"),
                "{out}"
            );
            // Control: the request alone goes out whole, value and body.
            let (alone, n, _) = run(first.as_bytes()).unwrap();
            let alone = String::from_utf8(alone).unwrap();
            assert_eq!(n, 1);
            assert!(
                alone.ends_with(body.split_once("\r\n\r\n").unwrap().1),
                "{alone}"
            );
        }
    }

    #[test]
    fn ambiguous_or_oversized_heads_are_refused() {
        for bad in [
            "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_string(),
            "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".into(),
            "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".into(),
            "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: +1\r\n\r\n".into(),
            format!("GET / HTTP/1.1\r\nHost: api.test\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)),
            format!("GET / HTTP/1.1\r\nHost: api.test\r\nX: {}", "a".repeat(2 * MAX_HEAD)),
            "GET / HTTP/1.1\r\nHost: api.test\r\nX: a\r\n".into(),
            "GET / HTTP/1.1\r\nHost: api.test\r\nX: a\r\n b\r\n\r\n".into(),
            // Another name behind the same server.
            "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nHost: api.test\r\nHost: evil.test\r\n\r\n".into(),
            "GET http://evil.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n".into(),
            "GET https://api.test@evil.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n".into(),
            "GET https://evil.test\\@api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n".into(),
            "CONNECT evil.test:443 HTTP/1.1\r\nHost: api.test\r\n\r\n".into(),
        ] {
            let e = run(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ),
                "{e}"
            );
        }
        // Many placeholders whose values would grow the head past the bound
        // once substituted.
        let many = format!("{P} ").repeat(1200);
        let req = format!("GET / HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: {many}\r\n\r\n");
        let e = run_with(req.as_bytes(), &"v".repeat(16 * 1024)).unwrap_err();
        assert!(e.to_string().contains("once substituted"), "{e}");
        // Controls: the verified name in every form, and a head just under
        // the bound, pass.
        for ok in [
            "GET / HTTP/1.1\r\nHost: API.test:443\r\n\r\n",
            "GET https://api.test/x?y HTTP/1.1\r\nHost: api.test\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: api.test.\r\n\r\n",
        ] {
            assert!(run(ok.as_bytes()).is_ok(), "{ok}");
        }
        let ok = format!(
            "GET / HTTP/1.1\r\nHost: api.test\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD - 64)
        );
        assert!(run(ok.as_bytes()).is_ok());
    }

    /// S5-NET-2: a server answering TRACE sends the head back as it got it,
    /// the real value in it.
    #[test]
    fn trace_is_refused() {
        for m in ["TRACE", "TRACK", "trace"] {
            let bad =
                format!("{m} / HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {P}\r\n\r\n");
            let e = run(bad.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("echo the request"), "{e}");
        }
        // Control: the same head with another method gets the value.
        let ok = format!("GET / HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {P}\r\n\r\n");
        let (out, n, _) = run(ok.as_bytes()).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("Bearer sk-real"));
        assert_eq!(n, 1);
    }

    /// Attack review s4 (ATTACK-2): a head without Host (legal in HTTP/1.0)
    /// had its placeholders replaced, and a server routing by Host sends
    /// it to its default site, not the verified name.
    #[test]
    fn a_request_without_host_gets_no_value() {
        for bad in [
            format!("GET / HTTP/1.0\r\nAuthorization: Bearer {P}\r\n\r\n"),
            format!("GET / HTTP/1.1\r\nAuthorization: Bearer {P}\r\n\r\n"),
            // The second request of a keep-alive connection.
            format!("GET / HTTP/1.1\r\nHost: api.test\r\n\r\nGET / HTTP/1.0\r\nX: {P}\r\n\r\n"),
        ] {
            let mut out = Vec::new();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let r = rt.block_on(Requests::new(bad.as_bytes()).relay(
                &mut out,
                &secrets("sk-real"),
                "api.test",
                |_| {},
            ));
            let e = r.expect_err(&bad);
            assert!(e.to_string().contains("no Host"), "{e}");
            assert!(!String::from_utf8_lossy(&out).contains("sk-real"), "{bad}");
        }
        // Control: the same request naming the host gets the value.
        let ok = format!("GET / HTTP/1.0\r\nHost: api.test\r\nAuthorization: Bearer {P}\r\n\r\n");
        let (out, n, _) = run(ok.as_bytes()).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("Bearer sk-real"));
        assert_eq!(n, 1);
    }
}
