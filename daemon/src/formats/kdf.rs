//! Password-based key derivation (Argon2id), shared by the soft token's key store and
//! key backups.

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// Largest memory cost accepted (4 GiB), from configuration or from a store file.
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    /// Largest pass count accepted.
    pub const MAX_ITERATIONS: u32 = 64;
    /// Largest lane count accepted.
    pub const MAX_PARALLELISM: u32 = 64;

    /// Checks the costs are within Argon2's rules and our ceilings. The ceilings matter
    /// because the costs are read from the store file before it can be authenticated.
    pub fn check(&self) -> Result<(), String> {
        let ok = (1..=Self::MAX_ITERATIONS).contains(&self.iterations)
            && (1..=Self::MAX_PARALLELISM).contains(&self.parallelism)
            && u64::from(self.memory_kib) >= 8 * u64::from(self.parallelism)
            && self.memory_kib <= Self::MAX_MEMORY_KIB;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "Argon2id costs m={} KiB, t={}, p={} are outside t 1..={}, p 1..={}, 8p ≤ m ≤ {} KiB",
                self.memory_kib,
                self.iterations,
                self.parallelism,
                Self::MAX_ITERATIONS,
                Self::MAX_PARALLELISM,
                Self::MAX_MEMORY_KIB
            ))
        }
    }
}

impl Default for KdfParams {
    /// OWASP's minimum for Argon2id: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

impl KdfParams {
    /// Derives `out.len()` bytes from `secret` and `salt`. Refuses costs outside
    /// [`check`](Self::check) before doing any work.
    pub fn derive(&self, secret: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), String> {
        self.check()?;
        let params = argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(out.len()),
        )
        .map_err(|e| format!("bad Argon2 parameters: {e}"))?;
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(secret, salt, out)
            .map_err(|e| format!("key derivation failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_salted() {
        let p = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
        let (mut a, mut b, mut c) = ([0u8; 32], [0u8; 32], [0u8; 32]);
        p.derive(b"pw", b"salt-salt-salt-1", &mut a).expect("derive");
        p.derive(b"pw", b"salt-salt-salt-1", &mut b).expect("derive");
        p.derive(b"pw", b"salt-salt-salt-2", &mut c).expect("derive");
        assert_eq!(a, b);
        assert_ne!(a, c);
        let absurd = KdfParams { memory_kib: u32::MAX, ..p };
        assert!(absurd.derive(b"pw", b"salt-salt-salt-1", &mut a).is_err());
    }
}
