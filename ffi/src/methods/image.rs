//! image.*: the image store (list, inspect, remove, prune, import, pull),
//! through the engine's image_* methods.
use super::engine::engine;
use super::CallCtx;
use crate::error::ApiError;
use crate::wire::image::{ImageInfo, ImageList, ImportKind, ImportParams, PruneReport, PullParams};
use crate::wire::{Empty, Name};
use lockbox_engine::PullOptions;
use std::path::PathBuf;

pub(super) fn list(_: Empty, ctx: &CallCtx) -> Result<ImageList, ApiError> {
    let e = engine()?;
    let v = ctx.block_on(async { Ok(e.image_list().await?) })?;
    Ok(ImageList { images: v })
}

pub(super) fn inspect(p: Name, ctx: &CallCtx) -> Result<ImageInfo, ApiError> {
    let e = engine()?;
    ctx.block_on(async { Ok(e.image_inspect(&p.name).await?) })
}

pub(super) fn remove(p: Name, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let e = engine()?;
    ctx.block_on(async { Ok(e.image_remove(&p.name).await?) })?;
    Ok(Empty {})
}

pub(super) fn prune(_: Empty, ctx: &CallCtx) -> Result<PruneReport, ApiError> {
    let e = engine()?;
    ctx.block_on(async { Ok(e.image_prune().await?) })
}

pub(super) fn import(p: ImportParams, ctx: &CallCtx) -> Result<ImageInfo, ApiError> {
    if p.path.is_empty() {
        return Err(ApiError::invalid_argument("image.import: path is empty"));
    }
    let e = engine()?;
    let path = PathBuf::from(&p.path);
    let v = ctx.block_on(async {
        Ok(match p.kind {
            ImportKind::OciLayout => e.image_import_oci_layout(path, p.reference, p.name).await?,
            ImportKind::DockerArchive => {
                e.image_import_docker_archive(path, p.reference, p.name)
                    .await?
            }
        })
    })?;
    Ok(v)
}

pub(super) fn pull(p: PullParams, ctx: &CallCtx) -> Result<ImageInfo, ApiError> {
    let credentials = match (p.username, p.password) {
        (Some(u), Some(pw)) => Some((u, pw)),
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid_argument(
                "image.pull: give both username and password, or neither",
            ))
        }
    };
    let opts = PullOptions {
        credentials,
        plain_http: p.plain_http,
        platform: p.platform,
    };
    let e = engine()?;
    ctx.block_on(async { Ok(e.image_pull(&p.reference, opts).await?) })
}
