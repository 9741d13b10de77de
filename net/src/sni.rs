//! The server name in a TLS ClientHello, read from the first bytes a
//! sandbox sends on a connection. Only the first record is looked at; a
//! ClientHello split across records (legal, never done by real clients
//! for a hello that fits) is treated as having no name.

/// The most the forwarder holds back before deciding: one TLS record.
pub const MAX_HELLO: usize = 5 + 16384;
/// The longest name DNS can carry (in text, without the trailing dot). A
/// longer "server name" names nothing a policy could allow, and each
/// refusal puts the name into an event (attack review s5, S5-NET-1).
pub const MAX_NAME: usize = 253;

#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not TLS (the first byte is not a handshake record).
    NotTls,
    /// TLS, but the record is not complete yet.
    Incomplete,
    /// A ClientHello, with its server name if it carried a plain one.
    ClientHello(Option<String>),
    /// A handshake record that is not a well-formed ClientHello.
    Malformed,
}

pub fn parse(buf: &[u8]) -> Hello {
    match buf.first() {
        None => return Hello::Incomplete,
        Some(0x16) => {}
        Some(_) => return Hello::NotTls,
    }
    if buf.len() < 5 {
        return Hello::Incomplete;
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if len > MAX_HELLO - 5 {
        return Hello::Malformed;
    }
    if buf.len() < 5 + len {
        return Hello::Incomplete;
    }
    match client_hello_name(&buf[5..5 + len]) {
        Some(name) => Hello::ClientHello(name),
        None => Hello::Malformed,
    }
}

/// Some(None): a ClientHello without server_name; None: malformed.
fn client_hello_name(rec: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(rec);
    if r.u8()? != 1 {
        return None;
    }
    let hs_len = r.u24()?;
    let mut r = Reader(r.take(hs_len)?);
    r.take(2 + 32)?; // version, random
    let sid = usize::from(r.u8()?);
    r.take(sid)?;
    let suites = usize::from(r.u16()?);
    r.take(suites)?;
    let comp = usize::from(r.u8()?);
    r.take(comp)?;
    if r.0.is_empty() {
        return Some(None);
    }
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let body = exts.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut b = Reader(body);
        let list_len = usize::from(b.u16()?);
        let mut list = Reader(b.take(list_len)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let n = usize::from(list.u16()?);
            let name = list.take(n)?;
            if name_type == 0 {
                if name.len() > MAX_NAME {
                    return None;
                }
                // Text comparison needs plain names; anything else is
                // refused by the caller as "no name".
                let ok = !name.is_empty()
                    && name
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c));
                return Some(ok.then(|| String::from_utf8_lossy(name).to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// A minimal ClientHello naming `name` (or none): what a TLS client sends
/// first. For tests, here and in the integration tests.
pub fn client_hello(name: Option<&str>) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(n) = name {
        let n = n.as_bytes();
        let list_len = 3 + n.len();
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&((2 + list_len) as u16).to_be_bytes());
        ext.extend_from_slice(&(list_len as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_a_client_hello() {
        let h = client_hello(Some("API.test"));
        assert_eq!(parse(&h), Hello::ClientHello(Some("api.test".into())));
        assert_eq!(parse(&client_hello(None)), Hello::ClientHello(None));
        for cut in [0, 1, 4, 5, h.len() - 1] {
            assert_eq!(parse(&h[..cut]), Hello::Incomplete, "{cut}");
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        let mut bad = h.clone();
        bad[5] = 2; // ServerHello
        assert_eq!(parse(&bad), Hello::Malformed);
        let odd = client_hello(Some("a\0b.test"));
        assert_eq!(parse(&odd), Hello::ClientHello(None));
    }

    /// S5-NET-1: one record could carry a 16 KiB "name".
    #[test]
    fn names_longer_than_dns_allows_are_malformed() {
        let longest = format!("{}.test", "a".repeat(MAX_NAME - 5));
        assert_eq!(
            parse(&client_hello(Some(&longest))),
            Hello::ClientHello(Some(longest.clone()))
        );
        let over = format!("a{longest}");
        assert_eq!(parse(&client_hello(Some(&over))), Hello::Malformed);
        assert_eq!(
            parse(&client_hello(Some(&"a".repeat(16328)))),
            Hello::Malformed
        );
    }
}
