//! [`BlockingClient`]: the same client for code without an async runtime.

use std::path::Path;
use std::sync::Arc;

use harpocrates_protocol::{
    DataKey, HealthStatus, KekInfo, KeyAttributes, KeyInfo, MetricsSnapshot, ReloadReport, Request,
    Response, RotationStep, SecretBytes,
};

use crate::batch::BatchBuilder;
use crate::client::Client;
use crate::connection::{ClientOptions, ServerInfo};
use crate::envelope::{LocalEnvelope, LocalEnvelopeOptions};
use crate::error::{Error, Result};

/// A synchronous client. It owns a small runtime (one worker thread) that drives the
/// connection; calls from several threads share the connection and are batched together.
///
/// It behaves as [`Client`] does under the same [`ClientOptions`]: the daemon's uid is
/// checked before anything is sent, connecting plus the handshake is bounded by
/// [`ClientOptions::connect_timeout`] and each call by [`ClientOptions::request_timeout`]
/// (a call that runs out fails with [`Error::Timeout`] and leaves the connection usable).
///
/// Do not call it from inside an async runtime: use [`Client`] there.
pub struct BlockingClient {
    runtime: Arc<tokio::runtime::Runtime>,
    client: Client,
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingClient").field("client", &self.client).finish_non_exhaustive()
    }
}

impl BlockingClient {
    /// Connects to the daemon at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(path, ClientOptions::default())
    }

    /// Connects to the default socket (see [`Client::connect_default`]).
    pub fn connect_default() -> Result<Self> {
        Self::connect(harpocrates_protocol::paths::default_socket_path())
    }

    /// Connects with explicit options.
    pub fn connect_with(path: impl AsRef<Path>, options: ClientOptions) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("harpocrates-client")
            .enable_all()
            .build()
            .map_err(|e| Error::connect(path.as_ref(), &e))?;
        let client = runtime.block_on(Client::connect_with(path, options))?;
        Ok(Self { runtime: Arc::new(runtime), client })
    }

    /// The socket this client talks to.
    pub fn socket_path(&self) -> &Path {
        self.client.socket_path()
    }

    /// See [`Client::server_info`].
    pub fn server_info(&self) -> Result<ServerInfo> {
        self.runtime.block_on(self.client.server_info())
    }

    /// See [`Client::generate_kek`].
    pub fn generate_kek(&self, name: &str) -> Result<KekInfo> {
        self.runtime.block_on(self.client.generate_kek(name))
    }

    /// See [`Client::list_keks`].
    pub fn list_keks(&self) -> Result<Vec<KekInfo>> {
        self.runtime.block_on(self.client.list_keks())
    }

    /// See [`Client::derive_data_key`].
    pub fn derive_data_key(&self, kek: &str, context: &[u8], len: u32) -> Result<DataKey> {
        self.runtime.block_on(self.client.derive_data_key(kek, context, len))
    }

    /// See [`Client::generate_data_key`].
    pub fn generate_data_key(&self, kek: &str) -> Result<DataKey> {
        self.runtime.block_on(self.client.generate_data_key(kek))
    }

    /// See [`Client::unwrap_data_key`].
    pub fn unwrap_data_key(&self, wrapped: &[u8]) -> Result<DataKey> {
        self.runtime.block_on(self.client.unwrap_data_key(wrapped))
    }

    /// See [`Client::encrypt_with_context`].
    pub fn encrypt_with_context(
        &self,
        kek: &str,
        context: &[u8],
        plaintext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        self.runtime.block_on(self.client.encrypt_with_context(kek, context, plaintext, aad))
    }

    /// See [`Client::decrypt_with_context`].
    pub fn decrypt_with_context(
        &self,
        context: &[u8],
        ciphertext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<SecretBytes> {
        self.runtime.block_on(self.client.decrypt_with_context(context, ciphertext, aad))
    }

    /// See [`Client::envelope`].
    pub fn envelope(&self, kek: &str, context: &[u8]) -> Result<BlockingLocalEnvelope> {
        self.envelope_with(kek, context, LocalEnvelopeOptions::default())
    }

    /// See [`Client::envelope_with`].
    pub fn envelope_with(
        &self,
        kek: &str,
        context: &[u8],
        options: LocalEnvelopeOptions,
    ) -> Result<BlockingLocalEnvelope> {
        let inner = self.runtime.block_on(self.client.envelope_with(kek, context, options))?;
        Ok(BlockingLocalEnvelope { runtime: self.runtime.clone(), inner })
    }

    /// See [`Client::rewrap`].
    pub fn rewrap(&self, context: &[u8], ciphertext: &[u8], aad: Option<&[u8]>) -> Result<Vec<u8>> {
        self.runtime.block_on(self.client.rewrap(context, ciphertext, aad))
    }

    /// See [`Client::rotate`].
    pub fn rotate(&self, kek: &str, step: RotationStep) -> Result<KekInfo> {
        self.runtime.block_on(self.client.rotate(kek, step))
    }

    /// See [`Client::prepare_rotation`].
    pub fn prepare_rotation(&self, kek: &str) -> Result<KekInfo> {
        self.rotate(kek, RotationStep::Prepare)
    }

    /// See [`Client::validate_rotation`].
    pub fn validate_rotation(&self, kek: &str) -> Result<KekInfo> {
        self.rotate(kek, RotationStep::Validate)
    }

    /// See [`Client::commit_rotation`].
    pub fn commit_rotation(&self, kek: &str) -> Result<KekInfo> {
        self.rotate(kek, RotationStep::Commit)
    }

    /// See [`Client::rollback_rotation`].
    pub fn rollback_rotation(&self, kek: &str) -> Result<KekInfo> {
        self.rotate(kek, RotationStep::Rollback)
    }

    /// See [`Client::retire_kek_version`].
    pub fn retire_kek_version(&self, kek: &str, version: u32, destroy: bool) -> Result<KekInfo> {
        self.runtime.block_on(self.client.retire_kek_version(kek, version, destroy))
    }

    /// The async client inside, for mixing styles.
    pub fn as_async(&self) -> &Client {
        &self.client
    }

    /// See [`Client::call`].
    pub fn call(&self, request: Request) -> Result<Response> {
        self.runtime.block_on(self.client.call(request))
    }

    /// Sends an explicit batch built with `build`; see [`Client::batch`].
    pub fn batch(
        &self,
        build: impl FnOnce(BatchBuilder<'_>) -> BatchBuilder<'_>,
    ) -> Result<Vec<Result<Response>>> {
        self.runtime.block_on(build(self.client.batch()).send())
    }

    /// See [`Client::ping`].
    pub fn ping(&self) -> Result<()> {
        self.runtime.block_on(self.client.ping())
    }

    /// See [`Client::generate_random`].
    pub fn generate_random(&self, len: u32) -> Result<SecretBytes> {
        self.runtime.block_on(self.client.generate_random(len))
    }

    /// See [`Client::generate_key`].
    pub fn generate_key(&self, label: &str, size_bits: u32) -> Result<KeyInfo> {
        self.runtime.block_on(self.client.generate_key(label, size_bits))
    }

    /// See [`Client::generate_key_with_attributes`].
    pub fn generate_key_with_attributes(
        &self,
        label: &str,
        attributes: KeyAttributes,
    ) -> Result<KeyInfo> {
        self.runtime.block_on(self.client.generate_key_with_attributes(label, attributes))
    }

    /// See [`Client::list_keys`].
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.runtime.block_on(self.client.list_keys())
    }

    /// See [`Client::encrypt`].
    pub fn encrypt(&self, key: &str, plaintext: &[u8], aad: Option<&[u8]>) -> Result<Vec<u8>> {
        self.runtime.block_on(self.client.encrypt(key, plaintext, aad))
    }

    /// See [`Client::decrypt`].
    pub fn decrypt(&self, key: &str, ciphertext: &[u8], aad: Option<&[u8]>) -> Result<SecretBytes> {
        self.runtime.block_on(self.client.decrypt(key, ciphertext, aad))
    }

    /// See [`Client::destroy_key`].
    pub fn destroy_key(&self, key: &str) -> Result<()> {
        self.runtime.block_on(self.client.destroy_key(key))
    }

    /// See [`Client::backup_key`].
    pub fn backup_key(&self, key: &str, password: &[u8]) -> Result<Vec<u8>> {
        self.runtime.block_on(self.client.backup_key(key, password))
    }

    /// See [`Client::restore_key`].
    pub fn restore_key(&self, label: &str, backup: &[u8], password: &[u8]) -> Result<KeyInfo> {
        self.runtime.block_on(self.client.restore_key(label, backup, password))
    }

    /// See [`Client::supports_key_backup`].
    pub fn supports_key_backup(&self) -> Result<bool> {
        self.runtime.block_on(self.client.supports_key_backup())
    }

    /// See [`Client::health_check`].
    pub fn health_check(&self) -> Result<HealthStatus> {
        self.runtime.block_on(self.client.health_check())
    }

    /// See [`Client::metrics`].
    pub fn metrics(&self) -> Result<MetricsSnapshot> {
        self.runtime.block_on(self.client.metrics())
    }

    /// See [`Client::reload`].
    pub fn reload(&self) -> Result<ReloadReport> {
        self.runtime.block_on(self.client.reload())
    }
}

