//! The method table behind `lockbox_call`.
//!
//! Adding a method group: create `methods/<group>.rs` with
//! `pub fn register(t: &mut Table)` calling `t.add("group.verb", handler)`
//! for each method, and add one line to [`build_table`]. A handler is a
//! plain `fn(params, &CallCtx) -> Result<Value, ApiError>`; it decodes its
//! params with [`params`] and runs async engine work with
//! [`CallCtx::block_on`], which honours the call's cancel id.
//!
//! Methods that mostly wait (exec.start, exec.wait) also register an async
//! handler with `t.add_async`: `lockbox_submit` runs it on the runtime
//! without holding a caller thread (see completion.rs). Write the body once
//! as an `async fn` and make the sync handler `ctx.block_on` it.
use crate::cancel::CancelToken;
use crate::error::ApiError;
use crate::stream::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::OnceLock;

mod core;
mod exec;
mod fs;
mod image;
mod sandbox;
mod volume;
pub use self::core::version_json;
#[cfg(feature = "test-hooks")]
mod debug;
#[cfg(any(test, feature = "test-hooks"))]
pub mod mem_pipe;

pub type Handler = fn(Value, &CallCtx) -> Result<Value, ApiError>;

/// The same method without a caller thread: the future owns everything it
/// needs. The token is for polling loops; the caller of the future races
/// it against cancellation already.
pub type AsyncHandler = fn(Value, CancelToken) -> BoxFuture<'static, Result<Value, ApiError>>;

#[derive(Default)]
pub struct Table {
    methods: HashMap<&'static str, Handler>,
    async_methods: HashMap<&'static str, AsyncHandler>,
}

impl Table {
    pub fn add(&mut self, name: &'static str, h: Handler) {
        let dup = self.methods.insert(name, h);
        assert!(dup.is_none(), "method {name} registered twice");
    }

    /// Registers the async form of a method already added with `add`.
    pub fn add_async(&mut self, name: &'static str, h: AsyncHandler) {
        assert!(
            self.methods.contains_key(name),
            "async method {name} has no sync form"
        );
        let dup = self.async_methods.insert(name, h);
        assert!(dup.is_none(), "async method {name} registered twice");
    }
}

fn build_table() -> Table {
    let mut t = Table::default();
    core::register(&mut t);
    sandbox::register(&mut t);
    exec::register(&mut t);
    fs::register(&mut t);
    image::register(&mut t);
    volume::register(&mut t);
    #[cfg(feature = "test-hooks")]
    debug::register(&mut t);
    t
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(build_table)
}

/// What a handler knows about its call.
pub struct CallCtx {
    pub cancel: CancelToken,
}

impl CallCtx {
    /// Runs `fut` on the library runtime until it finishes or the call is
    /// canceled (then the future is dropped and `canceled` returned).
    pub fn block_on<T, F>(&self, fut: F) -> Result<T, ApiError>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        self.cancel.check()?;
        let cancel = self.cancel.clone();
        crate::runtime::runtime().block_on(async move {
            tokio::select! {
                biased;
                _ = cancel.canceled() => Err(ApiError::canceled()),
                r = fut => r,
            }
        })
    }
}

/// Decodes a method's params; a mismatch is `invalid_argument`.
pub fn params<T: DeserializeOwned>(method: &str, v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::invalid_argument(format!("{method}: bad params: {e}")))
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default)]
    params: Value,
}

/// Parses a request and runs its method.
pub fn dispatch(req: &[u8], ctx: &CallCtx) -> Result<Value, ApiError> {
    let req: Request<'_> = serde_json::from_slice(req)
        .map_err(|e| ApiError::invalid_argument(format!("malformed request: {e}")))?;
    let handler = table().methods.get(req.method.as_ref()).ok_or_else(|| {
        ApiError::new(
            lockbox_protocol::ErrorCode::Unsupported,
            format!("unknown method {:?}", req.method),
        )
    })?;
    crate::lb_log!(crate::log::Level::Debug, "call {}", req.method);
    handler(req.params, ctx)
}

/// The async handler and params for a request; None when its method has
/// no async form (unknown methods included: `lockbox_call` reports them).
/// A malformed request is the error `dispatch` would give.
pub fn async_dispatch(req: &[u8]) -> Result<Option<(AsyncHandler, Value)>, ApiError> {
    let req: Request<'_> = serde_json::from_slice(req)
        .map_err(|e| ApiError::invalid_argument(format!("malformed request: {e}")))?;
    let Some(h) = table().async_methods.get(req.method.as_ref()) else {
        return Ok(None);
    };
    crate::lb_log!(crate::log::Level::Debug, "call {} (submitted)", req.method);
    Ok(Some((*h, req.params)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockbox_protocol::ErrorCode;

    fn run(req: &[u8]) -> Result<Value, ApiError> {
        dispatch(
            req,
            &CallCtx {
                cancel: CancelToken::none(),
            },
        )
    }

    #[test]
    fn debug_methods_exist_only_with_test_hooks() {
        for m in ["debug.stats", "debug.sleep", "debug.panic", "debug.pipe"] {
            let listed = table().methods.contains_key(m);
            assert_eq!(listed, cfg!(feature = "test-hooks"), "{m}");
        }
        let r = run(br#"{"method":"debug.stats"}"#);
        if cfg!(feature = "test-hooks") {
            assert!(r.is_ok());
        } else {
            assert_eq!(r.unwrap_err().code, ErrorCode::Unsupported);
        }
    }

    #[test]
    fn core_methods() {
        assert_eq!(run(br#"{"method":"noop"}"#).unwrap(), serde_json::json!({}));
        assert_eq!(
            run(br#"{"method":"noop","params":{}}"#).unwrap(),
            serde_json::json!({})
        );
        for bad in [
            &br#"{"method":"noop","params":{"x":1}}"#[..],
            br#"{"method":"noop","params":[1]}"#,
            br#"{"method":"version","params":{"x":1}}"#,
            br#"{"method":"handle.create","params":{"x":1}}"#,
        ] {
            let e = run(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}");
        }
        let v = run(br#"{"method":"version","params":null,"id":7}"#).unwrap();
        assert_eq!(v["abi"], serde_json::json!(crate::abi::ABI_VERSION));
        assert_eq!(
            v["test_hooks"],
            serde_json::json!(cfg!(feature = "test-hooks"))
        );
    }
}
