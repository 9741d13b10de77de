//! Contract tests: load the built liblockbox.so (test-hooks build) with
//! libloading, the way a foreign caller does, and hold it to docs/abi.md.
//!
//! The library path: $LOCKBOX_TEST_LIB, else $CARGO_TARGET_DIR/debug, else
//! <workspace>/target/debug. `make test-ffi` sets LOCKBOX_TEST_LIB.
//!
//! Compiled only with `--features test-hooks` (the methods it drives exist
//! only there), so a plain `cargo test --workspace` skips it.
#![cfg(feature = "test-hooks")]
use libloading::Library;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

type AbiVersionFn = unsafe extern "C" fn() -> u32;
type VersionFn = unsafe extern "C" fn(*mut *mut u8, *mut usize) -> i32;
type CallFn = unsafe extern "C" fn(*const u8, usize, u64, *mut *mut u8, *mut usize) -> i32;
type FreeFn = unsafe extern "C" fn(*mut u8, usize);
type CancelFn = unsafe extern "C" fn(u64) -> i32;
type ReleaseFn = unsafe extern "C" fn(u64);
type ReadFn =
    unsafe extern "C" fn(u64, *mut u8, usize, u64, *mut usize, *mut *mut u8, *mut usize) -> i32;
type WriteFn =
    unsafe extern "C" fn(u64, *const u8, usize, u64, *mut usize, *mut *mut u8, *mut usize) -> i32;
type CloseWriteFn = unsafe extern "C" fn(u64, u64, *mut *mut u8, *mut usize) -> i32;
type CloseFn = unsafe extern "C" fn(u64, *mut *mut u8, *mut usize) -> i32;
type CompletionFdFn = unsafe extern "C" fn() -> i32;
type SubmitFn = unsafe extern "C" fn(*const u8, usize, u64, u64) -> i32;
type ReadSubmitFn = unsafe extern "C" fn(u64, usize, u64, u64) -> i32;
type WriteSubmitFn = unsafe extern "C" fn(u64, *const u8, usize, u64, u64) -> i32;
type CompletionsFn = unsafe extern "C" fn(*mut u64, usize) -> usize;
type TakeFn = unsafe extern "C" fn(u64, *mut *mut u8, *mut usize) -> i32;
type ForgetFn = unsafe extern "C" fn(u64) -> i32;

struct Api {
    abi_version: AbiVersionFn,
    version: VersionFn,
    call: CallFn,
    free: FreeFn,
    cancel: CancelFn,
    release: ReleaseFn,
    read: ReadFn,
    write: WriteFn,
    close_write: CloseWriteFn,
    close: CloseFn,
    completion_fd: CompletionFdFn,
    submit: SubmitFn,
    read_submit: ReadSubmitFn,
    write_submit: WriteSubmitFn,
    completions: CompletionsFn,
    take: TakeFn,
    forget: ForgetFn,
}

fn lib_path() -> PathBuf {
    if let Some(p) = std::env::var_os("LOCKBOX_TEST_LIB") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/liblockbox.so")
}

fn api() -> &'static Api {
    // The Library lives in a static and is never dropped: the host never
    // unloads liblockbox, and neither do we.
    static LIB: OnceLock<Library> = OnceLock::new();
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let path = lib_path();
        let lib = LIB.get_or_init(|| unsafe {
            Library::new(&path).unwrap_or_else(|e| {
                panic!(
                    "load {}: {e} (build it with `make ffi-test-lib`)",
                    path.display()
                )
            })
        });
        unsafe {
            let api = Api {
                abi_version: *lib.get(b"lockbox_abi_version").unwrap(),
                version: *lib.get(b"lockbox_version").unwrap(),
                call: *lib.get(b"lockbox_call").unwrap(),
                free: *lib.get(b"lockbox_free").unwrap(),
                cancel: *lib.get(b"lockbox_cancel").unwrap(),
                release: *lib.get(b"lockbox_cancel_release").unwrap(),
                read: *lib.get(b"lockbox_stream_read").unwrap(),
                write: *lib.get(b"lockbox_stream_write").unwrap(),
                close_write: *lib.get(b"lockbox_stream_close_write").unwrap(),
                close: *lib.get(b"lockbox_close").unwrap(),
                completion_fd: *lib.get(b"lockbox_completion_fd").unwrap(),
                submit: *lib.get(b"lockbox_submit").unwrap(),
                read_submit: *lib.get(b"lockbox_stream_read_submit").unwrap(),
                write_submit: *lib.get(b"lockbox_stream_write_submit").unwrap(),
                completions: *lib.get(b"lockbox_completions").unwrap(),
                take: *lib.get(b"lockbox_take").unwrap(),
                forget: *lib.get(b"lockbox_forget").unwrap(),
            };
            let (st, v) = raw_call(&api, br#"{"method":"version"}"#, 0);
            assert_eq!(st, 0);
            assert_eq!(
                v["test_hooks"],
                json!(true),
                "{} is not a test-hooks build",
                path.display()
            );
            api
        }
    })
}

