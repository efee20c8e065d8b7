//! The operation table: for every kind of [`Request`], its stable name, its class, and the
//! key or KEK it touches.
//!
//! This is the one place a request kind is described. The daemon derives routing,
//! metrics, access control and audit from it, and [`Request::op`] is an exhaustive match
//! inside this crate, so a new request variant that is not given an [`Op`] (and so a name
//! and a class) does not compile.

use crate::Request;

/// What an operation does with key material: the unit a policy grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpClass {
    /// Always allowed: the handshake, liveness, capabilities.
    Public,
    /// Uses a key that stays in the daemon: encrypt, decrypt, envelope, rewrap, random,
    /// listing what the caller may use.
    Use,
    /// A data key leaves the daemon: derive, generate or unwrap a data key.
    Export,
    /// Changes what keys exist: generate, destroy, backup, restore, create a KEK.
    Manage,
    /// Rotation steps and retiring KEK versions.
    Rotate,
    /// The daemon itself: health, metrics, audit.
    Admin,
}

impl OpClass {
    /// Every class, in order.
    pub const ALL: [OpClass; 6] = [
        OpClass::Public,
        OpClass::Use,
        OpClass::Export,
        OpClass::Manage,
        OpClass::Rotate,
        OpClass::Admin,
    ];

    /// Whether operations of this class change which keys exist or which version is
    /// in use (`manage`, `rotate`): their audit intent must be durable before they run.
    pub const fn changes_keys(self) -> bool {
        matches!(self, OpClass::Manage | OpClass::Rotate)
    }

    /// The class's stable name (`use`, `manage`, ...), as policies and audit records
    /// spell it.
    pub const fn name(self) -> &'static str {
        match self {
            OpClass::Public => "public",
            OpClass::Use => "use",
            OpClass::Export => "export",
            OpClass::Manage => "manage",
            OpClass::Rotate => "rotate",
            OpClass::Admin => "admin",
        }
    }
}

