use super::*;
use lockbox_engine::ErrorCode;
use std::collections::BTreeSet;
use std::path::Path;

fn run(req: &[u8]) -> Result<Value, ApiError> {
    let out = dispatch(
        req,
        &CallCtx {
            cancel: CancelToken::none(),
        },
    )?;
    Ok(serde_json::from_slice(&out).unwrap())
}

fn golden_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The methods a release build has: the golden files cover exactly these.
fn release_methods() -> BTreeSet<&'static str> {
    Method::ALL
        .iter()
        .map(|m| m.name())
        .filter(|n| !n.starts_with("debug."))
        .collect()
}

#[test]
fn every_method_has_a_golden_file_and_every_file_a_method() {
    let files: BTreeSet<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .map(|f| {
            f.strip_suffix(".json")
                .expect("only .json files")
                .to_string()
        })
        .collect();
    let methods: BTreeSet<String> = release_methods().into_iter().map(String::from).collect();
    assert_eq!(
        files.difference(&methods).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "golden files without a method"
    );
    assert_eq!(
        methods.difference(&files).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "methods without a golden file"
    );
}

#[test]
fn golden_params_and_results_round_trip_through_the_typed_structs() {
    let mut failures = Vec::new();
    for name in release_methods() {
        let path = golden_dir().join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        let g: Value = serde_json::from_str(&text).unwrap();
        let obj = g.as_object().unwrap();
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["method", "params", "result"]),
            "{name}"
        );
        assert_eq!(g["method"], name, "{name}: method field");
        let m = Method::from_name(name).unwrap();
        if let Err(e) = m.round_trip(&g["params"], &g["result"]) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The control for the round trip: a field the types do not have, or one
/// missing from the file, is caught, for params and for results (the
/// engine's result types accept unknown fields; the comparison catches
/// them).
#[test]
fn round_trip_catches_extra_and_missing_fields() {
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir().join("sandbox.info.json")).unwrap(),
    )
    .unwrap();
    let m = Method::SandboxInfo;
    m.round_trip(&g["params"], &g["result"]).unwrap();
    let mut extra = g["params"].clone();
    extra["handle"] = 1.into();
    assert!(m.round_trip(&extra, &g["result"]).is_err());
    let mut extra = g["result"].clone();
    extra["surprise"] = true.into();
    assert!(m.round_trip(&g["params"], &extra).is_err());
    let mut missing = g["result"].clone();
    missing.as_object_mut().unwrap().remove("dir");
    assert!(m.round_trip(&g["params"], &missing).is_err());
}

#[test]
fn names_and_variants_map_one_to_one() {
    let names: BTreeSet<&str> = Method::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(names.len(), Method::ALL.len(), "a name used twice");
    for &m in Method::ALL {
        assert_eq!(Method::from_name(m.name()), Some(m));
    }
    assert_eq!(Method::from_name("sandbox.nope"), None);
}

/// Which methods `lockbox_submit` takes: by name alone, as documented.
#[test]
fn async_forms() {
    let with: BTreeSet<&str> = Method::ALL
        .iter()
        .filter(|m| m.async_form().is_some())
        .map(|m| m.name())
        .collect();
    let mut want = BTreeSet::from(["exec.start", "exec.wait", "host.vm_check", "sandbox.close"]);
    if cfg!(feature = "test-hooks") {
        want.extend(["debug.sleep", "debug.panic"]);
    }
    assert_eq!(with, want);
}

#[test]
fn debug_methods_exist_only_with_test_hooks() {
    for m in ["debug.stats", "debug.sleep", "debug.panic", "debug.pipe"] {
        let listed = Method::from_name(m).is_some();
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
        br#"{"method":"noop","params":[]}"#,
        br#"{"method":"version","params":{"x":1}}"#,
        br#"{"method":"handle.create","params":{"x":1}}"#,
        br#"{"method":"sandbox.info","params":{"handle":1}}"#,
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

/// The old key for a sandbox handle is refused, not ignored: a caller
/// still sending it learns at once.
#[test]
fn sandbox_handle_key_is_sandbox() {
    for m in [
        "sandbox.info",
        "sandbox.metrics",
        "sandbox.kill",
        "sandbox.close",
    ] {
        let req = format!(r#"{{"method":"{m}","params":{{"handle":72057594037927937}}}}"#);
        let e = run(req.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{m}: {e:?}");
        assert!(e.message.contains("handle"), "{m}: {e:?}");
    }
    let e =
        run(br#"{"method":"sandbox.info","params":{"sandbox":72057594037927937}}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
}
