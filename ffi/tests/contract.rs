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
    let sleeper = thread::spawn(move || call("debug.sleep", json!({"ms": 600_000}), id));
    thread::sleep(Duration::from_millis(100));
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
