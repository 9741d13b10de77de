//! Secrets the sandbox holds only as placeholders: which hosts each one
//! is bound to, and where placeholders appear in bytes the sandbox sends.
//!
//! The real value lives only here (the forwarder's memory); it replaces
//! its placeholder in requests to the secret's hosts, and there only in
//! credential headers: a server sends other headers back often enough
//! (CORS middleware answers Origin with Access-Control-Allow-Origin,
//! proxies and error pages echo X-Forwarded-Host or Referer) that a value
//! put there would come back into the sandbox (attack review s5,
//! S5-NET-3).

use serde::Deserialize;

use crate::policy::validate_name;

/// Every placeholder starts with this and is followed by 32 lower-case
/// hex digits (128 random bits chosen by the engine).
pub const PREFIX: &[u8] = b"lockbox-secret-";
pub const PLACEHOLDER_LEN: usize = PREFIX.len() + 32;
pub const MAX_SECRETS: usize = 64;
pub const MAX_HOSTS: usize = 64;
pub const MAX_VALUE: usize = 16 * 1024;
/// Extra header names one secret may name (`SecretSpec::headers`).
pub const MAX_HEADERS: usize = 16;

/// Where every secret's placeholder is replaced (lower case). The two
/// standard ones, then the API-key headers of the major APIs: Anthropic
/// and AWS API Gateway (x-api-key), Azure OpenAI (api-key), Azure API
/// Management and Cognitive Services (ocp-apim-subscription-key), Azure
/// Functions (x-functions-key), Google (x-goog-api-key), GitLab
/// (private-token), Supabase (apikey), RapidAPI (x-rapidapi-key),
/// Datadog (dd-api-key, dd-application-key), HashiCorp Vault
/// (x-vault-token), OpenStack and others (x-auth-token), and the common
/// x-access-token / x-api-token. OpenAI, GitHub and Hugging Face use
/// Authorization. Cookie is not here: a cookie jar is the server's own
/// state, which applications echo into pages and debug output, and an
/// API key in a cookie is rare; a secret that needs it names it.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "apikey",
    "x-goog-api-key",
    "ocp-apim-subscription-key",
    "x-functions-key",
    "private-token",
    "x-rapidapi-key",
    "dd-api-key",
    "dd-application-key",
    "x-vault-token",
    "x-auth-token",
    "x-access-token",
    "x-api-token",
];

/// Headers that frame or route the request: the forwarder reads them as
/// the sandbox sent them, so a value put there would make the server see
/// another request than the one checked.
const FRAMING_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

/// One secret as the start line gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    pub placeholder: String,
    pub value: String,
    pub hosts: Vec<String>,
    /// Header names where this secret is substituted besides
    /// `CREDENTIAL_HEADERS`.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// `hosts` are exact names: no `*.suffix`, which on a shared platform
/// (azurewebsites.net, herokuapp.com, an API gateway's domain) is every
/// other customer's name too, each with a valid certificate (attack
/// review s5, S5-NET-8). The engine refuses wildcards as well.
pub struct Secret {
    pub placeholder: String,
    pub value: String,
    hosts: Vec<String>,
    headers: Vec<String>,
}

