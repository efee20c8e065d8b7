//! The hot path's token calls, made straight through the module's function list.
//!
//! cryptoki's `Session::encrypt` and `Session::decrypt` first call `C_Encrypt` with no
//! output buffer to learn the length, then again to do the work. For AES-GCM the length
//! is known in advance (plaintext + tag on the way in, ciphertext − tag on the way out),
//! so that query is a wasted round trip — on a network HSM, a wasted network round trip.
//! These functions make exactly one `C_EncryptInit` and one `C_Encrypt` (or the decrypt
//! pair) per operation, which is the fewest a PKCS#11 caller can make.
//!
//! The function pointers come from the module's own `C_GetFunctionList`, on a second
//! handle to the library cryptoki already loaded (the dynamic loader shares one copy), so
//! they reach the same initialised module state and the same sessions.

use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki_sys::{
    CK_C_Decrypt, CK_C_DecryptInit, CK_C_Encrypt, CK_C_EncryptInit, CK_FUNCTION_LIST, CK_MECHANISM,
    CK_RV, CK_ULONG, CKR_BUFFER_TOO_SMALL,
};

/// GCM tag length in bits, as the mechanism parameter wants it.
const TAG_BITS: u64 = 128;
/// GCM tag length in bytes.
const TAG_LEN: usize = 16;

/// The four entry points the hot path uses, and the library handle that keeps them valid.
pub struct RawCalls {
    encrypt_init: CK_C_EncryptInit,
    encrypt: CK_C_Encrypt,
    decrypt_init: CK_C_DecryptInit,
    decrypt: CK_C_Decrypt,
    /// Held so the pointers above stay valid for as long as this lives.
    _library: cryptoki_sys::Pkcs11,
}

impl std::fmt::Debug for RawCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCalls").finish_non_exhaustive()
    }
}

impl RawCalls {
    /// Opens `module` (already loaded by cryptoki) and reads its function list.
    pub fn load(module: &Path) -> Result<Self, String> {
        // SAFETY: the module is a PKCS#11 library cryptoki has already loaded from this same
        // path, so loading it again runs no new initialisers; `C_GetFunctionList` only
        // fills in a pointer to the module's static function table.
        let library = unsafe { cryptoki_sys::Pkcs11::new(module) }
            .map_err(|e| format!("cannot load {}: {e}", module.display()))?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: as above; `list` is a valid out-pointer.
        let rv = unsafe { library.C_GetFunctionList(&mut list) };
        if rv != 0 || list.is_null() {
            return Err(format!("C_GetFunctionList of {} failed ({rv:#x})", module.display()));
        }
        // SAFETY: the module returned a non-null pointer to its function table, which lives
        // as long as the library stays loaded (we hold it). The entries are copied out.
        let table = unsafe { &*list };
        let calls = Self {
            encrypt_init: table.C_EncryptInit,
            encrypt: table.C_Encrypt,
            decrypt_init: table.C_DecryptInit,
            decrypt: table.C_Decrypt,
            _library: library,
        };
        if calls.encrypt_init.is_none()
            || calls.encrypt.is_none()
            || calls.decrypt_init.is_none()
            || calls.decrypt.is_none()
        {
            return Err(format!("{} lacks C_Encrypt or C_Decrypt", module.display()));
        }
        Ok(calls)
    }

    /// AES-GCM encryption of `plaintext` under `key` with the caller's `iv`, appending
    /// ciphertext and tag to `out`: one `C_EncryptInit`, one `C_Encrypt`.
    pub fn gcm_encrypt(
        &self,
        session: &Session,
        key: ObjectHandle,
        iv: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CkError> {
        let mut iv = *iv;
        let mechanism = Mechanism::AesGcm(GcmParams::new(&mut iv, aad, TAG_BITS.into())?);
        let mut raw = CK_MECHANISM::from(&mechanism);
        let init = self.encrypt_init.ok_or(CkError::NullFunctionPointer)?;
        let call = self.encrypt.ok_or(CkError::NullFunctionPointer)?;
        // SAFETY: the session and key handles are live (the caller owns the session); the
        // mechanism and its parameters outlive the call.
        check(unsafe { init(session.handle(), &mut raw, key.handle()) }, Function::EncryptInit)?;
        single_call(out, plaintext, plaintext.len() + TAG_LEN, Function::Encrypt, |i, o, ol| {
            // SAFETY: `i`/`o` point to buffers of the lengths passed alongside; an
            // operation was initialised on this session just above.
            unsafe { call(session.handle(), i, ulong(plaintext.len()), o, ol) }
        })
    }

    /// AES-GCM decryption of `sealed` (ciphertext then tag), appending the plaintext to
    /// `out`: one `C_DecryptInit`, one `C_Decrypt`.
    pub fn gcm_decrypt(
        &self,
        session: &Session,
        key: ObjectHandle,
        iv: &[u8; 12],
        aad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CkError> {
        let mut iv = *iv;
        let mechanism = Mechanism::AesGcm(GcmParams::new(&mut iv, aad, TAG_BITS.into())?);
        let mut raw = CK_MECHANISM::from(&mechanism);
        let init = self.decrypt_init.ok_or(CkError::NullFunctionPointer)?;
        let call = self.decrypt.ok_or(CkError::NullFunctionPointer)?;
        // SAFETY: as in `gcm_encrypt`.
        check(unsafe { init(session.handle(), &mut raw, key.handle()) }, Function::DecryptInit)?;
        // The plaintext is the input less the tag, but some modules (SoftHSM2) insist on
        // room for the whole input before they check the tag.
        single_call(out, sealed, sealed.len(), Function::Decrypt, |i, o, ol| {
            // SAFETY: as in `gcm_encrypt`.
            unsafe { call(session.handle(), i, ulong(sealed.len()), o, ol) }
        })
    }
}

fn ulong(n: usize) -> CK_ULONG {
    n as CK_ULONG
}

fn check(rv: CK_RV, function: Function) -> Result<(), CkError> {
    Rv::from(rv).into_result(function)
}

/// Runs a single-part call into `out`'s spare capacity, sized `expected`. A module that
/// wants more room says `CKR_BUFFER_TOO_SMALL`, which leaves the operation active (PKCS#11
/// §5.2), so it is asked once more with the size it named.
fn single_call(
    out: &mut Vec<u8>,
    input: &[u8],
    expected: usize,
    function: Function,
    call: impl Fn(*mut u8, *mut u8, *mut CK_ULONG) -> CK_RV,
) -> Result<(), CkError> {
    let start = out.len();
    let mut room = expected.max(1);
    for _ in 0..2 {
        out.resize(start + room, 0);
        let mut written = ulong(room);
        let rv = call(input.as_ptr().cast_mut(), out[start..].as_mut_ptr(), &mut written);
        if rv == CKR_BUFFER_TOO_SMALL && (written as usize) > room {
            room = written as usize;
            continue;
        }
        let result = check(rv, function);
        out.truncate(if result.is_ok() { start + (written as usize).min(room) } else { start });
        return result;
    }
    out.truncate(start);
    check(CKR_BUFFER_TOO_SMALL, function)
}
