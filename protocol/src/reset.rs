//! The session reset of a byte channel without connection boundaries (a
//! microVM's virtio-serial port, docs/microvm.md "Reattach").
//!
//! A new host connection first writes a *marker* (`MARKER_MAGIC` and a
//! fresh random token); the guest ends whatever session it had, opens a
//! new one and writes the *echo* (`ECHO_MAGIC` and the same token). Bytes
//! of an earlier connection can only come before these in either
//! direction, so the host discards the guest's bytes up to its echo and
//! the guest gives the new session only the bytes after the marker.
//!
//! `Finder` locates a magic and its token in a stream read in chunks,
//! holding nothing but a match position and at most one token.

/// Host to guest: "a new session starts after this and the token".
pub const MARKER_MAGIC: [u8; 16] = [
    0x09, 0x8e, 0x62, 0x6c, 0x4f, 0x10, 0x32, 0xb7, 0x5f, 0xf1, 0xb5, 0xb4, 0x3d, 0xe3, 0x9b, 0x90,
];
/// Guest to host: "the session of this token starts after this".
pub const ECHO_MAGIC: [u8; 16] = [
    0xe4, 0x11, 0x32, 0xdf, 0x0b, 0x4d, 0x63, 0x51, 0x4e, 0xf3, 0x6e, 0x13, 0xfc, 0x3b, 0xd5, 0xd1,
];
pub const TOKEN_LEN: usize = 16;
pub type Token = [u8; TOKEN_LEN];

/// `magic` followed by `token`, as written on the wire.
pub fn encode(magic: &[u8; 16], token: &Token) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(magic);
    b[16..].copy_from_slice(token);
    b
}

/// Finds `magic` + token in a stream fed chunk by chunk. The magics have
/// sixteen distinct bytes, so a failed partial match can only restart at
/// the byte that broke it: one counter is the whole matching state.
pub struct Finder {
    magic: [u8; 16],
    matched: usize,
    token: Token,
    /// Token bytes collected after a complete magic.
    got: usize,
}

/// What `Finder::feed` found in one chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No complete magic and token ends in this chunk.
    Nothing,
    /// A token whose last byte is `chunk[end - 1]`: the bytes before
    /// `start` (the chunk offset where the magic began, 0 if it began in an
    /// earlier chunk) precede it, the bytes from `end` on follow it.
    Token {
        token: Token,
        start: usize,
        end: usize,
    },
}

impl Finder {
    pub const fn new(magic: [u8; 16]) -> Finder {
        Finder {
            magic,
            matched: 0,
            token: [0; TOKEN_LEN],
            got: 0,
        }
    }

    /// Forgets a partial match (the stream it belonged to ended).
    pub fn clear(&mut self) {
        self.matched = 0;
        self.got = 0;
    }

    /// Scans `chunk` up to the end of the first complete marker in it.
    /// Feed the rest (`&chunk[end..]`) again to find the next one.
    pub fn feed(&mut self, chunk: &[u8]) -> Found {
        let mut start = 0;
        let mut i = 0;
        while i < chunk.len() {
            if self.matched == 16 {
                let n = (TOKEN_LEN - self.got).min(chunk.len() - i);
                self.token[self.got..self.got + n].copy_from_slice(&chunk[i..i + n]);
                self.got += n;
                i += n;
                if self.got == TOKEN_LEN {
                    self.clear();
                    return Found::Token {
                        token: self.token,
                        start,
                        end: i,
                    };
                }
                continue;
            }
            if self.matched == 0 {
                // The common case: skip to the magic's first byte.
                match chunk[i..].iter().position(|&b| b == self.magic[0]) {
                    Some(p) => {
                        i += p + 1;
                        start = i - 1;
                        self.matched = 1;
                    }
                    None => break,
                }
                continue;
            }
            let b = chunk[i];
            i += 1;
            if b == self.magic[self.matched] {
                self.matched += 1;
            } else if b == self.magic[0] {
                start = i - 1;
                self.matched = 1;
            } else {
                self.matched = 0;
            }
        }
        Found::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_have_distinct_bytes_and_differ() {
        for m in [MARKER_MAGIC, ECHO_MAGIC] {
            let mut s = m.to_vec();
            s.sort();
            s.dedup();
            assert_eq!(
                s.len(),
                16,
                "Finder's one-counter matching needs distinct bytes"
            );
        }
        assert_ne!(MARKER_MAGIC, ECHO_MAGIC);
    }

    /// Every split of a stream holding junk, a broken magic, a marker,
    /// more bytes and a second marker finds both tokens at the right
    /// offsets, however the stream is cut into chunks.
    #[test]
    fn finds_markers_across_any_chunking() {
        let t1: Token = [7; 16];
        let t2: Token = *b"0123456789abcdef";
        let mut s = b"old session bytes".to_vec();
        s.extend_from_slice(&MARKER_MAGIC[..9]); // a prefix, then a mismatch
        s.push(MARKER_MAGIC[0]);
        s.extend_from_slice(&encode(&MARKER_MAGIC, &t1)[1..]);
        let after1 = s.len();
        s.extend_from_slice(b"new session");
        s.extend_from_slice(&encode(&MARKER_MAGIC, &t2));
        let after2 = s.len();
        s.extend_from_slice(b"tail");
        for cut in 1..s.len() {
            let mut f = Finder::new(MARKER_MAGIC);
            let mut found = Vec::new();
            let mut off = 0;
            for chunk in s.chunks(cut) {
                let mut rest = chunk;
                let mut base = off;
                while let Found::Token { token, end, .. } = f.feed(rest) {
                    found.push((token, base + end));
                    rest = &rest[end..];
                    base += end;
                }
                off += chunk.len();
            }
            assert_eq!(found, vec![(t1, after1), (t2, after2)], "chunks of {cut}");
        }
    }

    #[test]
    fn start_is_where_the_magic_began() {
        let mut f = Finder::new(ECHO_MAGIC);
        let mut s = b"xy".to_vec();
        s.extend_from_slice(&encode(&ECHO_MAGIC, &[1; 16]));
        assert_eq!(
            f.feed(&s),
            Found::Token {
                token: [1; 16],
                start: 2,
                end: 34
            }
        );
        // The other direction's magic is not this one's.
        let mut f = Finder::new(ECHO_MAGIC);
        assert_eq!(f.feed(&encode(&MARKER_MAGIC, &[1; 16])), Found::Nothing);
    }
}
