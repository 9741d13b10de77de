use super::*;
use crate::config::{NamedVolumeMount, Port, TmpfsMount, VolumeMount};
use lockbox_protocol::{ErrorCode, NetworkMode};

fn root() -> Root {
    Root {
        layers: vec!["/store/layer".into()],
        ..Default::default()
    }
}

fn image_root() -> Root {
    Root {
        layers: vec!["/store/img".into()],
        env: vec!["PATH=/opt/bin".into(), "LANG=C.UTF-8".into()],
        workdir: Some("/app/".into()),
        user: Some("app".into()),
        image: None,
    }
}

#[test]
fn defaults_when_nothing_is_asked() {
    let p = sandbox(&SandboxConfig::default(), "sb-1", root()).unwrap();
    assert_eq!(p.user, DEFAULT_USER);
    assert_eq!(p.workdir, "/");
    assert_eq!(p.hostname, "sb-1");
    assert_eq!(
        p.env,
        vec![DEFAULT_PATH.to_string(), "HOSTNAME=sb-1".into()]
    );
    assert_eq!(p.limits.disk_mib, Some(DEFAULT_DISK_MIB));
    assert_eq!(
        (p.limits.memory_mib, p.limits.cpus, p.limits.pids),
        (None, None, None)
    );
    assert_eq!(p.network.mode, NetworkMode::None);
    assert!(p.mounts.is_empty());
    // HOME is not decided here: it follows the user, which the agent
    // resolves in the sandbox's root.
    assert!(!p.env.iter().any(|e| e.starts_with("HOME=")));
}

#[test]
fn the_image_overrides_defaults_and_the_config_overrides_the_image() {
    let p = sandbox(&SandboxConfig::default(), "x", image_root()).unwrap();
    assert_eq!(p.user, "app");
    assert_eq!(p.workdir, "/app");
    assert_eq!(p.env, vec!["PATH=/opt/bin", "HOSTNAME=x", "LANG=C.UTF-8"]);
    let cfg = SandboxConfig {
        user: Some("1000:1000".into()),
        workdir: Some("/w".into()),
        hostname: Some("h".into()),
        env: vec!["LANG=C".into(), "A=1".into()],
        ..Default::default()
    };
    let p = sandbox(&cfg, "x", image_root()).unwrap();
    assert_eq!(p.user, "1000:1000");
    assert_eq!(p.workdir, "/w");
    assert_eq!(p.env, vec!["PATH=/opt/bin", "HOSTNAME=h", "LANG=C", "A=1"]);
}

#[test]
fn mounts_limits_and_ports_are_resolved() {
    let cfg = SandboxConfig {
        volumes: vec![VolumeMount {
            host_path: "/host/data".into(),
            guest_path: "/data/./".into(),
            read_only: true,
        }],
        named_volumes: vec![NamedVolumeMount {
            name: "cache".into(),
            guest_path: "/cache".into(),
            read_only: false,
        }],
        tmpfs: vec![
            TmpfsMount {
                guest_path: "/scratch".into(),
                size_mib: None,
            },
            TmpfsMount {
                guest_path: "/big".into(),
                size_mib: Some(512),
            },
        ],
        memory_mib: Some(256),
        cpus: Some(1.5),
        pids: Some(100),
        disk_mib: Some(0),
        network: NetworkMode::Outbound,
        ports: vec![Port {
            host: 8080,
            guest: 80,
        }],
        detached: true,
        ..Default::default()
    };
    let p = sandbox(&cfg, "x", root()).unwrap();
    assert_eq!(
        p.mounts,
        vec![
            Mount {
                source: MountSource::Host {
                    path: "/host/data".into()
                },
                target: "/data".into(),
                read_only: true
            },
            Mount {
                source: MountSource::Volume {
                    name: "cache".into()
                },
                target: "/cache".into(),
                read_only: false
            },
            Mount {
                source: MountSource::Tmpfs {
                    size_mib: DEFAULT_TMPFS_MIB
                },
                target: "/scratch".into(),
                read_only: false
            },
            Mount {
                source: MountSource::Tmpfs { size_mib: 512 },
                target: "/big".into(),
                read_only: false
            },
        ]
    );
    assert_eq!(p.limits.memory_mib, Some(256));
    assert_eq!(p.limits.cpus, Some(1.5));
    assert_eq!(p.limits.pids, Some(100));
    assert_eq!(p.limits.disk_mib, None, "0 asks for no budget");
    assert_eq!(
        p.network.ports,
        vec![PortSpec {
            host: 8080,
            guest: 80
        }]
    );
    assert!(p.detached);
}

