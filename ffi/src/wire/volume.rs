//! volume.*: named volumes that outlive sandboxes.
use serde::{Deserialize, Serialize};

pub(crate) use lockbox_engine::VolumeInfo;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VolumeList {
    pub volumes: Vec<VolumeInfo>,
}