/// Every kind of request, without its arguments.
///
/// Deliberately not `#[non_exhaustive]`: the daemon matches on it exhaustively, so a new
/// kind cannot compile until the daemon knows where to route it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Request::Hello`].
    Hello,
    /// [`Request::Ping`].
    Ping,
    /// [`Request::GenerateRandom`].
    GenerateRandom,
    /// [`Request::GenerateKey`].
    GenerateKey,
    /// [`Request::GenerateKeyWithAttributes`].
    GenerateKeyWithAttributes,
    /// [`Request::ListKeys`].
    ListKeys,
    /// [`Request::Encrypt`].
    Encrypt,
    /// [`Request::Decrypt`].
    Decrypt,
    /// [`Request::DestroyKey`].
    DestroyKey,
    /// [`Request::SupportsKeyBackup`].
    SupportsKeyBackup,
    /// [`Request::HealthCheck`].
    HealthCheck,
    /// [`Request::GetMetrics`].
    GetMetrics,
    /// [`Request::Batch`].
    Batch,
    /// [`Request::BackupKey`].
    BackupKey,
    /// [`Request::RestoreKey`].
    RestoreKey,
    /// [`Request::GenerateKek`].
    GenerateKek,
    /// [`Request::ListKeks`].
    ListKeks,
    /// [`Request::DeriveDataKey`].
    DeriveDataKey,
    /// [`Request::GenerateDataKey`].
    GenerateDataKey,
    /// [`Request::UnwrapDataKey`].
    UnwrapDataKey,
    /// [`Request::EnvelopeEncrypt`].
    EnvelopeEncrypt,
    /// [`Request::EnvelopeDecrypt`].
    EnvelopeDecrypt,
    /// [`Request::Rewrap`].
    Rewrap,
    /// [`Request::Rotation`].
    Rotation,
    /// [`Request::RetireKekVersion`].
    RetireKekVersion,
    /// [`Request::SubscribeAudit`].
    SubscribeAudit,
    /// [`Request::EnvelopeDataKey`].
    EnvelopeDataKey,
    /// [`Request::Reload`].
    Reload,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 28] = [
        Op::Hello,
        Op::Ping,
        Op::GenerateRandom,
        Op::GenerateKey,
        Op::GenerateKeyWithAttributes,
        Op::ListKeys,
        Op::Encrypt,
        Op::Decrypt,
        Op::DestroyKey,
        Op::SupportsKeyBackup,
        Op::HealthCheck,
        Op::GetMetrics,
        Op::Batch,
        Op::BackupKey,
        Op::RestoreKey,
        Op::GenerateKek,
        Op::ListKeks,
        Op::DeriveDataKey,
        Op::GenerateDataKey,
        Op::UnwrapDataKey,
        Op::EnvelopeEncrypt,
        Op::EnvelopeDecrypt,
        Op::Rewrap,
        Op::Rotation,
        Op::RetireKekVersion,
        Op::SubscribeAudit,
        Op::EnvelopeDataKey,
        Op::Reload,
    ];

    /// The stable name used in metrics, logs and audit records.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Ping => "ping",
            Op::GenerateRandom => "generate_random",
            Op::GenerateKey => "generate_key",
            Op::GenerateKeyWithAttributes => "generate_key_with_attributes",
            Op::ListKeys => "list_keys",
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::DestroyKey => "destroy_key",
            Op::SupportsKeyBackup => "supports_key_backup",
            Op::HealthCheck => "health_check",
            Op::GetMetrics => "get_metrics",
            Op::Batch => "batch",
            Op::BackupKey => "backup_key",
            Op::RestoreKey => "restore_key",
            Op::GenerateKek => "generate_kek",
            Op::ListKeks => "list_keks",
            Op::DeriveDataKey => "derive_data_key",
            Op::GenerateDataKey => "generate_data_key",
            Op::UnwrapDataKey => "unwrap_data_key",
            Op::EnvelopeEncrypt => "envelope_encrypt",
            Op::EnvelopeDecrypt => "envelope_decrypt",
            Op::Rewrap => "rewrap",
            Op::Rotation => "rotation",
            Op::RetireKekVersion => "retire_kek_version",
            Op::SubscribeAudit => "subscribe_audit",
            Op::EnvelopeDataKey => "envelope_data_key",
            Op::Reload => "reload",
        }
    }

    /// What the operation does with key material.
    pub const fn class(self) -> OpClass {
        match self {
            // A batch is checked element by element; the frame itself asks for nothing.
            Op::Hello | Op::Ping | Op::SupportsKeyBackup | Op::Batch => OpClass::Public,
            Op::GenerateRandom
            | Op::ListKeys
            | Op::Encrypt
            | Op::Decrypt
            | Op::ListKeks
            | Op::EnvelopeEncrypt
            | Op::EnvelopeDecrypt
            | Op::Rewrap => OpClass::Use,
            Op::DeriveDataKey | Op::GenerateDataKey | Op::UnwrapDataKey | Op::EnvelopeDataKey => {
                OpClass::Export
            }
            Op::GenerateKey
            | Op::GenerateKeyWithAttributes
            | Op::DestroyKey
            | Op::BackupKey
            | Op::RestoreKey
            | Op::GenerateKek => OpClass::Manage,
            Op::Rotation | Op::RetireKekVersion => OpClass::Rotate,
            Op::HealthCheck | Op::GetMetrics | Op::SubscribeAudit | Op::Reload => OpClass::Admin,
        }
    }
}