impl std::fmt::Debug for Secret {
    // The value never reaches a log, an error or an event.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("placeholder", &self.placeholder)
            .field("hosts", &self.hosts)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Secret {
    pub fn bound_to(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// The placeholder is replaced in a header called `name`.
    pub fn substituted_in(&self, name: &str) -> bool {
        is_credential_header(name) || self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }
}

#[derive(Debug, Default)]
pub struct Secrets(Vec<Secret>);

impl Secrets {
    /// Checks every field; errors name the secret by its placeholder,
    /// never by its value.
    pub fn new(specs: Vec<SecretSpec>) -> Result<Secrets, String> {
        if specs.len() > MAX_SECRETS {
            return Err(format!("at most {MAX_SECRETS} secrets"));
        }
        let mut out: Vec<Secret> = Vec::with_capacity(specs.len());
        for s in specs {
            let p = &s.placeholder;
            if !is_placeholder(p.as_bytes()) {
                return Err(format!(
                    "secret placeholder {:?} is not lockbox-secret- and 32 lower-case hex digits",
                    truncate(p)
                ));
            }
            if out.iter().any(|o| &o.placeholder == p) {
                return Err(format!("secret placeholder {p} given twice"));
            }
            if s.value.is_empty() || s.value.len() > MAX_VALUE {
                return Err(format!("secret {p}: value must be 1..={MAX_VALUE} bytes"));
            }
            // It goes into header values as is: a CR or LF would let it
            // add headers or requests, a NUL cuts C parsers. (The same
            // rule as the engine's check at create.)
            if s.value.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
                return Err(format!(
                    "secret {p}: value holds NUL, CR or LF (a control character)"
                ));
            }
            if s.hosts.is_empty() || s.hosts.len() > MAX_HOSTS {
                return Err(format!("secret {p}: 1..={MAX_HOSTS} hosts"));
            }
            let mut hosts = Vec::with_capacity(s.hosts.len());
            for h in &s.hosts {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                if h.starts_with('*') {
                    return Err(format!(
                        "secret {p}: host {:?}: an exact name, not a wildcard",
                        truncate(&h)
                    ));
                }
                validate_name(&h).map_err(|e| format!("secret {p}: host: {e}"))?;
                hosts.push(h);
            }
            let headers = secret_headers(&s.headers).map_err(|e| format!("secret {p}: {e}"))?;
            out.push(Secret {
                placeholder: s.placeholder,
                value: s.value,
                hosts,
                headers,
            });
        }
        Ok(Secrets(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }

    /// Connections whose TLS server name is `host` are intercepted.
    pub fn intercepts(&self, host: &str) -> bool {
        self.0.iter().any(|s| s.bound_to(host))
    }

    /// Every host named by some secret: the CA's name constraints.
    pub fn constraint_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.iter().flat_map(|s| s.hosts.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn by_placeholder(&self, p: &[u8]) -> Option<&Secret> {
        self.0.iter().find(|s| s.placeholder.as_bytes() == p)
    }
}

pub fn is_credential_header(name: &str) -> bool {
    CREDENTIAL_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// A secret's own header names: tokens, lower-cased, none that frames
/// the request. (The engine checks `WithSecretHeaders` with this too.)
pub fn secret_headers(names: &[String]) -> Result<Vec<String>, String> {
    if names.len() > MAX_HEADERS {
        return Err(format!("at most {MAX_HEADERS} headers"));
    }
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if n.is_empty() || n.len() > 64 || !n.bytes().all(token) {
            return Err(format!("header {:?} is not a header name", truncate(n)));
        }
        let n = n.to_ascii_lowercase();
        if FRAMING_HEADERS.contains(&n.as_str()) {
            return Err(format!(
                "header {n} frames or routes the request: no secret goes there"
            ));
        }
        out.push(n);
    }
    Ok(out)
}

pub fn is_placeholder(p: &[u8]) -> bool {
    p.len() == PLACEHOLDER_LEN
        && p.starts_with(PREFIX)
        && p[PREFIX.len()..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Offsets of every known placeholder in `data`.
pub fn find_placeholders<'s, 'd>(
    secrets: &'s Secrets,
    data: &'d [u8],
) -> impl Iterator<Item = (usize, &'s Secret)> + use<'s, 'd> {
    memchr::memmem::find_iter(data, PREFIX).filter_map(move |i| {
        let p = data.get(i..i + PLACEHOLDER_LEN)?;
        secrets.by_placeholder(p).map(|s| (i, s))
    })
}

/// Finds placeholders in a stream seen chunk by chunk: keeps the last
/// `PLACEHOLDER_LEN - 1` bytes so one split across chunks is still found.
#[derive(Default)]
pub struct StreamScan {
    tail: Vec<u8>,
}

impl StreamScan {
    /// The placeholders (each once per call) whose end lies in `chunk`.
    pub fn scan<'a>(&mut self, secrets: &'a Secrets, chunk: &[u8]) -> Vec<&'a Secret> {
        let keep = PLACEHOLDER_LEN - 1;
        let mut found: Vec<&Secret> = Vec::new();
        let mut note = |s: &'a Secret| {
            if !found.iter().any(|f| std::ptr::eq(*f, s)) {
                found.push(s);
            }
        };
        // Across the boundary: the old tail plus the start of the chunk.
        if !self.tail.is_empty() {
            let mut joint = self.tail.clone();
            joint.extend_from_slice(&chunk[..chunk.len().min(keep)]);
            for (_, s) in find_placeholders(secrets, &joint) {
                note(s);
            }
        }
        for (_, s) in find_placeholders(secrets, chunk) {
            note(s);
        }
        if chunk.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            self.tail.extend_from_slice(chunk);
            let over = self.tail.len().saturating_sub(keep);
            self.tail.drain(..over);
        }
        found
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: &str = "lockbox-secret-0123456789abcdef0123456789abcdef";
    const P2: &str = "lockbox-secret-ffffffffffffffffffffffffffffffff";

    fn spec(p: &str, v: &str, hosts: &[&str]) -> SecretSpec {
        SecretSpec {
            placeholder: p.into(),
            value: v.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            headers: vec![],
        }
    }

    #[test]
    fn validation_refuses_bad_placeholders_values_and_hosts() {
        assert!(Secrets::new(vec![spec(P1, "v", &["api.test"])]).is_ok());
        for bad in [
            spec("lockbox-secret-0123", "v", &["a.test"]),
            spec(&P1.to_uppercase(), "v", &["a.test"]),
            spec(P1, "", &["a.test"]),
            spec(P1, "a\r\nX-Injected: 1", &["a.test"]),
            spec(P1, "v", &[]),
            spec(P1, "v", &["bad host"]),
            spec(P1, "v", &["*."]),
            // S5-NET-8: below a shared suffix live other customers.
            spec(P1, "v", &["*.azurewebsites.net"]),
            spec(P1, "v", &["*.api.test"]),
        ] {
            assert!(Secrets::new(vec![bad]).is_err());
        }
        let twice = Secrets::new(vec![spec(P1, "a", &["a.test"]), spec(P1, "b", &["b.test"])]);
        assert!(twice.is_err());
        let err = Secrets::new(vec![spec(P1, "sk-real\n", &["a.test"])]).unwrap_err();
        assert!(!err.contains("sk-real"), "{err}");
    }

    #[test]
    fn hosts_bind_exactly() {
        let s = Secrets::new(vec![spec(P1, "v", &["API.test", "files.pkg.test."])]).unwrap();
        assert!(s.intercepts("api.test"));
        assert!(s.intercepts("files.pkg.test."));
        assert!(!s.intercepts("a.api.test"));
        assert!(!s.intercepts("pkg.test"));
        assert!(!s.intercepts("xapi.test"));
        assert!(!s.intercepts("api.test.evil"));
        assert_eq!(s.constraint_names(), ["api.test", "files.pkg.test"]);
    }

    #[test]
    fn credential_headers_and_a_secrets_own_headers() {
        let mut own = spec(P1, "v", &["api.test"]);
        own.headers = vec!["X-Custom-Key".into()];
        let s = Secrets::new(vec![own, spec(P2, "w", &["api.test"])]).unwrap();
        let (p1, p2) = (
            s.by_placeholder(P1.as_bytes()).unwrap(),
            s.by_placeholder(P2.as_bytes()).unwrap(),
        );
        for h in [
            "Authorization",
            "proxy-authorization",
            "X-Api-Key",
            "api-key",
            "x-goog-api-key",
        ] {
            assert!(p1.substituted_in(h) && p2.substituted_in(h), "{h}");
        }
        for h in [
            "Origin",
            "Referer",
            "X-Forwarded-Host",
            "Cookie",
            "User-Agent",
            "X-Api-Key2",
        ] {
            assert!(!p1.substituted_in(h) && !p2.substituted_in(h), "{h}");
        }
        assert!(p1.substituted_in("x-custom-key") && !p2.substituted_in("x-custom-key"));
        for bad in [
            "Content-Length",
            "host",
            "Transfer-Encoding",
            "bad name",
            "",
            "a:b",
        ] {
            let mut b = spec(P1, "v", &["api.test"]);
            b.headers = vec![bad.into()];
            assert!(Secrets::new(vec![b]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stream_scan_finds_placeholders_split_across_chunks() {
        let s = Secrets::new(vec![spec(P1, "v", &["a.test"]), spec(P2, "w", &["b.test"])]).unwrap();
        let text = format!("GET /?k={P1} HTTP/1.1\r\nX: {P2}\r\n\r\n");
        for cut in 0..text.len() {
            let mut sc = StreamScan::default();
            let mut got: Vec<&str> = sc
                .scan(&s, &text.as_bytes()[..cut])
                .into_iter()
                .chain(sc.scan(&s, &text.as_bytes()[cut..]))
                .map(|x| x.placeholder.as_str())
                .collect();
            got.dedup();
            assert_eq!(got, [P1, P2], "cut at {cut}");
        }
        let unknown = "lockbox-secret-00000000000000000000000000000000";
        assert!(StreamScan::default()
            .scan(&s, unknown.as_bytes())
            .is_empty());
    }
}
