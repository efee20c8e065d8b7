//! Admission: what a request names, whether its caller may ask for it, and whether its
//! arguments are in range — decided before any work is queued.
//!
//! The policy decides on names only, never on whether a key exists, so a refused
//! request for a missing key and one for an existing key get the same answer.

use std::sync::Arc;

use harpocrates_protocol::{ErrorCode, Op, OpClass, Request, Target, WireError};

use crate::formats::backup::MAX_BACKUP_LEN;
use crate::keys::envelope;
use crate::keys::manager::{WRAPPED_V1, parse_wrapped};
use crate::keys::name::{MAX_LABEL_LEN, validate_label};
use crate::policy::Grants;

/// Longest derivation context accepted, bytes.
pub const MAX_CONTEXT_LEN: usize = 4096;

/// What one request (or batch element) is about: the names its audit record and its
/// access decision use.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The operation.
    pub op: Op,
    /// The token key named.
    pub key: Option<Arc<str>>,
    /// The KEK named, by the request or inside its ciphertext.
    pub kek: Option<Arc<str>>,
    /// The KEK version, when the ciphertext says.
    pub version: Option<u32>,
    /// The index in its batch, for batch elements.
    pub element: Option<u32>,
    /// The request named a KEK inside bytes that do not parse.
    unparsed: bool,
}

impl Subject {
    /// What `request` names; for ciphertexts, the KEK their header names.
    pub fn of(request: &Request, element: Option<u32>) -> Self {
        let mut s = Subject {
            op: request.op(),
            key: None,
            kek: None,
            version: None,
            element,
            unparsed: false,
        };
        match request.target() {
            Target::None => {}
            Target::Key(name) => s.key = Some(recorded(name)),
            Target::Kek(name) => {
                s.kek = Some(recorded(name));
                if let Request::RetireKekVersion { version, .. } = request {
                    s.version = Some(*version);
                }
            }
            Target::InCiphertext => match named_kek(request) {
                Some((name, version)) => {
                    s.kek = Some(name);
                    s.version = Some(version);
                }
                None => s.unparsed = true,
            },
        }
        s
    }

    fn target(&self) -> Target<'_> {
        match (&self.key, &self.kek) {
            (Some(key), _) => Target::Key(key),
            (None, Some(kek)) => Target::Kek(kek),
            (None, None) if self.unparsed => Target::InCiphertext,
            (None, None) => Target::None,
        }
    }
}

/// A name as records keep it: a name too long to be valid (refused later anyway) is cut,
/// so a hostile request cannot make a megabyte-long audit line.
fn recorded(name: &str) -> Arc<str> {
    if name.len() <= MAX_LABEL_LEN {
        return name.into();
    }
    let mut end = MAX_LABEL_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...(cut from {} bytes)", &name[..end], name.len()).into()
}

/// The KEK a ciphertext or wrapped data key names in its header.
fn named_kek(request: &Request) -> Option<(Arc<str>, u32)> {
    let wrapped = |w: &[u8]| parse_wrapped(w).ok().map(|(id, _)| (id.name.into(), id.version));
    match request {
        Request::UnwrapDataKey { wrapped: w } => wrapped(w),
        // A rewrap takes either form, told apart by the first byte.
        Request::EnvelopeDecrypt { ciphertext, .. } | Request::Rewrap { ciphertext, .. }
            if ciphertext.first() == Some(&WRAPPED_V1) =>
        {
            wrapped(ciphertext)
        }
        Request::EnvelopeDecrypt { ciphertext, .. } | Request::Rewrap { ciphertext, .. } => {
            envelope::kek_named(ciphertext).ok().map(|(name, version)| (name.into(), version))
        }
        _ => None,
    }
}