/// Takes ownership of a library-allocated buffer: copies it out and frees it.
unsafe fn take(api: &Api, p: *mut u8, len: usize) -> Vec<u8> {
    if p.is_null() {
        assert_eq!(len, 0);
        return Vec::new();
    }
    let v = std::slice::from_raw_parts(p, len).to_vec();
    (api.free)(p, len);
    v
}

unsafe fn raw_call(api: &Api, req: &[u8], cancel: u64) -> (i32, Value) {
    let mut out = ptr::null_mut();
    let mut len = 0usize;
    let st = (api.call)(req.as_ptr(), req.len(), cancel, &mut out, &mut len);
    let body = take(api, out, len);
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "response is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    (st, v)
}

fn call(method: &str, params: Value, cancel: u64) -> Result<Value, (String, String)> {
    let req = serde_json::to_vec(&json!({"method": method, "params": params})).unwrap();
    call_bytes(&req, cancel)
}

fn call_bytes(req: &[u8], cancel: u64) -> Result<Value, (String, String)> {
    let (st, v) = unsafe { raw_call(api(), req, cancel) };
    match st {
        0 => Ok(v),
        1 => Err((
            v["code"].as_str().expect("error has a code").to_string(),
            v["message"]
                .as_str()
                .expect("error has a message")
                .to_string(),
        )),
        other => panic!("unexpected status {other}"),
    }
}

fn code_of(r: Result<Value, (String, String)>) -> String {
    r.expect_err("expected an error").0
}

fn new_cancel_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn create() -> u64 {
    call("handle.create", Value::Null, 0).unwrap()["handle"]
        .as_u64()
        .unwrap()
}

fn close(h: u64) -> Result<(), String> {
    let api = api();
    let mut err = ptr::null_mut();
    let mut len = 0;
    let st = unsafe { (api.close)(h, &mut err, &mut len) };
    let body = unsafe { take(api, err, len) };
    match st {
        0 => {
            assert!(body.is_empty());
            Ok(())
        }
        1 => Err(serde_json::from_slice::<Value>(&body).unwrap()["code"]
            .as_str()
            .unwrap()
            .to_string()),
        s => panic!("status {s}"),
    }
}

fn stream_read(h: u64, cap: usize, cancel: u64) -> Result<Vec<u8>, String> {
    let api = api();
    let mut buf = vec![0u8; cap];
    let (mut n, mut err, mut len) = (0usize, ptr::null_mut(), 0usize);
    let st = unsafe { (api.read)(h, buf.as_mut_ptr(), cap, cancel, &mut n, &mut err, &mut len) };
    let body = unsafe { take(api, err, len) };
    match st {
        0 => {
            buf.truncate(n);
            Ok(buf)
        }
        1 => Err(serde_json::from_slice::<Value>(&body).unwrap()["code"]
            .as_str()
            .unwrap()
            .to_string()),
        s => panic!("status {s}"),
    }
}

fn stream_write(h: u64, data: &[u8], cancel: u64) -> Result<usize, String> {
    let api = api();
    let (mut n, mut err, mut len) = (0usize, ptr::null_mut(), 0usize);
    let st = unsafe {
        (api.write)(
            h,
            data.as_ptr(),
            data.len(),
            cancel,
            &mut n,
            &mut err,
            &mut len,
        )
    };
    let body = unsafe { take(api, err, len) };
    match st {
        0 => Ok(n),
        1 => Err(serde_json::from_slice::<Value>(&body).unwrap()["code"]
            .as_str()
            .unwrap()
            .to_string()),
        s => panic!("status {s}"),
    }
}

fn stream_close_write(h: u64) -> Result<(), String> {
    let api = api();
    let (mut err, mut len) = (ptr::null_mut(), 0usize);
    let st = unsafe { (api.close_write)(h, 0, &mut err, &mut len) };
    let body = unsafe { take(api, err, len) };
    match st {
        0 => Ok(()),
        _ => Err(serde_json::from_slice::<Value>(&body).unwrap()["code"]
            .as_str()
            .unwrap()
            .to_string()),
    }
}

