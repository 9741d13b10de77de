//! The runtime defaults an image carries (from the OCI image config) and
//! how they read from the OCI/Docker JSON.

use serde::{Deserialize, Serialize};

/// What the engine applies to a sandbox created from the image: `env` as
/// the base environment, `workdir` as the cwd, `user` as the default user
/// (`uid[:gid]` or a name from the image's /etc/passwd), and
/// `entrypoint` + `cmd` as the default command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
}

pub(crate) const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl ImageConfig {
    /// Defaults for the named release images, which carry no config of
    /// their own.
    pub fn named_default() -> Self {
        ImageConfig {
            env: vec![DEFAULT_PATH.to_string()],
            workdir: Some("/work".to_string()),
            user: None,
            entrypoint: Vec::new(),
            cmd: vec!["/bin/sh".to_string()],
        }
    }

    /// Reads the `config` object of an OCI / Docker image config blob.
    pub(crate) fn from_oci_json(blob: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default)]
            config: Option<Inner>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase")]
        struct Inner {
            env: Option<Vec<String>>,
            working_dir: Option<String>,
            user: Option<String>,
            entrypoint: Option<Vec<String>>,
            cmd: Option<Vec<String>>,
        }
        let inner = serde_json::from_slice::<Outer>(blob)?
            .config
            .unwrap_or_default();
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(ImageConfig {
            env: inner.env.unwrap_or_default(),
            workdir: nonempty(inner.working_dir),
            user: nonempty(inner.user),
            entrypoint: inner.entrypoint.unwrap_or_default(),
            cmd: inner.cmd.unwrap_or_default(),
        })
    }
}
