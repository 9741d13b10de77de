//! End-to-end against the real lockbox-helper and the dev base image.
//! Skips (with a message) when either is not built: `make image-base` and
//! `cargo build -p lockbox-agent` first.

use lockbox_engine::{Engine, ExecOptions, SandboxConfig};
use lockbox_protocol::ErrorCode;

fn ready() -> bool {
    // The dev tree's base image (`make image-base`), where a debug engine
    // finds it.
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../build/images/base/rootfs");
    let ok = lockbox_engine::find_helper().is_ok() && std::path::Path::new(base).is_dir();
    if !ok {
        eprintln!("skipping: lockbox-helper or the base image is not built");
    }
    ok
}

fn argv(a: &[&str]) -> ExecOptions {
    ExecOptions {
        argv: a.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exec_files_remove() {
    if !ready() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let engine = Engine::with_home(home.path().to_path_buf()).unwrap();
    let sb = engine
        .create(SandboxConfig {
            name: Some("e2e".into()),
            env: vec!["GREETING=hi".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    let out = sb
        .exec_collect(
            &argv(&["sh", "-c", "echo $GREETING; echo err >&2; exit 3"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.code, Some(3));

    let out = sb
        .exec_collect(&argv(&["cat"]), Some(b"piped".to_vec()))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"piped");

    let e = sb.exec_collect(&argv(&["/no/such/bin"]), None).await;
    match e {
        Err(e) => assert_eq!(e.code, ErrorCode::NotFound, "{e}"),
        Ok(o) => assert_eq!(o.status.code, Some(127)),
    }

    // An output nobody reads is discarded once its reader is dropped; the
    // process is not stalled by flow control.
    let mut p = sb
        .exec_start(&argv(&[
            "sh",
            "-c",
            "head -c 30000000 /dev/zero; echo done >&2",
        ]))
        .await
        .unwrap();
    let (_, out, err) = p.take_stdio();
    drop(out);
    let err = err.unwrap().read_to_end().await.unwrap();
    assert_eq!(err, b"done\n");
    assert_eq!(p.wait().await.unwrap().code, Some(0));

    let c = sb.files(None).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    c.write_file("/tmp/big", &big, 0o600).await.unwrap();
    assert_eq!(c.read_file("/tmp/big").await.unwrap(), big);
    assert_eq!(c.stat("/tmp/big").await.unwrap().size, big.len() as u64);

    assert_eq!(
        engine
            .create(SandboxConfig {
                name: Some("e2e".into()),
                ..Default::default()
            })
            .await
            .err()
            .unwrap()
            .code,
        ErrorCode::AlreadyExists
    );
    assert_eq!(engine.list().unwrap().len(), 1);
    engine.remove("e2e").await.unwrap();
    assert!(engine.list().unwrap().is_empty());
    assert_eq!(
        sb.exec_collect(&argv(&["true"]), None)
            .await
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
}

/// Engine-level timings (no C ABI, no Go): `cargo test --release -p
/// lockbox-engine --test sandbox_e2e -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn engine_timings() {
    if !ready() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let engine = Engine::with_home(home.path().to_path_buf()).unwrap();
    let mut create = Vec::new();
    for _ in 0..30 {
        let t = std::time::Instant::now();
        let sb = engine.create(SandboxConfig::default()).await.unwrap();
        let t1 = t.elapsed();
        let out = sb.exec_collect(&argv(&["echo", "hi"]), None).await.unwrap();
        assert_eq!(out.stdout, b"hi\n");
        create.push((t1, t.elapsed()));
        engine.remove(&sb.name).await.unwrap();
    }
    create.sort();
    println!("create p50 {:?}; create+echo p50 {:?}", create[15].0, {
        let mut v: Vec<_> = create.iter().map(|c| c.1).collect();
        v.sort();
        v[15]
    });
    let sb = engine.create(SandboxConfig::default()).await.unwrap();
    let mut rt = Vec::new();
    for _ in 0..300 {
        let t = std::time::Instant::now();
        sb.exec_collect(&argv(&["echo", "x"]), None).await.unwrap();
        rt.push(t.elapsed());
    }
    rt.sort();
    println!("exec round trip p50 {:?} p90 {:?}", rt[150], rt[270]);
    engine.remove(&sb.name).await.unwrap();

    let sb = engine
        .create(SandboxConfig {
            tmpfs: vec![lockbox_engine::config::TmpfsMount {
                guest_path: "/scratch".into(),
                size_mib: Some(600),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let c = sb.files(None).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let w = c.create("/scratch/big", 0o644).await.unwrap();
        for _ in 0..256 {
            w.write_all(&chunk).await.unwrap();
        }
        w.finish().await.unwrap();
        let wt = t.elapsed();
        let t = std::time::Instant::now();
        let r = c.open("/scratch/big").await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        loop {
            let k = r.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        assert_eq!(n, 256 << 20);
        println!(
            "engine FS 256 MiB: write {:.2} GB/s, read {:.2} GB/s",
            0.268435456 / wt.as_secs_f64(),
            0.268435456 / t.elapsed().as_secs_f64()
        );
    }
    engine.remove(&sb.name).await.unwrap();
}

/// State paths longer than a Unix socket address (108 bytes) still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_state_path() {
    if !ready() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("a".repeat(60)).join("b".repeat(60));
    let engine = Engine::with_home(home).unwrap();
    let sb = engine
        .create(SandboxConfig {
            name: Some("n".repeat(60)),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = std::path::PathBuf::from(sb.info().unwrap().dir);
    assert!(dir.join("agent.sock").to_string_lossy().len() > 108);
    let out = sb.exec_collect(&argv(&["echo", "ok"]), None).await.unwrap();
    assert_eq!(out.stdout, b"ok\n");
    engine.remove(&sb.name).await.unwrap();
}

/// Users are resolved in the sandbox's own root: one made inside (by
/// appending to its /etc/passwd, as useradd does) works with an exec's and
/// a file call's user; a name that is in neither is a not_found naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_made_inside_are_resolved_inside() {
    if !ready() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let engine = Engine::with_home(home.path().to_path_buf()).unwrap();
    let sb = engine.create(SandboxConfig::default()).await.unwrap();
    let as_user = |user: &str, a: &[&str]| ExecOptions {
        user: Some(user.into()),
        ..argv(a)
    };
    // Control: before it exists, the name is refused, by name.
    let e = sb
        .exec_collect(&as_user("made", &["id", "-u"]), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    assert!(e.message.contains("\"made\""), "{e}");

    let add = "echo 'made:x:4321:4322::/home/made:/bin/sh' >> /etc/passwd && \
               echo 'crew:x:4400:' >> /etc/group && mkdir -p /home/made && \
               chown 4321:4322 /home/made";
    let out = sb
        .exec_collect(&argv(&["sh", "-c", add]), None)
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(0), "{out:?}");
    let out = sb
        .exec_collect(
            &as_user("made", &["sh", "-c", "id -u; id -g; echo $HOME"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "4321\n4322\n/home/made\n"
    );
    let out = sb
        .exec_collect(&as_user("made:crew", &["id", "-g"]), None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"4400\n");
    // The sandbox's own user (root) keeps its HOME.
    let out = sb
        .exec_collect(&argv(&["sh", "-c", "echo $HOME"]), None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"/root\n");

    let c = sb.files(Some("made")).unwrap();
    c.write_file("/home/made/f", b"x", 0o600).await.unwrap();
    let out = sb
        .exec_collect(&argv(&["stat", "-c", "%u:%g", "/home/made/f"]), None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"4321:4322\n");
    engine.remove(&sb.name).await.unwrap();

    // A sandbox whose user is not in its image does not start.
    let e = engine
        .create(SandboxConfig {
            name: Some("nouser".into()),
            user: Some("ghost".into()),
            ..Default::default()
        })
        .await
        .err()
        .expect("a user that is not there");
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    assert!(e.message.contains("ghost"), "{e}");
    assert!(engine.list().unwrap().is_empty());
}