/// The key or KEK a request names, as far as its arguments say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// No key: liveness, capabilities, listings, random bytes, batches.
    None,
    /// A token key, by name.
    Key(&'a str),
    /// A KEK, by name.
    Kek(&'a str),
    /// A KEK named inside a ciphertext or wrapped key, known only once it is parsed.
    InCiphertext,
}

impl Request {
    /// This request's kind.
    pub fn op(&self) -> Op {
        match self {
            Request::Hello { .. } => Op::Hello,
            Request::Ping => Op::Ping,
            Request::GenerateRandom { .. } => Op::GenerateRandom,
            Request::GenerateKey { .. } => Op::GenerateKey,
            Request::GenerateKeyWithAttributes { .. } => Op::GenerateKeyWithAttributes,
            Request::ListKeys => Op::ListKeys,
            Request::Encrypt { .. } => Op::Encrypt,
            Request::Decrypt { .. } => Op::Decrypt,
            Request::DestroyKey { .. } => Op::DestroyKey,
            Request::SupportsKeyBackup => Op::SupportsKeyBackup,
            Request::HealthCheck => Op::HealthCheck,
            Request::GetMetrics => Op::GetMetrics,
            Request::Batch(_) => Op::Batch,
            Request::BackupKey { .. } => Op::BackupKey,
            Request::RestoreKey { .. } => Op::RestoreKey,
            Request::GenerateKek { .. } => Op::GenerateKek,
            Request::ListKeks => Op::ListKeks,
            Request::DeriveDataKey { .. } => Op::DeriveDataKey,
            Request::GenerateDataKey { .. } => Op::GenerateDataKey,
            Request::UnwrapDataKey { .. } => Op::UnwrapDataKey,
            Request::EnvelopeEncrypt { .. } => Op::EnvelopeEncrypt,
            Request::EnvelopeDecrypt { .. } => Op::EnvelopeDecrypt,
            Request::Rewrap { .. } => Op::Rewrap,
            Request::Rotation { .. } => Op::Rotation,
            Request::RetireKekVersion { .. } => Op::RetireKekVersion,
            Request::SubscribeAudit => Op::SubscribeAudit,
            Request::EnvelopeDataKey { .. } => Op::EnvelopeDataKey,
            Request::Reload => Op::Reload,
        }
    }

    /// The operation's stable name (metrics, logs, audit).
    pub fn op_name(&self) -> &'static str {
        self.op().name()
    }

    /// The key or KEK this request names.
    pub fn target(&self) -> Target<'_> {
        match self {
            Request::GenerateKey { label, .. }
            | Request::GenerateKeyWithAttributes { label, .. }
            | Request::RestoreKey { label, .. } => Target::Key(label),
            Request::Encrypt { key, .. }
            | Request::Decrypt { key, .. }
            | Request::DestroyKey { key }
            | Request::BackupKey { key, .. } => Target::Key(key.as_str()),
            Request::GenerateKek { name } => Target::Kek(name),
            Request::DeriveDataKey { kek, .. }
            | Request::EnvelopeDataKey { kek, .. }
            | Request::GenerateDataKey { kek }
            | Request::EnvelopeEncrypt { kek, .. }
            | Request::Rotation { kek, .. }
            | Request::RetireKekVersion { kek, .. } => Target::Kek(kek),
            Request::UnwrapDataKey { .. }
            | Request::EnvelopeDecrypt { .. }
            | Request::Rewrap { .. } => Target::InCiphertext,
            Request::Hello { .. }
            | Request::Ping
            | Request::GenerateRandom { .. }
            | Request::ListKeys
            | Request::SupportsKeyBackup
            | Request::HealthCheck
            | Request::GetMetrics
            | Request::SubscribeAudit
            | Request::Reload
            | Request::Batch(_)
            | Request::ListKeks => Target::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_listed_once_with_a_unique_name() {
        let mut names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Op::ALL.len());
    }

    #[test]
    fn the_classes_are_the_documented_ones() {
        use OpClass::*;
        let class = |op: Op| op.class();
        assert_eq!(class(Op::Hello), Public);
        assert_eq!(class(Op::Ping), Public);
        assert_eq!(class(Op::Encrypt), Use);
        assert_eq!(class(Op::EnvelopeEncrypt), Use);
        assert_eq!(class(Op::GenerateRandom), Use);
        // A data key leaving the daemon is its own right, apart from envelope use.
        assert_eq!(class(Op::DeriveDataKey), Export);
        assert_eq!(class(Op::UnwrapDataKey), Export);
        assert_eq!(class(Op::DestroyKey), Manage);
        assert_eq!(class(Op::GenerateKek), Manage);
        assert_eq!(class(Op::Rotation), Rotate);
        assert_eq!(class(Op::RetireKekVersion), Rotate);
        assert_eq!(class(Op::GetMetrics), Admin);
        for c in OpClass::ALL {
            assert!(Op::ALL.iter().any(|o| o.class() == c), "{c:?} unused");
        }
    }

    #[test]
    fn targets_name_the_key_or_kek() {
        let enc =
            Request::Encrypt { key: "orders".into(), plaintext: Vec::new().into(), aad: None };
        assert_eq!(enc.target(), Target::Key("orders"));
        assert_eq!(enc.op(), Op::Encrypt);
        assert_eq!(enc.op_name(), "encrypt");
        let derive = Request::DeriveDataKey { kek: "k".into(), context: Vec::new(), len: 32 };
        assert_eq!(derive.target(), Target::Kek("k"));
        assert_eq!(Request::Ping.target(), Target::None);
        let unwrap = Request::UnwrapDataKey { wrapped: Vec::new() };
        assert_eq!(unwrap.target(), Target::InCiphertext);
    }
}
