//! lockbox-installer: the release engineer's tool. Builds signed release
//! bundles, makes and reads signing keys, verifies a release directory.
//! Installing is the Go SDK's (lockbox.EnsureInstalled, `lockbox install`).
//! Exit codes: see installer/README.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lockbox_installer::error::{exit, Error};
use lockbox_installer::manifest::{current_platform, BuildSource};
use lockbox_installer::release::{release, ReleaseRequest};
use lockbox_installer::signing::{self, TrustedKeys};
use lockbox_installer::verify;

#[derive(Parser)]
#[command(name = "lockbox-installer", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// Directory holding the microVM guest's vmlinuz and initramfs.img
        /// (make vm-assets: build/vm). Default: no VM assets.
        #[arg(long)]
        vm_assets: Option<PathBuf>,
        /// Also copy <version>/manifest.json(+.sig) under this directory. Repeatable.
        #[arg(long)]
        pin: Vec<PathBuf>,
        #[arg(long, default_value_t = current_platform())]
        platform: String,
        /// Record in the manifest the commit the artifacts were built from
        /// (the last one that changed a build input). Needs --rustc.
        #[arg(long, requires = "rustc")]
        source_commit: Option<String>,
        /// Record in the manifest the `rustc -V` that built the artifacts.
        #[arg(long, requires = "source_commit")]
        rustc: Option<String>,
    },
    /// Check a release directory (dist/<version>, or an installed copy)
    /// against its signed manifest.
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
            vm_assets,
            pin,
            platform,
            source_commit,
            rustc,
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
                vm_assets,
                pin_dirs: pin,
                source: source_commit
                    .zip(rustc)
                    .map(|(commit, rustc)| BuildSource { commit, rustc }),
            })?;
            for a in r.manifest.platforms.values().flatten() {
                eprintln!("  {:<12} {:>12} {}", a.kind.name(), a.size, a.path);
            }
            println!("{}", r.dir.display());
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
