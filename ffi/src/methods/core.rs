//! Methods every build has: version, noop, inert handles, logging.
use super::{params, CallCtx, Table};
use crate::error::ApiError;
use crate::registry::{self, Kind};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub fn register(t: &mut Table) {
    t.add("version", version);
    t.add("noop", noop);
    t.add("handle.create", handle_create);
    t.add("handle.kind", handle_kind);
    t.add("log.set_level", log_set_level);
}

pub fn version_json() -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "abi": crate::abi::ABI_VERSION,
        "git_commit": env!("LOCKBOX_GIT_COMMIT"),
        "profile": env!("LOCKBOX_BUILD_PROFILE"),
        "test_hooks": cfg!(feature = "test-hooks"),
    })
}

/// For methods that take no params (docs/abi.md: "–"): null or `{}`, as
/// for any method, unknown fields are `invalid_argument`.
fn no_params(method: &str, p: &Value) -> Result<(), ApiError> {
    match p {
        Value::Null => Ok(()),
        Value::Object(m) if m.is_empty() => Ok(()),
        _ => Err(ApiError::invalid_argument(format!(
            "{method}: bad params: takes none, got {}",
            match p {
                Value::Object(m) => format!(
                    "unknown field(s) {:?}",
                    m.keys().take(4).collect::<Vec<_>>()
                ),
                _ => "a non-object".into(),
            }
        ))),
    }
}

fn version(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    no_params("version", &p)?;
    Ok(version_json())
}

fn noop(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    no_params("noop", &p)?;
    Ok(Value::Object(Map::new()))
}

/// An object with no behaviour: lets tests and benchmarks exercise the
/// handle lifecycle without an engine.
struct Inert;

fn handle_create(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    no_params("handle.create", &p)?;
    let h = registry::global().insert(Kind::Object, Arc::new(Inert));
    Ok(json!({ "handle": h }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandleParams {
    handle: u64,
}

fn handle_kind(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    let p: HandleParams = params("handle.kind", p)?;
    let kind = registry::global().kind(p.handle)?;
    Ok(json!({ "kind": kind.as_str() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogParams {
    level: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    stderr: bool,
}

fn log_set_level(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    let p: LogParams = params("log.set_level", p)?;
    let level = crate::log::Level::parse(&p.level)?;
    crate::log::configure(level, p.file.as_deref(), p.stderr)?;
    Ok(json!({}))
}