/// Checks the caller's right, then the arguments.
pub fn admit(request: &Request, subject: &Subject, grants: &Grants<'_>) -> Result<(), WireError> {
    let class = subject.op.class();
    let allowed = match subject.op {
        // A listing is filtered to the names the caller has any right on, so anyone with
        // a right on some key (or KEK) may list: an operator who may only rotate must
        // still find the KEKs to rotate.
        Op::ListKeys | Op::ListKeks => {
            [OpClass::Use, OpClass::Export, OpClass::Manage, OpClass::Rotate]
                .into_iter()
                .any(|c| grants.allows(c, Target::None))
        }
        _ => grants.allows(class, subject.target()),
    };
    if !allowed {
        return Err(denied(subject, class));
    }
    validate(request)
}

/// The refusal: names the operation and what was asked for, nothing about what exists.
pub fn denied(subject: &Subject, class: OpClass) -> WireError {
    let what = match subject.target() {
        Target::Key(k) => format!(" on key '{}'", k.escape_debug()),
        Target::Kek(k) => format!(" on KEK '{}'", k.escape_debug()),
        Target::InCiphertext => " on the KEK of this ciphertext".to_owned(),
        Target::None => String::new(),
    };
    WireError::new(
        ErrorCode::PermissionDenied,
        format!(
            "'{}' ({} access){what} is not granted to this caller",
            subject.op.name(),
            class.name()
        ),
    )
}

fn context_size(context: &[u8]) -> Result<(), WireError> {
    if context.len() > MAX_CONTEXT_LEN {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("a context of {} bytes; the limit is {MAX_CONTEXT_LEN}", context.len()),
        ));
    }
    Ok(())
}

