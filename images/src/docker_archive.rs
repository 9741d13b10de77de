//! Importing a `docker save` tarball without unpacking it first: one pass
//! indexes where each member's bytes are, then layers are read in place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;

use serde::Deserialize;

use crate::archive::{unpack_checked_layer, Cancellable, LayerCheck};
use crate::cancel::Cancel;
use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::error::{ImageError, IoContext, Result};
use crate::meter::{Meter, MeteredReader, METADATA_LIMIT};
use crate::oci::{self, MAX_JSON};
use crate::unpack::Unpacker;

pub(crate) struct Plan {
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// (member name, expected diff_id)
    pub layers: Vec<(String, Digest)>,
    pub ref_name: Option<String>,
    members: HashMap<String, (u64, u64)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn index_members(tarball: &Path) -> Result<HashMap<String, (u64, u64)>> {
    let file = File::open(tarball).ctx("open", tarball)?;
    let meter = Rc::new(Meter::default());
    let mut archive = tar::Archive::new(MeteredReader {
        inner: file,
        meter: meter.clone(),
    });
    let mut members = HashMap::new();
    let read_err = |e: std::io::Error| {
        if meter.tripped() {
            ImageError::TooLarge(format!("{}: {e}", tarball.display()))
        } else {
            ImageError::invalid_image(format!("reading {}: {e}", tarball.display()))
        }
    };
    let mut entries = archive.entries_with_seek().map_err(read_err)?;
    loop {
        meter.arm(METADATA_LIMIT);
        let next = entries.next();
        meter.disarm();
        let Some(entry) = next else { break };
        let entry = entry.map_err(read_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| ImageError::invalid_image(format!("bad member name: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        members.insert(name, (entry.raw_file_position(), entry.size()));
    }
    Ok(members)
}

fn member<'a>(
    tarball: &Path,
    members: &HashMap<String, (u64, u64)>,
    name: &str,
) -> Result<(impl Read + 'a, u64)> {
    let (offset, size) = *members
        .get(name.trim_start_matches("./"))
        .ok_or_else(|| ImageError::invalid_image(format!("the archive has no member {name:?}")))?;
    let mut file = File::open(tarball).ctx("open", tarball)?;
    file.seek(SeekFrom::Start(offset)).ctx("seek", tarball)?;
    Ok((file.take(size), size))
}

fn read_small(
    tarball: &Path,
    members: &HashMap<String, (u64, u64)>,
    name: &str,
) -> Result<Vec<u8>> {
    let (mut r, size) = member(tarball, members, name)?;
    if size > MAX_JSON {
        return Err(ImageError::invalid_image(format!("{name} is too large")));
    }
    let mut body = Vec::new();
    r.read_to_end(&mut body).ctx("read", tarball)?;
    Ok(body)
}

/// The digest a member's name promises (`<hex>.json`, `blobs/sha256/<hex>`).
fn named_digest(name: &str) -> Option<Digest> {
    let base = name.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    (hex.len() == 64).then(|| Digest::parse(hex).ok()).flatten()
}

/// A `docker save | gzip` (or zstd) tarball is decompressed once into the
/// store's temp dir, within the unpack budget, so its members can be read
/// in place. Plain tarballs are used as they are.
pub(crate) fn plain_tarball(
    tarball: &Path,
    tmp_dir: &Path,
    budget: u64,
    cancel: &Cancel,
) -> Result<PlainTarball> {
    use std::io::BufRead;
    // Opened once, without a link on its path and without blocking; every
    // later read goes through this open file (its /proc/self/fd link), so
    // a name swapped for a FIFO, a device or a link meanwhile is never read.
    let held = crate::oci_layout::host_dir::open_host_file(tarball)?;
    let mut head = std::io::BufReader::new(held.try_clone().ctx("dup", tarball)?);
    let magic = head.fill_buf().ctx("read", tarball)?;
    let compressed =
        magic.starts_with(&[0x1f, 0x8b]) || magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if !compressed {
        return Ok(PlainTarball {
            path: format!("/proc/self/fd/{}", held.as_raw_fd()).into(),
            temp: false,
            _held: Some(held),
        });
    }
    let path = tmp_dir.join(format!("{}.tar", crate::fsutil::unique_suffix()));
    let out = PlainTarball {
        path,
        temp: true,
        _held: None,
    };
    // A few MiB of zstd can expand to the whole budget on disk: the copy
    // stops as soon as the caller gives up.
    let mut stream = Cancellable {
        inner: crate::decompress::decompressed(head)?,
        cancel,
    }
    .take(budget + 1);
    let mut file = File::create(&out.path).ctx("create", &out.path)?;
    let n = std::io::copy(&mut stream, &mut file);
    cancel.check()?;
    let n = n.map_err(|e| {
        ImageError::invalid_image(format!("decompressing {}: {e}", tarball.display()))
    })?;
    if n > budget {
        return Err(ImageError::TooLarge(format!(
            "{} decompresses to more than {budget} bytes",
            tarball.display()
        )));
    }
    Ok(out)
}

/// The tarball to read; removed on drop when it was a temp copy.
pub(crate) struct PlainTarball {
    pub path: std::path::PathBuf,
    temp: bool,
    /// The caller's tarball, open for as long as `path` names it.
    _held: Option<File>,
}

impl Drop for PlainTarball {
    fn drop(&mut self) {
        if self.temp {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub(crate) fn plan(tarball: &Path, reference: Option<&str>) -> Result<Plan> {
    let members = index_members(tarball)?;
    let manifest_body = read_small(tarball, &members, "manifest.json")?;
    let entries: Vec<Entry> = oci::parse(&manifest_body, "manifest.json")?;
    let entry = match reference {
        Some(r) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| t == r))
            .ok_or_else(|| ImageError::NotFound(format!("no image tagged {r:?} in the archive")))?,
        None => match entries.as_slice() {
            [one] => one,
            [] => return Err(ImageError::invalid_image("manifest.json lists no image")),
            many => {
                let tags: Vec<&str> = many
                    .iter()
                    .flat_map(|e| e.repo_tags.iter().flatten())
                    .map(String::as_str)
                    .collect();
                return Err(ImageError::InvalidArgument(format!(
                    "the archive holds {} images; pick one of: {}",
                    many.len(),
                    tags.join(", ")
                )));
            }
        },
    };
    let config_body = read_small(tarball, &members, &entry.config)?;
    let config_digest = Digest::of_bytes(&config_body);
    if let Some(promised) = named_digest(&entry.config) {
        promised.verify(&config_digest, &format!("config {}", entry.config))?;
    }
    let diff_ids = oci::diff_ids(&config_body, entry.layers.len())?;
    let config = ImageConfig::from_oci_json(&config_body)
        .map_err(|e| ImageError::invalid_image(format!("image config: {e}")))?;
    Ok(Plan {
        config_digest,
        config,
        layers: entry.layers.iter().cloned().zip(diff_ids).collect(),
        ref_name: reference
            .map(str::to_string)
            .or_else(|| entry.repo_tags.as_ref().and_then(|t| t.first().cloned())),
        members,
    })
}

pub(crate) fn unpack(tarball: &Path, plan: &Plan, unpacker: &mut Unpacker) -> Result<()> {
    for (name, diff_id) in &plan.layers {
        let (raw, _) = member(tarball, &plan.members, name)?;
        // Newer Docker names layers by their blob digest: check it too.
        let promised = named_digest(name);
        unpack_checked_layer(
            raw,
            unpacker,
            LayerCheck {
                blob: promised.as_ref().map(|d| (d, None)),
                diff_id,
                what: &format!("layer {name}"),
            },
        )?;
    }
    Ok(())
}
