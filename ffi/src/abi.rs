//! The exported C functions (docs/abi.md). Each one checks its pointers,
//! runs its body under [`panic::catch`] and reports errors as JSON.
use crate::cancel;
use crate::completion::{self, Catch, Outcome, TakeError};
use crate::error::ApiError;
use crate::methods::{self, CallCtx};
use crate::panic;
use crate::registry;
use std::ptr;
use std::slice;

/// Bumped on any change to a signature or to the meaning of a status or
/// handle.
pub const ABI_VERSION: u32 = 1;

/// Largest `lockbox_call`/`lockbox_submit` request, refused by its length
/// before it is parsed: a JSON value can take many times its text in
/// memory, and no method needs more (the wire frame to a sandbox is 4 MiB).
/// Not a C constant: hosts learn it from the error.
const MAX_REQUEST_BYTES: usize = 8 << 20;

/// Success.
pub const LOCKBOX_OK: i32 = 0;
/// Failure; the error JSON is in the out-parameters.
pub const LOCKBOX_ERR: i32 = 1;
/// Arguments so wrong (a NULL out-pointer) that no error could be returned.
pub const LOCKBOX_BAD_ARGS: i32 = 2;
/// `lockbox_submit`: the request's method has no asynchronous form (or is
/// unknown); nothing was queued, make it with `lockbox_call`.
pub const LOCKBOX_SYNC_ONLY: i32 = 3;

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
        match panic::catch(|| methods::encode(&methods::version_info())).and_then(|r| r) {
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
        if req_len > MAX_REQUEST_BYTES {
            return Err(ApiError::invalid_argument(format!(
                "request is {req_len} bytes; at most {}",
                MAX_REQUEST_BYTES
            )));
        }
        let req = bytes_in(req, req_len, "request")?;
        let scope = cancel::table().begin(cancel_id)?;
        let ctx = CallCtx {
            cancel: scope.token(),
        };
        let out = methods::dispatch(req, &ctx);
        drop(scope);
        out
    })
    .and_then(|r| r);
    give_result(r, out, out_len)
}

