//! Pulling from an OCI distribution (v2) registry: anonymous, basic or
//! bearer-token auth, image indexes with platform choice, and a digest
//! check of every manifest and blob. Layers stream straight into the
//! unpacker (hashed on the way), never stored twice.

use std::io::Read;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::oci::{self, Descriptor, Index, Manifest, MAX_JSON};
use crate::reference::Reference;
use crate::unpack::Unpacker;

/// How to reach the registry.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Username and password (or token) for basic auth, also sent to a
    /// bearer token service.
    pub credentials: Option<(String, String)>,
    /// Talk plain HTTP. Only when asked: never a fallback.
    pub plain_http: bool,
    /// `os/arch` to pick from an image index; default linux/<this arch>.
    /// (Running a foreign architecture needs binfmt emulation on the host.)
    pub platform: Option<String>,
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

pub(crate) struct Plan {
    pub reference: Reference,
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<Digest>,
}

enum Auth {
    None,
    Basic,
    Bearer(String),
}

pub(crate) struct Session {
    http: Client,
    base: String,
    reference: Reference,
    opts: PullOptions,
    auth: Auth,
}

fn net(e: reqwest::Error) -> ImageError {
    ImageError::Io {
        op: "http",
        path: e.url().map(|u| u.to_string()).unwrap_or_default().into(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Session {
    pub(crate) fn new(reference: Reference, opts: PullOptions) -> Result<Self> {
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(30))
            // reqwest's blocking timeout bounds the headers and each body
            // read, not the whole transfer: a stalled registry fails after
            // a minute, a slow but live one may take as long as it needs.
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("lockbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(net)?;
        let scheme = if opts.plain_http { "http" } else { "https" };
        let base = format!("{scheme}://{}", reference.api_host());
        Ok(Session {
            http,
            base,
            reference,
            opts,
            auth: Auth::None,
        })
    }

    /// GET with the current auth; on 401, learns the challenge once and
    /// retries.
    fn get(&mut self, path: &str, accept: Option<&str>) -> Result<Response> {
        let url = format!("{}/v2/{}/{path}", self.base, self.reference.repository);
        for attempt in 0..2 {
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            req = match &self.auth {
                Auth::None => req,
                Auth::Basic => {
                    let (u, p) = self.opts.credentials.clone().unwrap_or_default();
                    req.basic_auth(u, Some(p))
                }
                Auth::Bearer(t) => req.header(AUTHORIZATION, format!("Bearer {t}")),
            };
            let resp = req.send().map_err(net)?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                self.authenticate(&challenge)?;
                continue;
            }
            return check_status(resp, &url);
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn authenticate(&mut self, challenge: &str) -> Result<()> {
        let denied = |why: String| ImageError::Io {
            op: "auth",
            path: self.base.clone().into(),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, why),
        };
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            if self.opts.credentials.is_none() {
                return Err(denied("the registry wants credentials".into()));
            }
            self.auth = Auth::Basic;
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(denied(format!("unsupported auth challenge {challenge:?}")));
        }
        let params = parse_challenge(params);
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| denied("bearer challenge without realm".into()))?;
        let mut req = self.http.get(&realm);
        let mut query: Vec<(String, String)> = params
            .into_iter()
            .filter(|(k, _)| k == "service" || k == "scope")
            .collect();
        if !query.iter().any(|(k, _)| k == "scope") {
            query.push((
                "scope".into(),
                format!("repository:{}:pull", self.reference.repository),
            ));
        }
        req = req.query(&query);
        if let Some((u, p)) = &self.opts.credentials {
            req = req.basic_auth(u, Some(p));
        }
        let resp = check_status(req.send().map_err(net)?, &realm)?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_capped(resp, MAX_JSON)?;
        let t: Token = oci::parse(&body, "token response")?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| denied("the token service returned no token".into()))?;
        self.auth = Auth::Bearer(token);
        Ok(())
    }

    /// Fetches a manifest or index and checks it against `expected` (or
    /// the registry's Docker-Content-Digest when fetched by tag).
    fn manifest(
        &mut self,
        reference: &str,
        expected: Option<&Descriptor>,
    ) -> Result<(Vec<u8>, String)> {
        let resp = self.get(&format!("manifests/{reference}"), Some(MANIFEST_TYPES))?;
        let media = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let body = read_capped(resp, MAX_JSON)?;
        let actual = Digest::of_bytes(&body);
        if let Some(d) = expected {
            d.digest.verify(&actual, &format!("manifest {reference}"))?;
            if d.size != body.len() as u64 {
                return Err(ImageError::invalid_image(format!(
                    "manifest {reference} is {} bytes, its descriptor says {}",
                    body.len(),
                    d.size
                )));
            }
        } else if let Ok(pinned) = Digest::parse(reference) {
            pinned.verify(&actual, &format!("manifest {reference}"))?;
        } else if let Some(h) = header_digest {
            h.verify(&actual, &format!("manifest {reference}"))?;
        }
        Ok((body, media))
    }

    pub(crate) fn blob(&mut self, d: &Digest) -> Result<Response> {
        self.get(&format!("blobs/{d}"), None)
    }
}