fn pipe(capacity: usize) -> u64 {
    call("debug.pipe", json!({"capacity": capacity}), 0).unwrap()["handle"]
        .as_u64()
        .unwrap()
}

#[test]
fn abi_and_version() {
    let api = api();
    assert_eq!(unsafe { (api.abi_version)() }, 1);
    let (mut out, mut len) = (ptr::null_mut(), 0usize);
    assert_eq!(unsafe { (api.version)(&mut out, &mut len) }, 0);
    let v: Value = serde_json::from_slice(&unsafe { take(api, out, len) }).unwrap();
    assert_eq!(v["abi"], json!(1));
    assert_eq!(v["version"], json!(env!("CARGO_PKG_VERSION")));
    assert!(v["git_commit"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(v["profile"], json!("debug"));
    assert_eq!(call("version", Value::Null, 0).unwrap(), v);
}

#[test]
fn malformed_requests_are_invalid_argument() {
    for req in [
        &b"{"[..],
        b"not json",
        b"",
        b"[]",
        b"{\"params\":{}}",
        b"{\"method\":42}",
        b"\xff\xfe\x00garbage",
        b"{\"method\":\"noop\"} trailing",
    ] {
        assert_eq!(code_of(call_bytes(req, 0)), "invalid_argument", "{req:?}");
    }
    // NULL request pointer with a length: an error, not a crash.
    let api = api();
    let (mut out, mut len) = (ptr::null_mut(), 0usize);
    let st = unsafe { (api.call)(ptr::null(), 5, 0, &mut out, &mut len) };
    assert_eq!(st, 1);
    let v: Value = serde_json::from_slice(&unsafe { take(api, out, len) }).unwrap();
    assert_eq!(v["code"], json!("invalid_argument"));
}

#[test]
fn unknown_method_is_unsupported() {
    let (code, msg) = call("no.such.method", json!({}), 0).unwrap_err();
    assert_eq!(code, "unsupported");
    assert!(msg.contains("no.such.method"), "{msg}");
}

#[test]
fn missing_and_invalid_params() {
    assert_eq!(
        code_of(call("handle.kind", Value::Null, 0)),
        "invalid_argument"
    );
    assert_eq!(
        code_of(call("handle.kind", json!({}), 0)),
        "invalid_argument"
    );
    assert_eq!(
        code_of(call("handle.kind", json!({"handle": "x"}), 0)),
        "invalid_argument"
    );
    assert_eq!(
        code_of(call("handle.kind", json!({"handle": -1}), 0)),
        "invalid_argument"
    );
    assert_eq!(
        code_of(call("handle.kind", json!({"handle": 1, "extra": true}), 0)),
        "invalid_argument"
    );
    assert_eq!(
        code_of(call("debug.sleep", json!({"ms": "soon"}), 0)),
        "invalid_argument"
    );
    assert_eq!(
        code_of(call("log.set_level", json!({"level": "loud"}), 0)),
        "invalid_argument"
    );
}

#[test]
fn handle_lifecycle_stale_forged_wrong_kind() {
    let h = create();
    assert_eq!(h >> 56, 4, "object kind in the top byte");
    assert_eq!(
        call("handle.kind", json!({"handle": h}), 0).unwrap()["kind"],
        json!("object")
    );
    assert_eq!(close(h), Ok(()));
    assert_eq!(close(h), Ok(()), "double close is harmless");
    assert_eq!(
        code_of(call("handle.kind", json!({"handle": h}), 0)),
        "not_found"
    );

    // Never issued: serial far beyond the counter, unknown kind, zero.
    let forged = (4u64 << 56) | ((1u64 << 56) - 1);
    assert_eq!(
        code_of(call("handle.kind", json!({"handle": forged}), 0)),
        "not_found"
    );
    assert_eq!(close(forged), Err("not_found".into()));
    assert_eq!(close(0), Err("not_found".into()));
    assert_eq!(close(0xee << 56 | 5), Err("not_found".into()));

    // Wrong kind: an object handle used as a stream.
    let obj = create();
    assert_eq!(stream_read(obj, 16, 0), Err("invalid_argument".into()));
    assert_eq!(stream_write(obj, b"x", 0), Err("invalid_argument".into()));
    // Same serial with the stream kind bits: no such stream.
    let as_stream = (obj & ((1 << 56) - 1)) | (3 << 56);
    assert_eq!(stream_read(as_stream, 16, 0), Err("not_found".into()));
    close(obj).unwrap();

    // A closed stream handle is stale.
    let p = pipe(16);
    close(p).unwrap();
    assert_eq!(stream_read(p, 16, 0), Err("not_found".into()));
    assert_eq!(stream_write(p, b"x", 0), Err("not_found".into()));
}

#[test]
fn null_out_pointers_get_status_2() {
    let api = api();
    let req = br#"{"method":"noop"}"#;
    let mut out = ptr::null_mut();
    let mut len = 0usize;
    unsafe {
        assert_eq!(
            (api.call)(req.as_ptr(), req.len(), 0, ptr::null_mut(), &mut len),
            2
        );
        assert_eq!(
            (api.call)(req.as_ptr(), req.len(), 0, &mut out, ptr::null_mut()),
            2
        );
        assert_eq!((api.version)(ptr::null_mut(), ptr::null_mut()), 2);
        assert_eq!((api.close)(1, ptr::null_mut(), &mut len), 2);
        let mut buf = [0u8; 4];
        assert_eq!(
            (api.read)(
                1,
                buf.as_mut_ptr(),
                4,
                0,
                ptr::null_mut(),
                &mut out,
                &mut len
            ),
            2
        );
        let mut n = 0usize;
        assert_eq!(
            (api.write)(1, buf.as_ptr(), 4, 0, &mut n, ptr::null_mut(), &mut len),
            2
        );
        assert_eq!((api.close_write)(1, 0, &mut out, ptr::null_mut()), 2);
        (api.free)(ptr::null_mut(), 0);
        (api.free)(ptr::null_mut(), 10);
    }
    // A zero-capacity or NULL read buffer is an error, not a crash.
    let p = pipe(16);
    assert_eq!(stream_read(p, 0, 0), Err("invalid_argument".into()));
    let (mut n, mut err, mut elen) = (0usize, ptr::null_mut(), 0usize);
    let st = unsafe { (api.read)(p, ptr::null_mut(), 8, 0, &mut n, &mut err, &mut elen) };
    assert_eq!(st, 1);
    unsafe { take(api, err, elen) };
    close(p).unwrap();
}

#[test]
fn cancel_before_the_call() {
    let id = new_cancel_id();
    assert_eq!(unsafe { (api().cancel)(id) }, 0);
    // Would sleep a minute; the tombstone makes it fail at once.
    assert_eq!(
        code_of(call("debug.sleep", json!({"ms": 60_000}), id)),
        "canceled"
    );
    assert_eq!(
        code_of(call("noop", json!({}), id)),
        "canceled",
        "tombstone stays until released"
    );
    unsafe { (api().release)(id) };
    call("debug.sleep", json!({"ms": 1}), id).expect("id usable after release");
}

#[test]
fn cancel_during_the_call() {
    let id = new_cancel_id();
    let sleeper = thread::spawn(move || call("debug.sleep", json!({"ms": 600_000}), id));
    thread::sleep(Duration::from_millis(100));
    unsafe { (api().cancel)(id) };
    let r = sleeper.join().unwrap();
    assert_eq!(code_of(r), "canceled");
    unsafe { (api().release)(id) };
    call("noop", json!({}), id).expect("nothing left behind for the id");
}

#[test]
fn cancel_after_the_call() {
    let id = new_cancel_id();
    call("debug.sleep", json!({"ms": 1}), id).unwrap();
    unsafe { (api().cancel)(id) };
    // The late cancel left a tombstone (a later call with the id fails) ...
    assert_eq!(code_of(call("noop", json!({}), id)), "canceled");
    // ... until released.
    unsafe { (api().release)(id) };
    call("noop", json!({}), id).unwrap();
    // Cancel id 0 means "not cancelable" and is ignored.
    unsafe { (api().cancel)(0) };
    call("noop", json!({}), 0).unwrap();
}

#[test]
fn one_cancel_id_cannot_serve_two_running_calls() {
    let id = new_cancel_id();
    // Until the sleeper holds the id: on a loaded machine its thread may
    // not have called yet, and a noop that gets in first holds the id for
    // a moment, so the sleeper may itself be the call refused: then it has
    // ended (invalid_argument) and a new sleeper tries again.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let sleeper = 'held: loop {
        let sleeper = thread::spawn(move || call("debug.sleep", json!({"ms": 600_000}), id));
        while !sleeper.is_finished() {
            if let Err((code, _)) = call("noop", json!({}), id) {
                assert_eq!(code, "invalid_argument");
                break 'held sleeper;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the sleeper never held the id"
            );
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            code_of(sleeper.join().unwrap()),
            "invalid_argument",
            "a sleeper ended without being refused or canceled"
        );
    };
    assert_eq!(code_of(call("noop", json!({}), id)), "invalid_argument");
    unsafe { (api().cancel)(id) };
    assert_eq!(code_of(sleeper.join().unwrap()), "canceled");
    unsafe { (api().release)(id) };
}

#[test]
fn panic_becomes_internal_and_process_lives() {
    for _ in 0..3 {
        let (code, msg) = call("debug.panic", Value::Null, 0).unwrap_err();
        assert_eq!(code, "internal");
        assert!(msg.contains("debug.panic was called"), "{msg}");
    }
    call("noop", Value::Null, 0).expect("library still works after panics");
}

#[test]
fn stream_write_read_eof() {
    let p = pipe(64);
    assert_eq!(stream_write(p, b"hello, ", 0), Ok(7));
    assert_eq!(stream_write(p, b"world", 0), Ok(5));
    assert_eq!(stream_write(p, b"", 0), Ok(0));
    stream_close_write(p).unwrap();
    stream_close_write(p).expect("second close_write is harmless");
    let mut got = Vec::new();
    loop {
        let chunk = stream_read(p, 5, 0).unwrap();
        if chunk.is_empty() {
            break;
        }
        assert!(chunk.len() <= 5);
        got.extend(chunk);
    }
    assert_eq!(got, b"hello, world");
    assert_eq!(stream_read(p, 5, 0), Ok(vec![]), "EOF stays EOF");
    assert_eq!(stream_write(p, b"late", 0), Err("invalid_argument".into()));
    close(p).unwrap();
}

#[test]
fn stream_bulk_with_backpressure() {
    // 1 MiB through a 4 KiB pipe: the writer must wait for the reader.
    let p = pipe(4096);
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let expect = data.clone();
    let writer = thread::spawn(move || {
        for chunk in data.chunks(10_000) {
            assert_eq!(stream_write(p, chunk, 0), Ok(chunk.len()));
        }
        stream_close_write(p).unwrap();
    });
    let mut got = Vec::new();
    loop {
        let c = stream_read(p, 8192, 0).unwrap();
        if c.is_empty() {
            break;
        }
        got.extend(c);
    }
    writer.join().unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "bytes differ");
    close(p).unwrap();
}

