//! Bringing images into the store: rootfs archives (the release assets),
//! OCI image layouts, `docker save` tarballs and registry pulls. Each one
//! plans (reads and checks manifests and configs) before anything is
//! written, then unpacks through `ImageStore::install`.

use std::path::Path;

use crate::cancel::Cancel;
use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::refs::SourceStamp;
use crate::store::{validate_name, Filled, ImageStore, ResolvedImage};

impl ImageStore {
    /// Unpacks a root-filesystem archive (tar, tar.gz or tar.zst, such as
    /// the release assets). The digest is the sha256 of the file as given;
    /// `expected` (from a manifest) is checked against it. With `name`, a
    /// ref is recorded with the file's stat for the warm path of `resolve`.
    pub fn import_archive(
        &self,
        archive: &Path,
        name: Option<&str>,
        expected: Option<&Digest>,
        cancel: &Cancel,
    ) -> Result<ResolvedImage> {
        if let Some(n) = name {
            validate_name(n)?;
        }
        let stamp = SourceStamp::of(archive)?;
        let resolved = self.install(expected, cancel, |unpacker| {
            let digest = crate::archive::unpack_rootfs_archive(archive, unpacker)?;
            if let Some(e) = expected {
                e.verify(&digest, &archive.display().to_string())?;
            }
            Ok(Filled {
                digest,
                config: ImageConfig::named_default(),
                source: archive.display().to_string(),
            })
        })?;
        if let Some(n) = name {
            self.set_ref(n, &resolved.digest, Some(stamp))?;
        }
        Ok(resolved)
    }

    /// Imports an OCI image layout directory (`oci-layout`, `index.json`,
    /// `blobs/`). `reference` picks a manifest by its
    /// `org.opencontainers.image.ref.name` annotation (needed when the
    /// index has several); image indexes pick linux + this machine's
    /// architecture. Every blob's digest and size are checked. The image is
    /// recorded under `name`, else under the reference it was found by.
    pub fn import_oci_layout(
        &self,
        dir: &Path,
        reference: Option<&str>,
        name: Option<&str>,
        cancel: &Cancel,
    ) -> Result<ResolvedImage> {
        let layout = crate::oci_layout::host_dir::HostDir::open(dir)?;
        let plan = crate::oci_layout::plan(&layout, reference)?;
        let ref_name = name.map(str::to_string).or_else(|| plan.ref_name.clone());
        if let Some(n) = &ref_name {
            validate_name(n)?;
        }
        let embedded = name.is_none();
        if embedded {
            self.embedded_name_free(ref_name.as_deref(), &plan.config_digest)?;
        }
        let digest = plan.config_digest.clone();
        let resolved = self.install(Some(&digest), cancel, |unpacker| {
            crate::oci_layout::unpack(&layout, &plan, unpacker)?;
            Ok(Filled {
                digest: plan.config_digest.clone(),
                config: plan.config.clone(),
                source: format!("oci-layout:{}", dir.display()),
            })
        })?;
        if let Some(n) = ref_name {
            if embedded {
                self.embedded_name_free(Some(&n), &resolved.digest)?;
            }
            self.set_ref(&n, &resolved.digest, None)?;
        }
        Ok(resolved)
    }

    /// Imports a `docker save` tarball (legacy `manifest.json` format, and
    /// the OCI-in-tar form newer Docker writes), plain or gzip/zstd
    /// compressed. `reference` picks one of
    /// several images by its RepoTag. Layer content is checked against the
    /// config's diff_ids, and the config against its file name.
    pub fn import_docker_archive(
        &self,
        tarball: &Path,
        reference: Option<&str>,
        name: Option<&str>,
        cancel: &Cancel,
    ) -> Result<ResolvedImage> {
        let plain = crate::docker_archive::plain_tarball(
            tarball,
            &self.root().join("tmp"),
            self.options().max_unpacked_bytes,
            cancel,
        )?;
        let plan = crate::docker_archive::plan(&plain.path, reference)?;
        let ref_name = name.map(str::to_string).or_else(|| plan.ref_name.clone());
        if let Some(n) = &ref_name {
            validate_name(n)?;
        }
        let embedded = name.is_none();
        if embedded {
            self.embedded_name_free(ref_name.as_deref(), &plan.config_digest)?;
        }
        let digest = plan.config_digest.clone();
        let resolved = self.install(Some(&digest), cancel, |unpacker| {
            crate::docker_archive::unpack(&plain.path, &plan, unpacker)?;
            Ok(Filled {
                digest: plan.config_digest.clone(),
                config: plan.config.clone(),
                source: format!("docker-archive:{}", tarball.display()),
            })
        })?;
        if let Some(n) = ref_name {
            if embedded {
                self.embedded_name_free(Some(&n), &resolved.digest)?;
            }
            self.set_ref(&n, &resolved.digest, None)?;
        }
        Ok(resolved)
    }

    /// A name taken from the image's own metadata may name this image
    /// already, or nothing: never move it from another image (a layout a
    /// sandbox wrote could otherwise re-point the user's snapshot names).
    fn embedded_name_free(&self, name: Option<&str>, digest: &Digest) -> Result<()> {
        match name.and_then(|n| crate::refs::read(&self.refs_dir(), n)) {
            Some(r) if &r.digest != digest => Err(ImageError::NameTaken(r.name)),
            _ => Ok(()),
        }
    }

    /// Pulls `reference` (`[registry/]repo[:tag][@sha256:..]`) from its
    /// registry: https unless `opts.plain_http`; anonymous, basic or bearer
    /// auth; an image index picks linux/<host arch>; every manifest and
    /// blob is checked against its digest. Layers already in the store are
    /// not downloaded (the image is keyed by its config digest). Recorded
    /// under `reference` as given, so `resolve(reference)` finds it.
    pub fn pull(
        &self,
        reference: &str,
        opts: &crate::registry::PullOptions,
        cancel: &Cancel,
    ) -> Result<ResolvedImage> {
        validate_name(reference)?;
        let parsed = crate::reference::Reference::parse(reference)?;
        cancel.check()?;
        let mut session = crate::registry::Session::new(parsed, opts.clone())?;
        let plan = crate::registry::plan(&mut session)?;
        cancel.check()?;
        let digest = plan.config_digest.clone();
        let resolved = self.install(Some(&digest), cancel, |unpacker| {
            crate::registry::unpack(&mut session, &plan, unpacker)?;
            Ok(Filled {
                digest: plan.config_digest.clone(),
                config: plan.config.clone(),
                source: format!(
                    "registry:{}/{}",
                    plan.reference.registry, plan.reference.repository
                ),
            })
        })?;
        self.set_ref(reference, &resolved.digest, None)?;
        Ok(resolved)
    }
}