fn check_status(resp: Response, url: &str) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = read_capped(resp, 4096).unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let msg = format!("{url}: HTTP {status}: {}", text.trim());
    Err(match status {
        StatusCode::NOT_FOUND => ImageError::NotFound(msg),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ImageError::Io {
            op: "auth",
            path: url.into(),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, msg),
        },
        _ => ImageError::Io {
            op: "http",
            path: url.into(),
            source: std::io::Error::other(msg),
        },
    })
}

fn read_capped(resp: Response, cap: u64) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    resp.take(cap + 1)
        .read_to_end(&mut body)
        .map_err(|e| ImageError::io("http read", "", e))?;
    if body.len() as u64 > cap {
        return Err(ImageError::invalid_image(format!(
            "a registry document is larger than {cap} bytes"
        )));
    }
    Ok(body)
}

/// `realm="x",service="y"` -> pairs (quotes optional).
fn parse_challenge(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((key, value));
        rest = next.trim_start_matches([',', ' ']);
    }
    out
}

/// Resolves the reference down to this platform's manifest and config.
pub(crate) fn plan(session: &mut Session) -> Result<Plan> {
    let top = session.reference.manifest_ref();
    let (mut body, mut media) = session.manifest(&top, None)?;
    let mut depth = 0;
    loop {
        let probe = Descriptor {
            media_type: media.clone(),
            digest: Digest::of_bytes(&body),
            size: body.len() as u64,
            platform: None,
            annotations: Default::default(),
        };
        if !oci::is_index(&probe, &body) {
            break;
        }
        depth += 1;
        if depth > 4 {
            return Err(ImageError::invalid_image("image indexes nest too deep"));
        }
        let index: Index = oci::parse(&body, "image index")?;
        let chosen = oci::pick_platform(&index, session.opts.platform.as_deref())?.clone();
        let r = session.manifest(&chosen.digest.to_string(), Some(&chosen))?;
        body = r.0;
        media = chosen.media_type.clone();
    }
    if media.starts_with("application/vnd.docker.distribution.manifest.v1") {
        return Err(ImageError::invalid_image(
            "Docker schema 1 manifests are not supported",
        ));
    }
    let manifest: Manifest = oci::parse(&body, "image manifest")?;
    if manifest.config.size > MAX_JSON {
        return Err(ImageError::invalid_image("image config is too large"));
    }
    let resp = session.blob(&manifest.config.digest)?;
    let config_body = read_capped(resp, MAX_JSON)?;
    manifest.config.digest.verify(
        &Digest::of_bytes(&config_body),
        &format!("config {}", manifest.config.digest),
    )?;
    let config = ImageConfig::from_oci_json(&config_body)
        .map_err(|e| ImageError::invalid_image(format!("image config: {e}")))?;
    let diff_ids = oci::diff_ids(&config_body, manifest.layers.len())?;
    Ok(Plan {
        reference: session.reference.clone(),
        config_digest: manifest.config.digest.clone(),
        config,
        layers: manifest.layers,
        diff_ids,
    })
}

pub(crate) fn unpack(session: &mut Session, plan: &Plan, unpacker: &mut Unpacker) -> Result<()> {
    crate::oci_layout::unpack_layers(&plan.layers, &plan.diff_ids, unpacker, |digest| {
        session.blob(digest)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn challenge_params() {
        let p = super::parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[1], ("service".into(), "registry.example".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull".into()));
    }
}
