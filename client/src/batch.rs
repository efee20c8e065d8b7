//! Explicit batches: many operations in one frame, each answered on its own.

use harpocrates_protocol::{KeyAttributes, Request, Response};

use crate::client::Client;

impl Client {
    /// Starts an explicit batch: many operations in one frame, answered together.
    pub fn batch(&self) -> BatchBuilder<'_> {
        BatchBuilder::new(self)
    }
}
use crate::error::{Error, Result};

/// Collects operations to send as one `Batch` frame. Build with [`Client::batch`].
///
/// ```no_run
/// # async fn demo(client: harpocrates_client::Client) -> harpocrates_client::Result<()> {
/// let answers = client
///     .batch()
///     .encrypt("k", b"one", None)
///     .encrypt("k", b"two", None)
///     .generate_random(16)
///     .send()
///     .await?;
/// assert_eq!(answers.len(), 3);
/// # Ok(()) }
/// ```
#[must_use = "a batch does nothing until sent"]
pub struct BatchBuilder<'c> {
    client: &'c Client,
    requests: Vec<Request>,
}

impl<'c> BatchBuilder<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client, requests: Vec::new() }
    }

    /// Adds any request (not `Hello` or another `Batch`: those fail on their own).
    pub fn push(mut self, request: Request) -> Self {
        self.requests.push(request);
        self
    }

    /// Adds an encryption.
    pub fn encrypt(self, key: &str, plaintext: &[u8], aad: Option<&[u8]>) -> Self {
        self.push(Request::Encrypt {
            key: key.into(),
            plaintext: plaintext.into(),
            aad: aad.map(<[u8]>::to_vec),
        })
    }

    /// Adds a decryption.
    pub fn decrypt(self, key: &str, ciphertext: &[u8], aad: Option<&[u8]>) -> Self {
        self.push(Request::Decrypt {
            key: key.into(),
            ciphertext: ciphertext.to_vec(),
            aad: aad.map(<[u8]>::to_vec),
        })
    }

    /// Adds a key generation.
    pub fn generate_key(self, label: &str, attributes: KeyAttributes) -> Self {
        self.push(Request::GenerateKeyWithAttributes { label: label.into(), attributes })
    }

    /// Adds a key destruction.
    pub fn destroy_key(self, key: &str) -> Self {
        self.push(Request::DestroyKey { key: key.into() })
    }

    /// Adds a random-bytes request.
    pub fn generate_random(self, len: u32) -> Self {
        self.push(Request::GenerateRandom { len })
    }

    /// Operations so far.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Sends the batch. The outer `Result` fails only when the batch as a whole could not
    /// be carried (connection, size, busy); each element then succeeds or fails alone.
    pub async fn send(self) -> Result<Vec<Result<Response>>> {
        match self.client.call(Request::Batch(self.requests)).await? {
            Response::Batch(answers) => {
                Ok(answers.into_iter().map(|a| a.map_err(Error::from)).collect())
            }
            other => Err(Error::Protocol(format!(
                "a batch was answered with {}",
                crate::error::describe(&other)
            ))),
        }
    }
}
