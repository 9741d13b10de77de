//! The exported C functions (docs/abi.md). Each one checks its pointers,
//! runs its body under [`panic::catch`] and reports errors as JSON.
use crate::cancel;
use crate::error::ApiError;
use crate::methods::{self, CallCtx};
use crate::panic;
use crate::registry;
use std::ptr;
use std::slice;

/// Bumped on any change to a signature or to the meaning of a status or
/// handle.
pub const ABI_VERSION: u32 = 1;

/// Success.
pub const LOCKBOX_OK: i32 = 0;
/// Failure; the error JSON is in the out-parameters.
pub const LOCKBOX_ERR: i32 = 1;
/// Arguments so wrong (a NULL out-pointer) that no error could be returned.
pub const LOCKBOX_BAD_ARGS: i32 = 2;

/// Hands `bytes` to the caller; empty becomes NULL, 0.
///
/// # Safety
/// `out` and `out_len` must be valid for writes.
unsafe fn give(bytes: Vec<u8>, out: *mut *mut u8, out_len: *mut usize) {
    if bytes.is_empty() {
        *out = ptr::null_mut();
        *out_len = 0;
        return;
    }
    let b = bytes.into_boxed_slice();
    *out_len = b.len();
    *out = Box::into_raw(b) as *mut u8;
}

/// Runs `f` (panics caught) and reports its error, if any, through
/// `err`/`err_len`.
///
/// # Safety
/// `err` and `err_len` must be NULL or valid for writes.
unsafe fn run(
    err: *mut *mut u8,
    err_len: *mut usize,
    f: impl FnOnce() -> Result<(), ApiError>,
) -> i32 {
    if err.is_null() || err_len.is_null() {
        return LOCKBOX_BAD_ARGS;
    }
    *err = ptr::null_mut();
    *err_len = 0;
    match panic::catch(f).and_then(|r| r) {
        Ok(()) => LOCKBOX_OK,
        Err(e) => {
            give(e.to_json(), err, err_len);
            LOCKBOX_ERR
        }
    }
}

/// Borrows caller memory; NULL is only fine for an empty range.
///
/// # Safety
/// `p` must be NULL or valid for `len` bytes for the returned lifetime.
unsafe fn bytes_in<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], ApiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(ApiError::invalid_argument(format!(
            "{what} is NULL with length {len}"
        )));
    }
    Ok(slice::from_raw_parts(p, len))
}

/// The ABI version this library implements. Call it first.
#[no_mangle]
pub extern "C" fn lockbox_abi_version() -> u32 {
    ABI_VERSION
}

/// The library's version JSON: `{"version","abi","git_commit","profile"}`.
///
/// # Safety
/// `out` and `out_len` must be NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn lockbox_version(out: *mut *mut u8, out_len: *mut usize) -> i32 {
    if out.is_null() || out_len.is_null() {
        return LOCKBOX_BAD_ARGS;
    }
    let (status, bytes) =
        match panic::catch(|| serde_json::to_vec(&methods::version_json()).map_err(ApiError::from))
            .and_then(|r| r)
        {
            Ok(b) => (LOCKBOX_OK, b),
            Err(e) => (LOCKBOX_ERR, e.to_json()),
        };
    give(bytes, out, out_len);
    status
}

/// A JSON call: `{"method": "...", "params": {...}}`. On success (0) `out`
/// holds the result JSON, on failure (1) the error JSON. Free it with
/// `lockbox_free`. `cancel_id` is 0 or a caller-chosen id (see
/// `lockbox_cancel`).
///
/// # Safety
/// `req` must be NULL or valid for `req_len` bytes; `out` and `out_len`
/// must be NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn lockbox_call(
    req: *const u8,
    req_len: usize,
    cancel_id: u64,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> i32 {
    if out.is_null() || out_len.is_null() {
        return LOCKBOX_BAD_ARGS;
    }
    *out = ptr::null_mut();
    *out_len = 0;
    let r = panic::catch(|| {
        // Refused before parsing: a JSON value can take many times its
        // text in memory, and no method needs a request this large (the
        // wire frame to a sandbox is 4 MiB).
        if req_len > lockbox_engine::config::MAX_REQUEST_BYTES {
            return Err(ApiError::invalid_argument(format!(
                "request is {req_len} bytes; at most {}",
                lockbox_engine::config::MAX_REQUEST_BYTES
            )));
        }
        let req = bytes_in(req, req_len, "request")?;
        let scope = cancel::table().begin(cancel_id)?;
        let ctx = CallCtx {
            cancel: scope.token(),
        };
        let v = methods::dispatch(req, &ctx)?;
        drop(scope);
        serde_json::to_vec(&v).map_err(|e| ApiError::internal(format!("result: {e}")))
    })
    .and_then(|r| r);
    match r {
        Ok(b) => {
            give(b, out, out_len);
            LOCKBOX_OK
        }
        Err(e) => {
            give(e.to_json(), out, out_len);
            LOCKBOX_ERR
        }
    }
}

