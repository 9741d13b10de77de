//! volume.*: named volumes that outlive sandboxes.
use super::engine::engine;
use super::CallCtx;
use crate::error::ApiError;
use crate::wire::volume::{VolumeInfo, VolumeList};
use crate::wire::{Empty, Name};

pub(super) fn create(p: Name, _: &CallCtx) -> Result<VolumeInfo, ApiError> {
    Ok(engine()?.volume_create(&p.name)?)
}

pub(super) fn list(_: Empty, _: &CallCtx) -> Result<VolumeList, ApiError> {
    Ok(VolumeList {
        volumes: engine()?.volume_list()?,
    })
}

pub(super) fn remove(p: Name, _: &CallCtx) -> Result<Empty, ApiError> {
    engine()?.volume_remove(&p.name)?;
    Ok(Empty {})
}