/// The engine's bound is the helper's: a value the plan accepts, the
/// helper's `Limits::check` accepts too, and one past it neither does.
#[test]
fn limits_are_bounded_by_the_protocol_bounds() {
    use lockbox_protocol::bounds::MAX_CPUS;
    let with = |cpus: f64| SandboxConfig {
        cpus: Some(cpus),
        ..Default::default()
    };
    let p = sandbox(&with(MAX_CPUS), "x", root()).unwrap();
    p.limits.check().unwrap();
    let e = sandbox(&with(MAX_CPUS * 2.0), "x", root()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    let past = Limits {
        cpus: Some(MAX_CPUS * 2.0),
        ..Default::default()
    };
    assert!(past.check().is_err());
    for bad in [f64::NAN, f64::INFINITY, 0.0, -1.0] {
        assert!(sandbox(&with(bad), "x", root()).is_err(), "{bad}");
    }
}

#[test]
fn bad_users_and_image_env_are_refused() {
    for u in ["", ":5", "a\0b"] {
        let cfg = SandboxConfig {
            user: Some(u.into()),
            ..Default::default()
        };
        assert_eq!(
            sandbox(&cfg, "x", root()).unwrap_err().code,
            ErrorCode::InvalidArgument,
            "{u:?}"
        );
    }
    let huge = Root {
        env: (0..5000).map(|i| format!("K{i}=v")).collect(),
        ..root()
    };
    let e = sandbox(&SandboxConfig::default(), "x", huge).unwrap_err();
    assert!(e.message.contains("image env"), "{}", e.message);
}

#[test]
fn hostnames_from_names() {
    let c = SandboxConfig::default();
    assert_eq!(hostname_for(&c, "my_box.1"), "my-box-1");
    assert_eq!(hostname_for(&c, ""), "sandbox");
}

fn stored() -> StoredConfig {
    let p = sandbox(&SandboxConfig::default(), "x", image_root()).unwrap();
    StoredConfig {
        env: p.env,
        workdir: p.workdir,
        user: p.user,
        ..Default::default()
    }
}

#[test]
fn exec_requests_are_complete() {
    let s = stored();
    let o = ExecOptions {
        argv: vec!["id".into()],
        env: vec!["LANG=C".into()],
        ..Default::default()
    };
    let r = exec(&s, &o).unwrap();
    assert_eq!(r.cwd, "/app");
    assert_eq!(r.user, None, "the sandbox's user, as resolved at launch");
    assert_eq!(r.env, vec!["PATH=/opt/bin", "HOSTNAME=x", "LANG=C"]);
    let o = ExecOptions {
        argv: vec!["id".into()],
        cwd: Some("/tmp/../etc".into()),
        ..Default::default()
    };
    assert!(exec(&s, &o).is_err());
    let o = ExecOptions {
        argv: vec!["id".into()],
        cwd: Some("/tmp/".into()),
        user: Some("made-inside".into()),
        ..Default::default()
    };
    let r = exec(&s, &o).unwrap();
    assert_eq!(
        (r.cwd.as_str(), r.user.as_deref()),
        ("/tmp", Some("made-inside"))
    );
    for bad in [
        ExecOptions::default(),
        ExecOptions {
            argv: vec!["a\0".into()],
            ..Default::default()
        },
        ExecOptions {
            argv: vec!["a".into()],
            timeout_ms: Some(0),
            ..Default::default()
        },
        ExecOptions {
            argv: vec!["a".into()],
            user: Some(String::new()),
            ..Default::default()
        },
    ] {
        assert_eq!(
            exec(&s, &bad).unwrap_err().code,
            ErrorCode::InvalidArgument,
            "{bad:?}"
        );
    }
}