/// Frees memory returned by this library. NULL is harmless.
///
/// # Safety
/// `ptr`/`len` must be exactly a pair this library returned, freed once.
#[no_mangle]
pub unsafe extern "C" fn lockbox_free(ptr: *mut u8, len: usize) {
    if ptr.is_null() {
        return;
    }
    let _ = panic::catch(|| drop(Box::from_raw(ptr::slice_from_raw_parts_mut(ptr, len))));
}

/// Cancels the call running under `cancel_id`, or makes a later call with
/// that id fail at once. Always 0.
#[no_mangle]
pub extern "C" fn lockbox_cancel(cancel_id: u64) -> i32 {
    let _ = panic::catch(|| cancel::table().cancel(cancel_id));
    LOCKBOX_OK
}

/// Forgets the tombstone a cancel may have left for `cancel_id`.
#[no_mangle]
pub extern "C" fn lockbox_cancel_release(cancel_id: u64) {
    let _ = panic::catch(|| cancel::table().release(cancel_id));
}

/// Reads at most `cap` bytes into `buf`; `*n == 0` with status 0 is EOF.
///
/// # Safety
/// `buf` must be valid for `cap` bytes; `n`, `err`, `err_len` must be NULL
/// or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn lockbox_stream_read(
    handle: u64,
    buf: *mut u8,
    cap: usize,
    cancel_id: u64,
    n: *mut usize,
    err: *mut *mut u8,
    err_len: *mut usize,
) -> i32 {
    if n.is_null() {
        return LOCKBOX_BAD_ARGS;
    }
    *n = 0;
    run(err, err_len, || {
        if buf.is_null() || cap == 0 {
            return Err(ApiError::invalid_argument(
                "stream read needs a non-NULL buffer of at least one byte",
            ));
        }
        let dst = slice::from_raw_parts_mut(buf, cap);
        let s = registry::global().stream(handle)?;
        let scope = cancel::table().begin(cancel_id)?;
        let ctx = CallCtx {
            cancel: scope.token(),
        };
        let got = ctx.block_on(s.read(dst))?;
        *n = got.min(cap);
        Ok(())
    })
}

/// Writes all `len` bytes; `*n = len` on success.
///
/// # Safety
/// `buf` must be valid for `len` bytes; `n`, `err`, `err_len` must be NULL
/// or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn lockbox_stream_write(
    handle: u64,
    buf: *const u8,
    len: usize,
    cancel_id: u64,
    n: *mut usize,
    err: *mut *mut u8,
    err_len: *mut usize,
) -> i32 {
    if n.is_null() {
        return LOCKBOX_BAD_ARGS;
    }
    *n = 0;
    run(err, err_len, || {
        let src = bytes_in(buf, len, "write buffer")?;
        let s = registry::global().stream(handle)?;
        let scope = cancel::table().begin(cancel_id)?;
        let ctx = CallCtx {
            cancel: scope.token(),
        };
        ctx.block_on(s.write(src))?;
        *n = len;
        Ok(())
    })
}

/// Half-closes a stream's write side.
///
/// # Safety
/// `err`, `err_len` must be NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn lockbox_stream_close_write(
    handle: u64,
    cancel_id: u64,
    err: *mut *mut u8,
    err_len: *mut usize,
) -> i32 {
    run(err, err_len, || {
        let s = registry::global().stream(handle)?;
        let scope = cancel::table().begin(cancel_id)?;
        let ctx = CallCtx {
            cancel: scope.token(),
        };
        ctx.block_on(s.close_write())
    })
}

/// Releases a handle of any kind. Closing twice is fine (0); a number that
/// was never issued is `not_found`.
///
/// # Safety
/// `err`, `err_len` must be NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn lockbox_close(handle: u64, err: *mut *mut u8, err_len: *mut usize) -> i32 {
    run(err, err_len, || registry::global().close(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_raw(req: &[u8]) -> (i32, serde_json::Value) {
        let (mut out, mut len) = (ptr::null_mut(), 0usize);
        // SAFETY: req is a live slice; out/len are valid for writes; the
        // result is freed with lockbox_free.
        let rc = unsafe { lockbox_call(req.as_ptr(), req.len(), 0, &mut out, &mut len) };
        let v = unsafe {
            let v = serde_json::from_slice(slice::from_raw_parts(out, len)).unwrap();
            lockbox_free(out, len);
            v
        };
        (rc, v)
    }

    /// Past the bound the request is refused by its length alone (the
    /// message says so); one byte under it, the same bytes reach the JSON
    /// parser (a different message), so the check is what refused it.
    #[test]
    fn oversized_request_is_refused_before_parsing() {
        let max = lockbox_engine::config::MAX_REQUEST_BYTES;
        let mut req = br#"{"method":"noop","params":{"pad":""#.to_vec();
        req.resize(max + 1, b'a');
        let (rc, v) = call_raw(&req);
        assert_eq!(rc, LOCKBOX_ERR);
        assert_eq!(v["code"], "invalid_argument");
        assert!(
            v["message"].as_str().unwrap().starts_with("request is"),
            "{v}"
        );
        req.truncate(max);
        let (rc, v) = call_raw(&req);
        assert_eq!(rc, LOCKBOX_ERR);
        assert_eq!(v["code"], "invalid_argument");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("malformed request"),
            "{v}"
        );
    }
}
