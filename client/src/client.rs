//! [`Client`]: the async client. Cheap to clone; all clones share one connection, which
//! is reopened on the next call after the daemon restarts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use harpocrates_protocol::{
    DataKey, HealthStatus, KekInfo, KeyAttributes, KeyHandle, KeyInfo, MetricsSnapshot,
    ReloadReport, Request, Response, RotationStep, SecretBytes, paths,
};

use crate::connection::{ClientOptions, Connection, ServerInfo};
use crate::error::Result;

/// Unpacks the expected response variant, or reports a protocol error.
macro_rules! expect_response {
    ($response:expr, $pattern:pat => $value:expr) => {
        match $response {
            $pattern => Ok($value),
            other => Err($crate::error::Error::Protocol(format!(
                "unexpected answer: {}",
                $crate::error::describe(&other)
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
    /// The daemon's socket.
    pub(crate) fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options connections are made with.
    pub(crate) fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

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

    /// Creates version 1 of a KEK named `name` in the token.
    pub async fn generate_kek(&self, name: &str) -> Result<KekInfo> {
        expect_response!(self.call(Request::GenerateKek { name: name.into() }).await?, Response::Kek(k) => k)
    }

    /// Every KEK, with versions and rotation state.
    pub async fn list_keks(&self) -> Result<Vec<KekInfo>> {
        expect_response!(self.call(Request::ListKeks).await?, Response::Keks(k) => k)
    }

    /// A `len`-byte data key derived from the KEK's active version and `context`
    /// (deterministic for the same version, context and length).
    pub async fn derive_data_key(&self, kek: &str, context: &[u8], len: u32) -> Result<DataKey> {
        let request = Request::DeriveDataKey { kek: kek.into(), context: context.to_vec(), len };
        expect_response!(self.call(request).await?, Response::DataKey(k) => k)
    }

    /// A random 32-byte data key, with the same key wrapped by the KEK (store `wrapped`
    /// beside your data; [`unwrap_data_key`](Self::unwrap_data_key) recovers the key).
    pub async fn generate_data_key(&self, kek: &str) -> Result<DataKey> {
        expect_response!(self.call(Request::GenerateDataKey { kek: kek.into() }).await?, Response::DataKey(k) => k)
    }

    /// Unwraps a data key made by [`generate_data_key`](Self::generate_data_key).
    pub async fn unwrap_data_key(&self, wrapped: &[u8]) -> Result<DataKey> {
        let request = Request::UnwrapDataKey { wrapped: wrapped.to_vec() };
        expect_response!(self.call(request).await?, Response::DataKey(k) => k)
    }

    /// Envelope encryption: AES-256-GCM in the daemon under the data key derived for
    /// `context` from the KEK's active version. The ciphertext names its KEK version.
    pub async fn encrypt_with_context(
        &self,
        kek: &str,
        context: &[u8],
        plaintext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let request = Request::EnvelopeEncrypt {
            kek: kek.into(),
            context: context.to_vec(),
            plaintext: plaintext.into(),
            aad: aad.map(<[u8]>::to_vec),
        };
        expect_response!(self.call(request).await?, Response::Ciphertext(c) => c)
    }

    /// Reverses [`encrypt_with_context`](Self::encrypt_with_context), after any rotation.
    pub async fn decrypt_with_context(
        &self,
        context: &[u8],
        ciphertext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<SecretBytes> {
        let request = Request::EnvelopeDecrypt {
            context: context.to_vec(),
            ciphertext: ciphertext.to_vec(),
            aad: aad.map(<[u8]>::to_vec),
        };
        expect_response!(self.call(request).await?, Response::Plaintext(p) => p)
    }

    /// Moves an envelope ciphertext (or a wrapped data key, with an empty context and no
    /// AAD) to the KEK's active version without the plaintext leaving the daemon.
    pub async fn rewrap(
        &self,
        context: &[u8],
        ciphertext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let request = Request::Rewrap {
            context: context.to_vec(),
            ciphertext: ciphertext.to_vec(),
            aad: aad.map(<[u8]>::to_vec),
        };
        expect_response!(self.call(request).await?, Response::Ciphertext(c) => c)
    }

    /// One rotation step (or `RotationStep::Status`).
    pub async fn rotate(&self, kek: &str, step: RotationStep) -> Result<KekInfo> {
        expect_response!(self.call(Request::Rotation { kek: kek.into(), step }).await?, Response::Kek(k) => k)
    }

    /// `Active(v)` → `Pending(v, v+1)`.
    pub async fn prepare_rotation(&self, kek: &str) -> Result<KekInfo> {
        self.rotate(kek, RotationStep::Prepare).await
    }

    /// Round-trips through the pending version inside the token.
    pub async fn validate_rotation(&self, kek: &str) -> Result<KekInfo> {
        self.rotate(kek, RotationStep::Validate).await
    }

    /// Makes the validated pending version active.
    pub async fn commit_rotation(&self, kek: &str) -> Result<KekInfo> {
        self.rotate(kek, RotationStep::Commit).await
    }

    /// Abandons the pending version, destroying it.
    pub async fn rollback_rotation(&self, kek: &str) -> Result<KekInfo> {
        self.rotate(kek, RotationStep::Rollback).await
    }

    /// Retires an inactive version (it stops decrypting); with `destroy`, its keys are
    /// destroyed for good.
    pub async fn retire_kek_version(
        &self,
        kek: &str,
        version: u32,
        destroy: bool,
    ) -> Result<KekInfo> {
        let request = Request::RetireKekVersion { kek: kek.into(), version, destroy };
        expect_response!(self.call(request).await?, Response::Kek(k) => k)
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
        expect_response!(self.call(Request::GetMetrics).await?, Response::Metrics(m) => *m)
    }

    /// Has the daemon re-read its configuration file and apply it (`admin` access), as
    /// SIGHUP does; a configuration that does not validate is refused with the reason,
    /// and the running one stays.
    pub async fn reload(&self) -> Result<ReloadReport> {
        expect_response!(self.call(Request::Reload).await?, Response::Reloaded(r) => r)
    }
}
