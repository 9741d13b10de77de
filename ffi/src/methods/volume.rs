//! volume.* methods: named volumes that outlive sandboxes.
use super::sandbox::{api, engine};
use super::{params, CallCtx, Table};
use crate::error::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};

pub fn register(t: &mut Table) {
    t.add("volume.create", create);
    t.add("volume.list", list);
    t.add("volume.remove", remove);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

fn create(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    let p: NameParams = params("volume.create", p)?;
    let v = engine()?.volume_create(&p.name).map_err(api)?;
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

fn list(_: Value, _: &CallCtx) -> Result<Value, ApiError> {
    let v = engine()?.volume_list().map_err(api)?;
    Ok(json!({ "volumes": v }))
}

fn remove(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    let p: NameParams = params("volume.remove", p)?;
    engine()?.volume_remove(&p.name).map_err(api)?;
    Ok(json!({}))
}
