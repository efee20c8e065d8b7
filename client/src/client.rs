//! [`Client`]: the async client. Cheap to clone; all clones share one connection, which
//! is reopened on the next call after the daemon restarts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use harpocrates_protocol::{
    HealthStatus, KeyAttributes, KeyHandle, KeyInfo, MetricsSnapshot, Request, Response,
    SecretBytes, paths,
};

use crate::batch::BatchBuilder;
use crate::connection::{ClientOptions, Connection, ServerInfo};
use crate::error::Result;

/// Unpacks the expected response variant, or reports a protocol error.
macro_rules! expect_response {
    ($response:expr, $pattern:pat => $value:expr) => {
        match $response {
            $pattern => Ok($value),
            other => Err($crate::error::Error::Protocol(format!(
                "unexpected answer: {}",
                $crate::client::describe(&other)
            ))),
        }
    };
}

/// An async client of `harpocratesd`.
///
/// Calls made concurrently on one client (from many tasks, or with `join!`) are pipelined
/// on one connection and coalesced into batches automatically.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: ClientOptions,
    conn: RwLock<Option<Arc<Connection>>>,
    reconnecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("socket", &self.inner.path).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the daemon at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(path, ClientOptions::default()).await
    }

    /// Connects to the default socket: `$HARPOCRATES_SOCKET`, the system socket, or the
    /// development socket (see [`harpocrates_protocol::paths`]).
    pub async fn connect_default() -> Result<Self> {
        Self::connect(paths::default_socket_path()).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(path: impl AsRef<Path>, options: ClientOptions) -> Result<Self> {
        let client = Self {
            inner: Arc::new(Inner {
                path: path.as_ref().to_owned(),
                options,
                conn: RwLock::new(None),
                reconnecting: tokio::sync::Mutex::new(()),
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The socket this client talks to.
    pub fn socket_path(&self) -> &Path {
        &self.inner.path
    }

    /// What the daemon said in the handshake of the current connection.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        Ok(self.connection().await?.info().clone())
    }

    async fn connection(&self) -> Result<Arc<Connection>> {
        if let Some(c) = self.current().filter(|c| c.is_alive()) {
            return Ok(c);
        }
        let _one_at_a_time = self.inner.reconnecting.lock().await;
        if let Some(c) = self.current().filter(|c| c.is_alive()) {
            return Ok(c);
        }
        let fresh = Arc::new(Connection::open(&self.inner.path, &self.inner.options).await?);
        *self.inner.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.inner.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends any request and returns the daemon's answer. The typed methods below are
    /// usually more convenient.
    pub async fn call(&self, request: Request) -> Result<Response> {
        Ok(self.connection().await?.call(request).await??)
    }

    /// Starts an explicit batch: many operations in one frame, answered together.
    pub fn batch(&self) -> BatchBuilder<'_> {
        BatchBuilder::new(self)
    }

    /// Round trip without touching the HSM.
    pub async fn ping(&self) -> Result<()> {
        expect_response!(self.call(Request::Ping).await?, Response::Pong => ())
    }

    /// `len` random bytes from the token.
    pub async fn generate_random(&self, len: u32) -> Result<SecretBytes> {
        expect_response!(self.call(Request::GenerateRandom { len }).await?, Response::Random(b) => b)
    }

    /// A new AES key (`size_bits` 128, 192 or 256) with safe default attributes:
    /// sensitive, non-extractable, encrypt and decrypt only.
    pub async fn generate_key(&self, label: &str, size_bits: u32) -> Result<KeyInfo> {
        let request = Request::GenerateKey { label: label.into(), size_bits };
        expect_response!(self.call(request).await?, Response::KeyGenerated(k) => k)
    }

    /// A new AES key with the attributes given.
    pub async fn generate_key_with_attributes(
        &self,
        label: &str,
        attributes: KeyAttributes,
    ) -> Result<KeyInfo> {
        let request = Request::GenerateKeyWithAttributes { label: label.into(), attributes };
        expect_response!(self.call(request).await?, Response::KeyGenerated(k) => k)
    }

    /// Every key on the token.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        expect_response!(self.call(Request::ListKeys).await?, Response::Keys(k) => k)
    }

    /// AES-GCM encryption under `key`; `aad` is authenticated but not encrypted.
    pub async fn encrypt(
        &self,
        key: &str,
        plaintext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let request = Request::Encrypt {
            key: KeyHandle::from(key),
            plaintext: plaintext.into(),
            aad: aad.map(<[u8]>::to_vec),
        };
        expect_response!(self.call(request).await?, Response::Ciphertext(c) => c)
    }

    /// Decrypts what [`encrypt`](Self::encrypt) produced, with the same `aad`.
    pub async fn decrypt(
        &self,
        key: &str,
        ciphertext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<SecretBytes> {
        let request = Request::Decrypt {
            key: KeyHandle::from(key),
            ciphertext: ciphertext.to_vec(),
            aad: aad.map(<[u8]>::to_vec),
        };
        expect_response!(self.call(request).await?, Response::Plaintext(p) => p)
    }

    /// Destroys a key for good.
    pub async fn destroy_key(&self, key: &str) -> Result<()> {
        expect_response!(self.call(Request::DestroyKey { key: key.into() }).await?, Response::KeyDestroyed => ())
    }

    /// Exports an extractable key, wrapped under a key derived from `password` (at least 8
    /// bytes). The backup restores on any backend with [`restore_key`](Self::restore_key).
    pub async fn backup_key(&self, key: &str, password: &[u8]) -> Result<Vec<u8>> {
        let request = Request::BackupKey { key: key.into(), password: password.into() };
        expect_response!(self.call(request).await?, Response::KeyBackup(b) => b)
    }

    /// Imports a backup as a new key named `label`.
    pub async fn restore_key(
        &self,
        label: &str,
        backup: &[u8],
        password: &[u8],
    ) -> Result<KeyInfo> {
        let request = Request::RestoreKey {
            label: label.into(),
            backup: backup.to_vec(),
            password: password.into(),
        };
        expect_response!(self.call(request).await?, Response::KeyGenerated(k) => k)
    }

    /// Whether the backend can export password-protected key backups.
    pub async fn supports_key_backup(&self) -> Result<bool> {
        expect_response!(self.call(Request::SupportsKeyBackup).await?, Response::BackupSupported(b) => b)
    }

    /// Daemon and token health.
    pub async fn health_check(&self) -> Result<HealthStatus> {
        expect_response!(self.call(Request::HealthCheck).await?, Response::Health(h) => h)
    }

    /// Operation counters and latencies.
    pub async fn metrics(&self) -> Result<MetricsSnapshot> {
        expect_response!(self.call(Request::GetMetrics).await?, Response::Metrics(m) => m)
    }
}

/// Names a response without printing its contents (which may be secret).
pub(crate) fn describe(response: &Response) -> &'static str {
    match response {
        Response::Hello { .. } => "Hello",
        Response::Pong => "Pong",
        Response::Random(_) => "Random",
        Response::KeyGenerated(_) => "KeyGenerated",
        Response::Keys(_) => "Keys",
        Response::Ciphertext(_) => "Ciphertext",
        Response::Plaintext(_) => "Plaintext",
        Response::KeyDestroyed => "KeyDestroyed",
        Response::BackupSupported(_) => "BackupSupported",
        Response::Health(_) => "Health",
        Response::Metrics(_) => "Metrics",
        Response::Batch(_) => "Batch",
        Response::KeyBackup(_) => "KeyBackup",
        _ => "a newer response kind",
    }
}
