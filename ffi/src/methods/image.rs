//! image.* methods: the image store behind `WithImage` (list, inspect,
//! remove, prune, import, pull). Work runs in lockbox_engine::image_ops.
use super::sandbox::{api, engine};
use super::{params, CallCtx, Table};
use crate::error::ApiError;
use lockbox_engine::image_ops::{self, PullOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;

pub fn register(t: &mut Table) {
    t.add("image.list", list);
    t.add("image.inspect", inspect);
    t.add("image.remove", remove);
    t.add("image.prune", prune);
    t.add("image.import", import);
    t.add("image.pull", pull);
}

fn to_json<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

fn home() -> Result<PathBuf, ApiError> {
    Ok(engine()?.home().to_path_buf())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

fn list(_: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let home = home()?;
    let v = ctx.block_on(async { image_ops::list(&home).await.map_err(api) })?;
    Ok(json!({ "images": v }))
}

fn inspect(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: NameParams = params("image.inspect", p)?;
    let home = home()?;
    let v = ctx.block_on(async { image_ops::inspect(&home, &p.name).await.map_err(api) })?;
    to_json(&v)
}

fn remove(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: NameParams = params("image.remove", p)?;
    let home = home()?;
    ctx.block_on(async { image_ops::remove(&home, &p.name).await.map_err(api) })?;
    Ok(json!({}))
}

fn prune(_: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let home = home()?;
    let v = ctx.block_on(async { image_ops::prune(&home).await.map_err(api) })?;
    to_json(&v)
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ImportKind {
    OciLayout,
    DockerArchive,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportParams {
    kind: ImportKind,
    path: String,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

fn import(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: ImportParams = params("image.import", p)?;
    if p.path.is_empty() {
        return Err(ApiError::invalid_argument("image.import: path is empty"));
    }
    let home = home()?;
    let path = PathBuf::from(&p.path);
    let v = ctx.block_on(async {
        match p.kind {
            ImportKind::OciLayout => {
                image_ops::import_oci_layout(&home, path, p.reference, p.name).await
            }
            ImportKind::DockerArchive => {
                image_ops::import_docker_archive(&home, path, p.reference, p.name).await
            }
        }
        .map_err(api)
    })?;
    to_json(&v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullParams {
    reference: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    plain_http: bool,
    #[serde(default)]
    platform: Option<String>,
}

fn pull(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: PullParams = params("image.pull", p)?;
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
    let home = home()?;
    let v = ctx.block_on(async {
        image_ops::pull(&home, &p.reference, opts)
            .await
            .map_err(api)
    })?;
    to_json(&v)
}