#[test]
fn stream_read_cancel_during() {
    let p = pipe(16);
    let id = new_cancel_id();
    let reader = thread::spawn(move || stream_read(p, 16, id));
    thread::sleep(Duration::from_millis(100));
    unsafe { (api().cancel)(id) };
    assert_eq!(reader.join().unwrap(), Err("canceled".into()));
    unsafe { (api().release)(id) };
    // The pipe is intact after the canceled read.
    stream_write(p, b"ok", 0).unwrap();
    assert_eq!(stream_read(p, 16, 0).unwrap(), b"ok");
    close(p).unwrap();
}

#[test]
fn many_threads_at_once() {
    let threads: Vec<_> = (0..16)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..500 {
                    match (t + i) % 4 {
                        0 => assert_eq!(call("noop", json!({}), 0).unwrap(), json!({})),
                        1 => {
                            let h = create();
                            assert_eq!(
                                call("handle.kind", json!({"handle": h}), 0).unwrap()["kind"],
                                json!("object")
                            );
                            close(h).unwrap();
                            close(h).unwrap();
                        }
                        2 => {
                            let id = new_cancel_id();
                            call("debug.sleep", json!({"ms": 0}), id).unwrap();
                            unsafe { (api().cancel)(id) };
                            unsafe { (api().release)(id) };
                        }
                        _ => assert_eq!(code_of(call_bytes(b"{bad", 0)), "invalid_argument"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn installs_no_signal_handlers_and_never_exits() {
    // The library's imports. `sigaction` is how tokio::signal, tokio::process
    // (SIGCHLD) and signal-hook install handlers; `exit` is
    // std::process::exit. (`fork`, `signal` and `_exit` may appear: they are
    // the child side of std::process::Command, used to start lockbox-helper.)
    let out = std::process::Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(lib_path())
        .output()
        .expect("nm (binutils) is needed");
    assert!(out.status.success());
    let syms = String::from_utf8_lossy(&out.stdout);
    assert!(syms.contains("malloc"), "nm output looks wrong: {syms}");
    for bad in ["sigaction", "sigprocmask", "exit", "quick_exit"] {
        assert!(
            !syms
                .split_whitespace()
                .any(|s| s.split('@').next() == Some(bad)),
            "liblockbox.so imports {bad}"
        );
    }
}

// ---- Asynchronous calls: lockbox_submit and the completion queue ----

fn new_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 50);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Tokens drained by any test but not yet claimed by their waiter: the
/// queue is process-wide and the tests run in parallel.
fn drained() -> &'static std::sync::Mutex<std::collections::HashSet<u64>> {
    static SEEN: OnceLock<std::sync::Mutex<std::collections::HashSet<u64>>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

/// Waits until `token` is reported by lockbox_completions; false on timeout.
fn wait_token(token: u64, timeout: Duration) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        let mut buf = [0u64; 64];
        let n = unsafe { (api().completions)(buf.as_mut_ptr(), buf.len()) };
        let mut seen = drained().lock().unwrap();
        seen.extend(&buf[..n]);
        if seen.remove(&token) {
            return true;
        }
        drop(seen);
        if std::time::Instant::now() > end {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// lockbox_take: Ok(bytes) or Err((code, message)).
fn take_token(token: u64) -> Result<Vec<u8>, (String, String)> {
    let api = api();
    let (mut out, mut len) = (ptr::null_mut(), 0usize);
    let st = unsafe { (api.take)(token, &mut out, &mut len) };
    let body = unsafe { take(api, out, len) };
    match st {
        0 => Ok(body),
        1 => {
            let v: Value = serde_json::from_slice(&body).unwrap();
            Err((
                v["code"].as_str().unwrap().to_string(),
                v["message"].as_str().unwrap().to_string(),
            ))
        }
        s => panic!("status {s}"),
    }
}

fn submit(method: &str, params: Value, cancel: u64, token: u64) -> i32 {
    let req = serde_json::to_vec(&json!({"method": method, "params": params})).unwrap();
    unsafe { (api().submit)(req.as_ptr(), req.len(), cancel, token) }
}

/// Submits, waits and takes; the result as JSON.
fn submit_wait(method: &str, params: Value, cancel: u64) -> Result<Value, (String, String)> {
    let t = new_token();
    assert_eq!(
        submit(method, params, cancel, t),
        0,
        "{method} has an async form"
    );
    assert!(wait_token(t, Duration::from_secs(20)), "{method} completed");
    take_token(t).map(|b| serde_json::from_slice(&b).unwrap())
}

fn read_submit(h: u64, cap: usize, cancel: u64) -> Result<Vec<u8>, String> {
    let t = new_token();
    assert_eq!(unsafe { (api().read_submit)(h, cap, cancel, t) }, 0);
    assert!(wait_token(t, Duration::from_secs(20)));
    take_token(t).map_err(|e| e.0)
}

fn write_submit(h: u64, data: &[u8], cancel: u64) -> Result<(), String> {
    let t = new_token();
    assert_eq!(
        unsafe { (api().write_submit)(h, data.as_ptr(), data.len(), cancel, t) },
        0
    );
    assert!(wait_token(t, Duration::from_secs(20)));
    take_token(t)
        .map(|b| assert!(b.is_empty()))
        .map_err(|e| e.0)
}

#[test]
fn submit_completes_like_call_and_says_which_methods_are_sync_only() {
    assert_eq!(
        submit_wait("debug.sleep", json!({"ms": 5}), 0).unwrap(),
        json!({})
    );
    // Errors of an async method come back through the queue, as lockbox_call
    // would report them.
    assert_eq!(
        submit_wait("debug.sleep", json!({"bogus": 1}), 0)
            .unwrap_err()
            .0,
        "invalid_argument"
    );
    assert_eq!(
        submit_wait("exec.wait", json!({"exec": 12345}), 0)
            .unwrap_err()
            .0,
        code_of(call("exec.wait", json!({"exec": 12345}), 0))
    );
    let bogus = json!({"sandbox": (1u64 << 56) | 987_654_321});
    let submitted = submit_wait("sandbox.close", bogus.clone(), 0).unwrap_err();
    assert_eq!(submitted.0, "not_found", "{submitted:?}");
    assert_eq!(submitted, call("sandbox.close", bogus, 0).unwrap_err());
    // No async form, or no such method: nothing queued, status 3.
    for req in [&br#"{"method":"noop"}"#[..], br#"{"method":"no.such"}"#] {
        let t = new_token();
        assert_eq!(
            unsafe { (api().submit)(req.as_ptr(), req.len(), 0, t) },
            3,
            "{:?}",
            String::from_utf8_lossy(req)
        );
        assert_eq!(take_token(t).unwrap_err().0, "invalid_argument");
    }
    // Not a request, or too large: completes with lockbox_call's error (a
    // status 3 here would make a caller that remembers it by method name
    // send every later exec.wait down the blocking path).
    for (req, len) in [
        (&b"{not json"[..], 9),
        (b"", 0),
        (br#"{"method":"exec.wait","params":"#, 1 << 40),
    ] {
        let t = new_token();
        assert_eq!(unsafe { (api().submit)(req.as_ptr(), len, 0, t) }, 0);
        assert!(wait_token(t, Duration::from_secs(10)));
        let want = if len == 1 << 40 {
            "request is"
        } else {
            "malformed request"
        };
        let (code, msg) = take_token(t).unwrap_err();
        assert_eq!(code, "invalid_argument");
        assert!(msg.starts_with(want), "{msg}");
    }
    // Token 0, and a token still in use, are refused (status 2).
    assert_eq!(submit("debug.sleep", json!({"ms": 1}), 0, 0), 2);
    let (id, t) = (new_cancel_id(), new_token());
    assert_eq!(submit("debug.sleep", json!({"ms": 600_000}), id, t), 0);
    assert_eq!(submit("debug.sleep", json!({"ms": 1}), 0, t), 2);
    unsafe { (api().cancel)(id) };
    assert!(wait_token(t, Duration::from_secs(10)));
    assert_eq!(take_token(t).unwrap_err().0, "canceled");
    unsafe { (api().release)(id) };
}

#[test]
fn take_unknown_pending_and_twice_is_an_error() {
    let api = api();
    let (code, msg) = take_token(new_token()).unwrap_err();
    assert_eq!(code, "invalid_argument");
    assert!(msg.contains("unknown"), "{msg}");
    let (id, t) = (new_cancel_id(), new_token());
    assert_eq!(submit("debug.sleep", json!({"ms": 600_000}), id, t), 0);
    let (code, msg) = take_token(t).unwrap_err();
    assert_eq!(code, "invalid_argument");
    assert!(msg.contains("not completed"), "{msg}");
    unsafe { (api.cancel)(id) };
    assert!(wait_token(t, Duration::from_secs(10)));
    assert_eq!(take_token(t).unwrap_err().0, "canceled", "first take");
    assert!(
        take_token(t).unwrap_err().1.contains("unknown"),
        "second take"
    );
    unsafe { (api.release)(id) };
    let mut len = 0usize;
    assert_eq!(unsafe { (api.take)(t, ptr::null_mut(), &mut len) }, 2);
    let mut out = ptr::null_mut();
    assert_eq!(unsafe { (api.take)(t, &mut out, ptr::null_mut()) }, 2);
    assert_eq!(unsafe { (api.completions)(ptr::null_mut(), 8) }, 0);
}

#[test]
fn submit_cancel_before_and_during() {
    let id = new_cancel_id();
    unsafe { (api().cancel)(id) };
    let t0 = std::time::Instant::now();
    assert_eq!(
        submit_wait("debug.sleep", json!({"ms": 60_000}), id)
            .unwrap_err()
            .0,
        "canceled"
    );
    unsafe { (api().release)(id) };
    let (id, t) = (new_cancel_id(), new_token());
    assert_eq!(submit("debug.sleep", json!({"ms": 600_000}), id, t), 0);
    thread::sleep(Duration::from_millis(100));
    assert!(!wait_token(t, Duration::from_millis(50)), "still sleeping");
    unsafe { (api().cancel)(id) };
    assert!(wait_token(t, Duration::from_secs(10)));
    assert_eq!(take_token(t).unwrap_err().0, "canceled");
    assert!(t0.elapsed() < Duration::from_secs(20));
    unsafe { (api().release)(id) };
    call("noop", json!({}), id).expect("the canceled call left nothing for its id");
}

#[test]
fn forget_stops_the_work_and_drops_the_result() {
    let api = api();
    // Pending: the work is stopped (its cancel id is free at once) and the
    // token never completes.
    let (id, t) = (new_cancel_id(), new_token());
    assert_eq!(submit("debug.sleep", json!({"ms": 600_000}), id, t), 0);
    assert_eq!(
        code_of(call("noop", json!({}), id)),
        "invalid_argument",
        "id held by the running sleep"
    );
    assert_eq!(unsafe { (api.forget)(t) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while call("noop", json!({}), id).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "forgotten work still runs"
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert!(!wait_token(t, Duration::from_millis(200)));
    assert!(take_token(t).unwrap_err().1.contains("unknown"));
    assert_eq!(unsafe { (api.forget)(t) }, 1, "unknown now");
    // Complete but not taken: the result is dropped and not reported.
    let t = new_token();
    assert_eq!(submit("debug.sleep", json!({"ms": 1}), 0, t), 0);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(unsafe { (api.forget)(t) }, 0);
    assert!(take_token(t).is_err());
    // The token is free again.
    assert_eq!(
        submit_wait("debug.sleep", json!({"ms": 1}), 0).unwrap(),
        json!({})
    );
}

#[test]
fn submitted_panic_completes_as_internal() {
    for _ in 0..3 {
        let (code, msg) = submit_wait("debug.panic", Value::Null, 0).unwrap_err();
        assert_eq!(code, "internal");
        assert!(msg.contains("debug.panic was called"), "{msg}");
    }
    submit_wait("debug.sleep", json!({"ms": 1}), 0).expect("still works");
}

#[test]
fn completion_fd_is_signalled() {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let fd = unsafe { (api().completion_fd)() };
    assert!(fd >= 0);
    assert_eq!(unsafe { (api().completion_fd)() }, fd, "one fd");
    // Borrowed: the library owns the fd.
    let f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let mut cnt = [0u8; 8];
    let _ = (&*f).read(&mut cnt); // reset (EAGAIN when already 0)
    let t = new_token();
    assert_eq!(submit("debug.sleep", json!({"ms": 20}), 0, t), 0);
    assert!(wait_token(t, Duration::from_secs(10)));
    let n = (&*f).read(&mut cnt).expect("readable after a completion");
    assert_eq!(n, 8);
    assert!(u64::from_ne_bytes(cnt) >= 1);
    take_token(t).unwrap();
}

#[test]
fn stream_submit_round_trip_eof_and_copy() {
    let h = pipe(1 << 20);
    let mut data = b"hello".to_vec();
    let t = new_token();
    assert_eq!(
        unsafe { (api().write_submit)(h, data.as_ptr(), data.len(), 0, t) },
        0
    );
    // The library copied the bytes: changing them now changes nothing.
    data.copy_from_slice(b"XXXXX");
    assert!(wait_token(t, Duration::from_secs(10)));
    assert!(take_token(t).unwrap().is_empty());
    assert_eq!(read_submit(h, 3, 0).unwrap(), b"hel");
    assert_eq!(read_submit(h, 100, 0).unwrap(), b"lo");
    // Bulk both ways at once, with backpressure (pipe smaller than data).
    let small = pipe(64 << 10);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let want = big.clone();
    let writer = thread::spawn(move || {
        for c in big.chunks(700_000) {
            write_submit(small, c, 0).unwrap();
        }
        stream_close_write(small).unwrap();
    });
    let mut got = Vec::new();
    loop {
        let b = read_submit(small, 256 << 10, 0).unwrap();
        if b.is_empty() {
            break;
        }
        assert!(b.len() <= 256 << 10);
        got.extend(b);
    }
    writer.join().unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want);
    stream_close_write(h).unwrap();
    assert!(read_submit(h, 10, 0).unwrap().is_empty(), "EOF");
    assert!(read_submit(h, 10, 0).unwrap().is_empty(), "EOF again");
    assert_eq!(read_submit(h, 0, 0).unwrap_err(), "invalid_argument");
    close(h).unwrap();
    close(small).unwrap();
    assert_eq!(read_submit(h, 10, 0).unwrap_err(), "not_found");
    assert_eq!(write_submit(h, b"x", 0).unwrap_err(), "not_found");
    let t = new_token();
    assert_eq!(unsafe { (api().write_submit)(h, ptr::null(), 5, 0, t) }, 0);
    assert!(wait_token(t, Duration::from_secs(10)));
    assert_eq!(take_token(t).unwrap_err().0, "invalid_argument");
}

#[test]
fn stream_read_submit_cancel_loses_no_bytes() {
    let h = pipe(1024);
    let (id, t) = (new_cancel_id(), new_token());
    assert_eq!(unsafe { (api().read_submit)(h, 16, id, t) }, 0);
    thread::sleep(Duration::from_millis(50));
    unsafe { (api().cancel)(id) };
    assert!(wait_token(t, Duration::from_secs(10)));
    assert_eq!(take_token(t).unwrap_err().0, "canceled");
    unsafe { (api().release)(id) };
    write_submit(h, b"after", 0).unwrap();
    assert_eq!(read_submit(h, 16, 0).unwrap(), b"after");
    close(h).unwrap();
}
