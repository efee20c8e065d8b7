//! What `bench` can drive, and how each operation is set up and called.
//!
//! **Extension point.** An operation is a variant of [`BenchOp`] (its `--op` name comes
//! from the variant, kebab-cased) plus its arm in [`prepare`]. The arm creates what the
//! operation needs through the [`Fixture`] and returns a [`Prepared`]: the call through
//! the client's typed API and, when it is one daemon request, that request for
//! `--batch`. Client-side operations use [`Prepared::client_only`].

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use harpocrates_client::{Client, Error};
use harpocrates_protocol::Request;

use super::Fixture;

/// The context of envelope and derive operations: any fixed bytes do.
pub const CONTEXT: &[u8] = b"harpoctl-bench";

/// An operation `bench` can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchOp {
    /// Round trip without touching the HSM.
    Ping,
    /// GenerateRandom of `--size` bytes.
    Random,
    /// AES-GCM encryption of `--size` bytes under `--key`.
    Encrypt,
    /// AES-GCM decryption, under `--key`, of one ciphertext made at the start.
    Decrypt,
    /// Envelope encryption in the daemon under `--kek` (`encrypt_with_context`).
    Envelope,
    /// Envelope decryption of one ciphertext made at the start.
    EnvelopeDecrypt,
    /// A 32-byte data key derived from `--kek`.
    Derive,
    /// Envelope encryption in this process with a data key fetched once
    /// (`Client::envelope`): what an application holding a local data key gets.
    LocalEnvelope,
}

impl BenchOp {
    /// The `--op` name.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map_or_else(|| format!("{self:?}").to_lowercase(), |v| v.get_name().to_owned())
    }
}

/// One call of an operation through the client: a fresh future per call.
pub type CallFn = Arc<dyn Fn(Client) -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

/// An operation ready to run.
#[derive(Clone)]
pub struct Prepared {
    /// One call through the client's API (auto-batched with the calls it overlaps).
    pub call: CallFn,
    /// The same operation as one request, for explicit batches (`--batch`); `None` when
    /// it is not a single daemon request (client-side work).
    pub request: Option<Request>,
    /// Whether `--size` applies to it (reports show no size otherwise).
    pub sized: bool,
}

impl Prepared {
    fn new(request: Request, sized: bool, call: CallFn) -> Self {
        Self { call, request: Some(request), sized }
    }

    /// An operation that cannot go into an explicit batch.
    fn client_only(sized: bool, call: CallFn) -> Self {
        Self { call, request: None, sized }
    }
}

/// Wraps an async closure as a [`CallFn`]; the result is discarded (only success counts).
fn call<F, Fut, T>(f: F) -> CallFn
where
    F: Fn(Client) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, Error>> + Send + 'static,
{
    Arc::new(move |client| {
        let fut = f(client);
        Box::pin(async move { fut.await.map(drop) })
    })
}

/// Sets `op` up (creating its key or KEK, or its one ciphertext, if needed) and says how
/// to call it.
pub async fn prepare(op: BenchOp, fx: &mut Fixture<'_>) -> Result<Prepared, Error> {
    let payload = fx.payload.clone();
    Ok(match op {
        BenchOp::LocalEnvelope => {
            let kek = fx.kek().await?;
            // One data key for the whole run, shared by every connection's calls.
            let local = fx.client.envelope(&kek, CONTEXT).await?;
            Prepared::client_only(
                true,
                call(move |_| {
                    let (local, payload) = (local.clone(), payload.clone());
                    async move { local.encrypt(&payload, None).await }
                }),
            )
        }
        BenchOp::Ping => {
            Prepared::new(Request::Ping, false, call(|c| async move { c.ping().await }))
        }
        BenchOp::Random => {
            let len = payload.len() as u32;
            Prepared::new(
                Request::GenerateRandom { len },
                true,
                call(move |c| async move { c.generate_random(len).await }),
            )
        }
        BenchOp::Encrypt => {
            let key = fx.key().await?;
            let request = Request::Encrypt {
                key: key.as_ref().into(),
                plaintext: payload.as_ref().into(),
                aad: None,
            };
            Prepared::new(
                request,
                true,
                call(move |c| {
                    let (key, payload) = (key.clone(), payload.clone());
                    async move { c.encrypt(&key, &payload, None).await }
                }),
            )
        }
        BenchOp::Decrypt => {
            let key = fx.key().await?;
            let ct: Arc<[u8]> = fx.client.encrypt(&key, &payload, None).await?.into();
            let request =
                Request::Decrypt { key: key.as_ref().into(), ciphertext: ct.to_vec(), aad: None };
            Prepared::new(
                request,
                true,
                call(move |c| {
                    let (key, ct) = (key.clone(), ct.clone());
                    async move { c.decrypt(&key, &ct, None).await }
                }),
            )
        }
        BenchOp::Envelope => {
            let kek = fx.kek().await?;
            let request = Request::EnvelopeEncrypt {
                kek: kek.to_string(),
                context: CONTEXT.to_vec(),
                plaintext: payload.as_ref().into(),
                aad: None,
            };
            Prepared::new(
                request,
                true,
                call(move |c| {
                    let (kek, payload) = (kek.clone(), payload.clone());
                    async move { c.encrypt_with_context(&kek, CONTEXT, &payload, None).await }
                }),
            )
        }
        BenchOp::EnvelopeDecrypt => {
            let kek = fx.kek().await?;
            let ct: Arc<[u8]> =
                fx.client.encrypt_with_context(&kek, CONTEXT, &payload, None).await?.into();
            let request = Request::EnvelopeDecrypt {
                context: CONTEXT.to_vec(),
                ciphertext: ct.to_vec(),
                aad: None,
            };
            Prepared::new(
                request,
                true,
                call(move |c| {
                    let ct = ct.clone();
                    async move { c.decrypt_with_context(CONTEXT, &ct, None).await }
                }),
            )
        }
        BenchOp::Derive => {
            let kek = fx.kek().await?;
            let request =
                Request::DeriveDataKey { kek: kek.to_string(), context: CONTEXT.to_vec(), len: 32 };
            Prepared::new(
                request,
                false,
                call(move |c| {
                    let kek = kek.clone();
                    async move { c.derive_data_key(&kek, CONTEXT, 32).await }
                }),
            )
        }
    })
}
