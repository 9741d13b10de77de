//! lockbox-installer: build signed release bundles, install pinned versions
//! (CI), verify installed trees. Exit codes: see installer/README.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use lockbox_installer::error::{exit, Error};
use lockbox_installer::install::{install, Event, InstallRequest};
use lockbox_installer::manifest::current_platform;
use lockbox_installer::release::{release, ReleaseRequest};
use lockbox_installer::signing::{self, TrustedKeys};
use lockbox_installer::source::Source;
use lockbox_installer::{layout, verify};

#[derive(Parser)]
#[command(name = "lockbox-installer", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build dist/<version>/ from this build's artifacts, with a signed manifest.
    Release {
        #[arg(long)]
        version: String,
        #[arg(long)]
        out: PathBuf,
        /// Signing key file (base64 seed); else LOCKBOX_SIGNING_KEY holds the base64 seed.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Directory the default artifact paths are relative to.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Default: <root>/target/release/liblockbox.so
        #[arg(long)]
        lib: Option<PathBuf>,
        /// Repeatable. Default: <root>/target/release/lockbox-helper
        #[arg(long)]
        helper: Vec<PathBuf>,
        /// Directory of <name>.tar.zst images. Default: <root>/build/images (if present).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Also copy <version>/manifest.json(+.sig) under this directory. Repeatable.
        #[arg(long)]
        pin: Vec<PathBuf>,
        #[arg(long, default_value_t = current_platform())]
        platform: String,
    },
    /// Install a pinned version (verified) and print its directory.
    Install {
        #[arg(long)]
        version: String,
        /// Release mirror: http(s):// URL, file:// URL or directory. Default: $LOCKBOX_RELEASE_URL.
        #[arg(long)]
        from: Option<String>,
        /// Install root. Default: $LOCKBOX_HOME, else the per-user data dir.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Use only what is installed (also LOCKBOX_OFFLINE=1).
        #[arg(long)]
        offline: bool,
        /// Trust this public key file too (base64). Repeatable.
        #[arg(long)]
        trusted_key: Vec<PathBuf>,
        /// Require the manifest to have exactly this sha256.
        #[arg(long)]
        manifest_sha256: Option<String>,
        /// Require the manifest to be byte-identical to this file (e.g. the
        /// pin manifests/<version>/manifest.json): the Go SDK's rule.
        #[arg(long, conflicts_with = "manifest_sha256")]
        pin_manifest: Option<PathBuf>,
        #[arg(long, default_value_t = current_platform())]
        platform: String,
        /// Also trust this PEM CA certificate for https mirrors. Repeatable.
        #[arg(long)]
        ca_cert: Vec<PathBuf>,
        /// Give up (exit 4) when the whole install, including the wait for
        /// another process's install lock, takes longer than this many
        /// seconds (0: no bound).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Abandon and retry a download that receives less than
        /// --min-rate's worth of bytes in this many seconds.
        #[arg(long, default_value_t = 30)]
        stall_timeout: u64,
        /// Bytes per second a download must average over each stall window
        /// (0: any byte is progress).
        #[arg(long, default_value_t = 1024)]
        min_rate: u64,
        /// No progress on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Check an installed version directory against its signed manifest.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        trusted_key: Vec<PathBuf>,
        #[arg(long, default_value_t = current_platform())]
        platform: String,
    },
    /// Create a new signing key (base64 seed, mode 0600) and write its public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        public: PathBuf,
    },
    /// Print the public key of a signing key file (default: LOCKBOX_SIGNING_KEY).
    PublicKey {
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => ExitCode::from(exit::OK as u8),
        Err(e) => {
            eprintln!("lockbox-installer: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn read_text(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io_at("read", path, e))
}

fn trusted_keys(extra: &[PathBuf]) -> Result<TrustedKeys, Error> {
    let mut keys = TrustedKeys::embedded()?;
    for p in extra {
        let name = p.file_stem().unwrap_or_default().to_string_lossy();
        keys.add(&name, signing::parse_public_key(&read_text(p)?)?);
    }
    Ok(keys)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

fn run(cmd: Cmd) -> Result<(), Error> {
    match cmd {
        Cmd::Release {
            version,
            out,
            key,
            root,
            lib,
            helper,
            images,
            pin,
            platform,
        } => {
            let key_text = match key {
                Some(p) => read_text(&p)?,
                None => std::env::var("LOCKBOX_SIGNING_KEY").map_err(|_| {
                    Error::Usage(
                        "no signing key: pass --key FILE or set LOCKBOX_SIGNING_KEY".into(),
                    )
                })?,
            };
            let helpers = if helper.is_empty() {
                vec![root.join("target/release/lockbox-helper")]
            } else {
                helper
            };
            let r = release(&ReleaseRequest {
                version,
                out,
                key: signing::parse_signing_key(&key_text)?,
                platform,
                library: lib.unwrap_or_else(|| root.join("target/release/liblockbox.so")),
                helpers,
                images_dir: Some(images.unwrap_or_else(|| root.join("build/images"))),
                pin_dirs: pin,
            })?;
            for a in r.manifest.platforms.values().flatten() {
                eprintln!(
                    "  {:<8} {:>12} {}",
                    format!("{:?}", a.kind).to_lowercase(),
                    a.size,
                    a.path
                );
            }
            println!("{}", r.dir.display());
            Ok(())
        }
        Cmd::Install {
            version,
            from,
            dir,
            offline,
            trusted_key,
            manifest_sha256,
            pin_manifest,
            platform,
            ca_cert,
            timeout,
            stall_timeout,
            min_rate,
            quiet,
        } => {
            let manifest_sha256 = match pin_manifest {
                Some(p) => Some(lockbox_installer::fsutil::sha256_hex(
                    &std::fs::read(&p).map_err(|e| Error::io_at("read", &p, e))?,
                )),
                None => manifest_sha256,
            };
            let roots = ca_cert
                .iter()
                .map(|p| std::fs::read(p).map_err(|e| Error::io_at("read", p, e)))
                .collect::<Result<Vec<_>, _>>()?;
            let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_secs(timeout));
            let stall = Duration::from_secs(stall_timeout.max(1));
            let min_bytes = min_rate.saturating_mul(stall.as_secs());
            let from = from.or_else(|| {
                std::env::var("LOCKBOX_RELEASE_URL")
                    .ok()
                    .filter(|s| !s.is_empty())
            });
            let req = InstallRequest {
                version,
                root: layout::install_root(dir.as_deref())?,
                source: from
                    .as_deref()
                    .map(|f| {
                        Source::parse_with_roots(f, &roots)
                            .map(|s| s.with_limits(stall, min_bytes, deadline))
                    })
                    .transpose()?,
                trusted: trusted_keys(&trusted_key)?,
                offline: offline || env_flag("LOCKBOX_OFFLINE"),
                platform,
                pinned_manifest_sha256: manifest_sha256,
                deadline,
            };
            let mut last_pct = u64::MAX;
            let installed = install(&req, &mut |ev| {
                if quiet {
                    return;
                }
                match ev {
                    Event::Manifest { signed_by } => {
                        eprintln!("manifest signed by key {signed_by}")
                    }
                    Event::Artifact { path, have, size } => {
                        let pct = (have * 100).checked_div(size).unwrap_or(100);
                        if pct != last_pct && (pct % 25 == 0 || have == size) {
                            eprintln!("  {path}: {pct}% of {size} bytes");
                        }
                        last_pct = pct;
                    }
                    Event::Complete => eprintln!("installed"),
                }
            })?;
            if installed.warm && !quiet {
                eprintln!("already installed");
            }
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{}", installed.dir.display());
            Ok(())
        }
        Cmd::Verify {
            dir,
            trusted_key,
            platform,
        } => {
            let m = verify::verify_tree(&dir, &trusted_keys(&trusted_key)?, &platform)?;
            println!("{}: version {} verified", dir.display(), m.version);
            Ok(())
        }
        Cmd::Keygen { out, public } => {
            if out.exists() {
                return Err(Error::Usage(format!(
                    "{} exists; not overwriting a key",
                    out.display()
                )));
            }
            let key = signing::generate_signing_key();
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| Error::io_at("create", parent, e))?;
            }
            lockbox_installer::fsutil::write_atomic(
                &out,
                signing::encode_signing_key(&key).as_bytes(),
                0o600,
            )?;
            std::fs::write(&public, signing::encode_public_key(&key.verifying_key()))
                .map_err(|e| Error::io_at("write", &public, e))?;
            println!("{}", public.display());
            Ok(())
        }
        Cmd::PublicKey { key } => {
            let text = match key {
                Some(p) => read_text(&p)?,
                None => std::env::var("LOCKBOX_SIGNING_KEY").map_err(|_| {
                    Error::Usage(
                        "no signing key: pass --key FILE or set LOCKBOX_SIGNING_KEY".into(),
                    )
                })?,
            };
            let k = signing::parse_signing_key(&text)?;
            print!("{}", signing::encode_public_key(&k.verifying_key()));
            Ok(())
        }
    }
}