/// A [`LocalEnvelope`] for synchronous code, made by [`BlockingClient::envelope`]. Sealing
/// and opening with a key already held run on the calling thread; a refetch runs on the
/// client's runtime (which this keeps alive).
#[derive(Clone)]
pub struct BlockingLocalEnvelope {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: LocalEnvelope,
}

impl std::fmt::Debug for BlockingLocalEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BlockingLocalEnvelope").field(&self.inner).finish()
    }
}

impl BlockingLocalEnvelope {
    /// See [`LocalEnvelope::encrypt`].
    pub fn encrypt(&self, plaintext: &[u8], aad: Option<&[u8]>) -> Result<Vec<u8>> {
        match self.inner.seal_now(plaintext, aad) {
            Some(sealed) => sealed,
            None => self.runtime.block_on(self.inner.encrypt(plaintext, aad)),
        }
    }

    /// See [`LocalEnvelope::decrypt`].
    pub fn decrypt(&self, ciphertext: &[u8], aad: Option<&[u8]>) -> Result<SecretBytes> {
        match self.inner.open_now(ciphertext, aad) {
            Some(opened) => opened,
            None => self.runtime.block_on(self.inner.decrypt(ciphertext, aad)),
        }
    }

    /// See [`LocalEnvelope::is_locked`].
    pub fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    /// See [`LocalEnvelope::kek`].
    pub fn kek(&self) -> &str {
        self.inner.kek()
    }

    /// The async envelope inside (it shares the keys).
    pub fn as_async(&self) -> &LocalEnvelope {
        &self.inner
    }
}
