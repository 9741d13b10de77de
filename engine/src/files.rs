//! `Files`: the file calls of one sandbox, as one user, for the C ABI and
//! any other caller of the engine's API. The work is fs.rs's; this only
//! binds it to a connection so no caller handles the agent client itself.

use std::path::Path;

use lockbox_protocol::FileInfo;

use crate::client::AgentClient;
use crate::error::Result;
use crate::fs::{self, FileWriter};
use crate::streams::StreamReader;

/// File calls inside one sandbox (paths are absolute inside it). Cheap to
/// clone: it shares the sandbox's connection.
#[derive(Clone)]
pub struct Files {
    client: AgentClient,
}

impl Files {
    pub(crate) fn new(client: AgentClient) -> Files {
        Files { client }
    }

    pub async fn stat(&self, path: &str) -> Result<FileInfo> {
        fs::stat(&self.client, path).await
    }

    pub async fn read_dir(&self, path: &str) -> Result<Vec<FileInfo>> {
        fs::read_dir(&self.client, path).await
    }

    pub async fn mkdir_all(&self, path: &str, mode: u32) -> Result<()> {
        fs::mkdir_all(&self.client, path, mode).await
    }

    pub async fn remove(&self, path: &str) -> Result<()> {
        fs::remove(&self.client, path).await
    }

    pub async fn remove_all(&self, path: &str) -> Result<()> {
        fs::remove_all(&self.client, path).await
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        fs::rename(&self.client, from, to).await
    }

    pub async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        fs::symlink(&self.client, target, link).await
    }

    /// The contents of any readable file (FIFOs and devices included).
    pub async fn open(&self, path: &str) -> Result<StreamReader> {
        fs::open(&self.client, path).await
    }

    /// The contents of a regular file; anything else is refused.
    pub async fn open_regular(&self, path: &str) -> Result<StreamReader> {
        fs::open_regular(&self.client, path).await
    }

    /// Creates or truncates a file; its bytes go through the writer.
    pub async fn create(&self, path: &str, mode: u32) -> Result<FileWriter> {
        fs::create(&self.client, path, mode).await
    }

    pub async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<u64> {
        fs::write_file(&self.client, path, data, mode).await
    }

    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        fs::read_file(&self.client, path).await
    }

    /// Copies `src` (a file or a tree) out to the host path `dst`, at most
    /// `max_bytes` (see fs.rs for the host-side rules).
    pub async fn copy_to_host(&self, src: &str, dst: &Path, max_bytes: u64) -> Result<u64> {
        fs::copy_to_host(&self.client, src, dst, max_bytes).await
    }

    pub async fn copy_from_host(&self, src: &Path, dst: &str) -> Result<u64> {
        fs::copy_from_host(&self.client, src, dst).await
    }
}