/// Hands a call's JSON result (status 0) or error (status 1) to the caller.
///
/// # Safety
/// `out` and `out_len` must be valid for writes.
unsafe fn give_result(r: Result<Vec<u8>, ApiError>, out: *mut *mut u8, out_len: *mut usize) -> i32 {
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

/// Starts `work` on the runtime under `token` and `cancel_id`; its result
/// (or error, cancel, panic) completes the token. Returns the status for
/// the submit call.
fn submit_work<F>(token: u64, cancel_id: u64, work: F) -> i32
where
    F: std::future::Future<Output = Outcome> + Send + 'static,
{
    let q = completion::queue();
    if !q.register(token) {
        return LOCKBOX_BAD_ARGS;
    }
    let scope = match cancel::table().begin(cancel_id) {
        Ok(s) => s,
        Err(e) => {
            q.complete(token, Err(e));
            return LOCKBOX_OK;
        }
    };
    let tok = scope.token();
    let fut = Catch(Box::pin(work));
    let task = crate::runtime::runtime().spawn(async move {
        let r = tokio::select! {
            biased;
            _ = tok.canceled() => Err(ApiError::canceled()),
            r = fut => r,
        };
        // Before completing: the host releases the cancel id once it has
        // the result, and a release finds a running call's slot untouched.
        drop(scope);
        completion::queue().complete(token, r);
    });
    q.set_abort(token, task.abort_handle());
    LOCKBOX_OK
}

/// Completes `token` with `e` at once.
fn fail_now(token: u64, e: ApiError) -> i32 {
    let q = completion::queue();
    if !q.register(token) {
        return LOCKBOX_BAD_ARGS;
    }
    q.complete(token, Err(e));
    LOCKBOX_OK
}

/// The descriptor that becomes readable when a submitted call completes:
/// an eventfd (read 8 bytes to reset it, then drain with
/// `lockbox_completions`). Owned by the library: do not close it. -1 when
/// it could not be created.
#[no_mangle]
pub extern "C" fn lockbox_completion_fd() -> i32 {
    panic::catch(completion::fd).unwrap_or(-1)
}

/// Starts a JSON call without waiting for it; `token` (non-zero, not in
/// use) names its completion, whose result `lockbox_take` returns exactly as
/// `lockbox_call` would. 0: queued, the token will complete (errors,
/// cancels, a malformed or oversized request included). 3
/// (`LOCKBOX_SYNC_ONLY`): the method has no async form, or is unknown; this
/// depends on the method name alone, so a caller may remember it. Nothing
/// was queued: use `lockbox_call`. 2: the token is 0 or in use.
///
/// # Safety
/// `req` must be NULL or valid for `req_len` bytes (read only during the
/// call).
#[no_mangle]
pub unsafe extern "C" fn lockbox_submit(
    req: *const u8,
    req_len: usize,
    cancel_id: u64,
    token: u64,
) -> i32 {
    panic::catch(|| {
        // Refused by its length before parsing, as lockbox_call does.
        if req_len > MAX_REQUEST_BYTES {
            return fail_now(
                token,
                ApiError::invalid_argument(format!(
                    "request is {req_len} bytes; at most {}",
                    MAX_REQUEST_BYTES
                )),
            );
        }
        let found = bytes_in(req, req_len, "request").and_then(methods::async_dispatch);
        let (h, params) = match found {
            Ok(Some(x)) => x,
            Ok(None) => return LOCKBOX_SYNC_ONLY,
            Err(e) => return fail_now(token, e),
        };
        submit_work(token, cancel_id, h(params))
    })
    .unwrap_or(LOCKBOX_BAD_ARGS)
}

/// Reads at most `cap` bytes on the runtime. The result is the bytes
/// read, or empty at end of stream. 0: queued; 2: bad token.
#[no_mangle]
pub extern "C" fn lockbox_stream_read_submit(
    handle: u64,
    cap: usize,
    cancel_id: u64,
    token: u64,
) -> i32 {
    panic::catch(|| {
        let s = registry::global().stream(handle);
        submit_work(token, cancel_id, async move {
            if cap == 0 {
                return Err(ApiError::invalid_argument(
                    "stream read needs a capacity of at least one byte",
                ));
            }
            read_owned(&*s?, cap).await
        })
    })
    .unwrap_or(LOCKBOX_BAD_ARGS)
}

/// A pending read holds this much memory; the rest of `cap` is allocated
/// only when bytes are already there to fill it.
const READ_FIRST: usize = 4096;

/// Reads like `lockbox_stream_read` into a buffer sized by what arrived,
/// not by `cap`: ten thousand idle readers must not hold ten thousand
/// caller-sized buffers.
async fn read_owned(s: &dyn crate::stream::ByteStream, cap: usize) -> Outcome {
    let first = cap.min(READ_FIRST);
    let mut small = vec![0u8; first];
    let n = s.read(&mut small).await?;
    if n < first || cap == first {
        small.truncate(n);
        return Ok(small);
    }
    // Bytes were waiting: fill the rest of cap with what is ready now.
    // vec! of zeros is one calloc; growing with resize writes every byte.
    let mut buf = vec![0u8; cap];
    buf[..n].copy_from_slice(&small);
    let mut len = n;
    while len < cap {
        // A ByteStream read dropped before it finishes loses no bytes, and
        // EOF and errors are reported again by the next read.
        let more = tokio::select! {
            biased;
            r = s.read(&mut buf[len..]) => r.unwrap_or(0),
            _ = std::future::ready(()) => 0,
        };
        if more == 0 {
            break;
        }
        len += more.min(cap - len);
    }
    buf.truncate(len);
    Ok(buf)
}

/// Writes all `len` bytes on the runtime. The bytes are copied before
/// this returns. The result is empty. 0: queued; 2: bad token.
///
/// # Safety
/// `buf` must be NULL or valid for `len` bytes (read only during the call).
#[no_mangle]
pub unsafe extern "C" fn lockbox_stream_write_submit(
    handle: u64,
    buf: *const u8,
    len: usize,
    cancel_id: u64,
    token: u64,
) -> i32 {
    panic::catch(|| {
        let data = bytes_in(buf, len, "write buffer").map(<[u8]>::to_vec);
        let s = registry::global().stream(handle);
        submit_work(token, cancel_id, async move {
            let data = data?;
            s?.write(&data).await?;
            Ok(Vec::new())
        })
    })
    .unwrap_or(LOCKBOX_BAD_ARGS)
}

/// Moves up to `cap` finished tokens into `out`, without waiting; returns
/// how many. Call until it returns less than `cap`.
///
/// # Safety
/// `out` must be valid for `cap` writes (NULL only with `cap` 0).
#[no_mangle]
pub unsafe extern "C" fn lockbox_completions(out: *mut u64, cap: usize) -> usize {
    if out.is_null() || cap == 0 {
        return 0;
    }
    panic::catch(|| completion::queue().drain(slice::from_raw_parts_mut(out, cap))).unwrap_or(0)
}

/// The result of a completed token, once: status 0 with the result in
/// `out` (NULL, 0 when empty), or 1 with the error JSON. A token that is
/// unknown, already taken, forgotten or not yet complete is status 1
/// (`invalid_argument`). Free `out` with `lockbox_free`.
///
/// # Safety
/// `out` and `out_len` must be NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn lockbox_take(token: u64, out: *mut *mut u8, out_len: *mut usize) -> i32 {
    if out.is_null() || out_len.is_null() {
        return LOCKBOX_BAD_ARGS;
    }
    *out = ptr::null_mut();
    *out_len = 0;
    let r = panic::catch(|| match completion::queue().take(token) {
        Ok(r) => r,
        Err(TakeError::Unknown) => Err(ApiError::invalid_argument(format!(
            "token {token} is unknown, already taken or forgotten"
        ))),
        Err(TakeError::Pending) => Err(ApiError::invalid_argument(format!(
            "token {token} has not completed"
        ))),
    })
    .and_then(|r| r);
    give_result(r, out, out_len)
}

/// Drops a token: its result if complete, else its work (stopped where it
/// waits, as a cancel would) and the result it would have had. The token is
/// free again. 0 if it was known, 1 if not.
#[no_mangle]
pub extern "C" fn lockbox_forget(token: u64) -> i32 {
    match panic::catch(|| completion::queue().forget(token)) {
        Ok(true) => LOCKBOX_OK,
        _ => LOCKBOX_ERR,
    }
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
        let max = MAX_REQUEST_BYTES;
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