/// Checks the arguments of an operation before it is queued.
pub fn validate(request: &Request) -> Result<(), WireError> {
    use harpocrates_protocol::MAX_RANDOM_LEN;
    let bad = |m: String| Err(WireError::new(ErrorCode::InvalidRequest, m));
    let label =
        |l: &str| validate_label(l).map_err(|m| WireError::new(ErrorCode::InvalidRequest, m));
    let size = |bits: u32| match bits {
        128 | 192 | 256 => Ok(()),
        other => bad(format!("AES keys are 128, 192 or 256 bits, not {other}")),
    };
    match request {
        Request::GenerateRandom { len } if *len > MAX_RANDOM_LEN => {
            bad(format!("{len} random bytes requested; the limit is {MAX_RANDOM_LEN}"))
        }
        Request::GenerateKey { label: l, size_bits } => label(l).and_then(|()| size(*size_bits)),
        Request::GenerateKeyWithAttributes { label: l, attributes } => {
            label(l).and_then(|()| size(attributes.size_bits))
        }
        Request::Encrypt { key, .. }
        | Request::Decrypt { key, .. }
        | Request::DestroyKey { key }
        | Request::BackupKey { key, .. } => label(key.as_str()),
        Request::RestoreKey { label: l, backup, .. } if backup.len() > MAX_BACKUP_LEN => label(l)
            .and_then(|()| bad(format!("a backup of {} bytes is not one of ours", backup.len()))),
        Request::RestoreKey { label: l, .. } => label(l),
        Request::GenerateKek { name: kek }
        | Request::GenerateDataKey { kek }
        | Request::Rotation { kek, .. }
        | Request::RetireKekVersion { kek, .. } => label(kek),
        Request::DeriveDataKey { kek, context, len } => label(kek).and_then(|()| {
            if !(16..=64).contains(len) {
                return bad(format!("data keys are 16 to 64 bytes, not {len}"));
            }
            context_size(context)
        }),
        Request::EnvelopeEncrypt { kek, context, .. }
        | Request::EnvelopeDataKey { kek, context, .. } => {
            label(kek).and_then(|()| context_size(context))
        }
        Request::EnvelopeDecrypt { context, .. } | Request::Rewrap { context, .. } => {
            context_size(context)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harpocrates_protocol::{KeyAttributes, MAX_RANDOM_LEN};

    #[test]
    fn validation_refuses_out_of_range_arguments() {
        let refused = [
            Request::GenerateRandom { len: MAX_RANDOM_LEN + 1 },
            Request::GenerateKey { label: "ok".into(), size_bits: 512 },
            Request::GenerateKey { label: "bad label".into(), size_bits: 256 },
            Request::GenerateKeyWithAttributes {
                label: "ok".into(),
                attributes: KeyAttributes::aes(100),
            },
            Request::Encrypt { key: "".into(), plaintext: Vec::new().into(), aad: None },
            Request::DestroyKey { key: "x\n".into() },
        ];
        for r in refused {
            let err = validate(&r).expect_err(r.op_name());
            assert_eq!(err.code, ErrorCode::InvalidRequest);
        }
        assert_eq!(validate(&Request::GenerateRandom { len: MAX_RANDOM_LEN }), Ok(()));
        assert_eq!(validate(&Request::GenerateKey { label: "k".into(), size_bits: 192 }), Ok(()));
    }

    #[test]
    fn a_caller_with_only_rotate_rights_may_list_but_not_use() {
        use crate::policy::{Caller, Policy, raw::RawRule};
        let rule = RawRule {
            uids: vec![4242],
            keks: vec!["pay-*".into()],
            allow: vec!["rotate".into()],
            ..RawRule::default()
        };
        let policy = Policy::new(&[rule], std::path::Path::new("t.toml"), &[0]).expect("policy");
        let grants = policy.grants(&Caller { uid: 4242, gid: 4242, groups: &[] });
        let check = |r: Request| admit(&r, &Subject::of(&r, None), &grants).map_err(|e| e.code);
        assert_eq!(check(Request::ListKeks), Ok(()));
        assert_eq!(check(Request::ListKeys), Ok(()), "filtered to nothing, but allowed");
        let rotate = Request::Rotation {
            kek: "pay-1".into(),
            step: harpocrates_protocol::RotationStep::Status,
        };
        assert_eq!(check(rotate), Ok(()));
        assert_eq!(check(Request::GenerateRandom { len: 8 }), Err(ErrorCode::PermissionDenied));
        let seal = Request::EnvelopeEncrypt {
            kek: "pay-1".into(),
            context: vec![],
            plaintext: vec![].into(),
            aad: None,
        };
        assert_eq!(check(seal), Err(ErrorCode::PermissionDenied));
        let stranger = policy.grants(&Caller { uid: 7, gid: 7, groups: &[] });
        let r = Request::ListKeks;
        assert_eq!(
            admit(&r, &Subject::of(&r, None), &stranger).map_err(|e| e.code),
            Err(ErrorCode::PermissionDenied)
        );
    }

    #[test]
    fn the_subject_names_the_key_or_the_kek_inside_a_ciphertext() {
        let s = Subject::of(&Request::DestroyKey { key: "orders".into() }, Some(3));
        assert_eq!((s.op, s.key.as_deref(), s.element), (Op::DestroyKey, Some("orders"), Some(3)));
        assert_eq!(s.target(), Target::Key("orders"));
        let long = Subject::of(&Request::DestroyKey { key: "é".repeat(100_000).into() }, None);
        assert!(
            long.key
                .as_deref()
                .is_some_and(|k| k.len() < 200 && k.ends_with("(cut from 200000 bytes)"))
        );
        let junk = Request::EnvelopeDecrypt { context: vec![], ciphertext: vec![9; 40], aad: None };
        let s = Subject::of(&junk, None);
        assert_eq!((s.kek.as_deref(), s.target()), (None, Target::InCiphertext));
        let refusal =
            denied(&Subject::of(&Request::DestroyKey { key: "a".into() }, None), OpClass::Manage);
        assert_eq!(refusal.code, ErrorCode::PermissionDenied);
        assert!(
            refusal.message.contains("'destroy_key' (manage access) on key 'a'"),
            "{}",
            refusal.message
        );
    }
}
