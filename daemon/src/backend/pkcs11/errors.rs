//! Every PKCS#11 return value mapped to a backend error, in one place.
//!
//! The split that matters is transient (a fresh session may succeed, so the session actor
//! retries) versus final. Some transient errors also mean the module itself lost the
//! token or its state; those ask for the library to be re-initialised.

use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};

use crate::backend::BackendError;

/// What a failed call means for the session that made it.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing to repair: the error is final for this request.
    None,
    /// Reopen the session (and log in again).
    Reopen,
    /// Finalise and re-initialise the module, then reopen.
    Reinitialize,
    /// The cached object handle is stale: look the key up again.
    Refind,
}

/// How to recover from `rv`.
pub fn recovery(rv: RvError) -> Recovery {
    use RvError::*;
    match rv {
        SessionHandleInvalid | SessionClosed | DeviceError | UserNotLoggedIn | DeviceMemory
        | SessionCount => Recovery::Reopen,
        TokenNotPresent | DeviceRemoved | CryptokiNotInitialized | TokenNotRecognized => {
            Recovery::Reinitialize
        }
        ObjectHandleInvalid | KeyHandleInvalid => Recovery::Refind,
        _ => Recovery::None,
    }
}

/// The short PKCS#11 name of a return value, as operators know it (`CKR_DEVICE_ERROR`).
pub fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Maps a cryptoki error to a backend error. `what` names the operation for messages.
pub fn map(e: Error, what: &str) -> BackendError {
    let Error::Pkcs11(rv, function) = e else {
        return BackendError::Failed(format!("{what}: {e}"));
    };
    let name = ckr_name(rv);
    let detail = format!("{what}: {name} from {function:?}");
    use RvError::*;
    match recovery(rv) {
        Recovery::Reopen | Recovery::Reinitialize => return BackendError::SessionBroken(detail),
        Recovery::Refind => return BackendError::NotFound(format!("the key is gone: {detail}")),
        Recovery::None => {}
    }
    match rv {
        EncryptedDataInvalid | EncryptedDataLenRange => BackendError::IntegrityCheckFailed,
        // SoftHSM2 up to 2.6 reports a failed GCM tag check as CKR_GENERAL_ERROR
        // (SoftHSMv2 issue #689); our only C_Decrypt is authenticated AES-GCM.
        GeneralError if matches!(function, Function::Decrypt) => BackendError::IntegrityCheckFailed,
        KeyFunctionNotPermitted
        | KeyUnextractable
        | KeyNotWrappable
        | AttributeSensitive
        | ActionProhibited => BackendError::NotPermitted(detail),
        MechanismInvalid | FunctionNotSupported | KeyTypeInconsistent | KeySizeRange => {
            BackendError::Unsupported(detail)
        }
        ArgumentsBad
        | DataLenRange
        | DataInvalid
        | MechanismParamInvalid
        | AttributeValueInvalid
        | AttributeTypeInvalid
        | TemplateIncomplete
        | TemplateInconsistent
        | WrappedKeyInvalid
        | WrappedKeyLenRange => BackendError::InvalidArgument(detail),
        PinIncorrect
        | PinInvalid
        | PinLenRange
        | PinExpired
        | PinLocked
        | UserPinNotInitialized => BackendError::NotInitialized(detail),
        _ => BackendError::Failed(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_like_the_standard() {
        assert_eq!(ckr_name(RvError::DeviceError), "CKR_DEVICE_ERROR");
        assert_eq!(ckr_name(RvError::SessionHandleInvalid), "CKR_SESSION_HANDLE_INVALID");
    }

    #[test]
    fn session_and_device_errors_are_transient() {
        for rv in [
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::DeviceError,
            RvError::DeviceRemoved,
            RvError::UserNotLoggedIn,
            RvError::TokenNotPresent,
            RvError::CryptokiNotInitialized,
        ] {
            let e = map(Error::Pkcs11(rv, Function::Encrypt), "encrypt");
            assert!(e.is_transient(), "{rv:?} must be retried");
        }
        assert_eq!(recovery(RvError::TokenNotPresent), Recovery::Reinitialize);
        assert_eq!(recovery(RvError::SessionClosed), Recovery::Reopen);
    }

    #[test]
    fn final_errors_map_to_the_right_codes() {
        use harpocrates_protocol::ErrorCode;
        let code = |rv| map(Error::Pkcs11(rv, Function::Decrypt), "decrypt").code();
        assert_eq!(code(RvError::EncryptedDataInvalid), ErrorCode::IntegrityCheckFailed);
        assert_eq!(code(RvError::KeyFunctionNotPermitted), ErrorCode::PermissionDenied);
        assert_eq!(code(RvError::MechanismInvalid), ErrorCode::Unsupported);
        assert_eq!(code(RvError::ArgumentsBad), ErrorCode::InvalidRequest);
        assert_eq!(code(RvError::PinIncorrect), ErrorCode::NotInitialized);
        assert_eq!(code(RvError::KeyHandleInvalid), ErrorCode::KeyNotFound);
        assert_eq!(
            code(RvError::GeneralError),
            ErrorCode::IntegrityCheckFailed,
            "SoftHSM2's tag failure"
        );
        let keygen = map(Error::Pkcs11(RvError::GeneralError, Function::GenerateKey), "keygen");
        assert_eq!(keygen.code(), ErrorCode::OperationFailed);
    }
}
