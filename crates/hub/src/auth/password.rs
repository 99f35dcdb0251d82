//! Password hashing: Argon2id (RFC 9106), PHC strings with a random 16-byte salt.
//!
//! Parameters for new hashes come from the configuration; the defaults are OWASP's
//! recommendation (m = 19 MiB, t = 2, p = 1). Verification reads the parameters stored in
//! each hash, so raising the cost later keeps old hashes working. Hashing runs on the
//! blocking pool: it is deliberately slow (tens of milliseconds) and must not stall the
//! async workers.

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use std::sync::{Arc, OnceLock};

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A real hash of a random password, verified against when the account does not exist
    /// so that a failed login costs the same time either way.
    decoy: Arc<OnceLock<String>>,
}

/// Shortest and longest password accepted for new passwords.
pub const MIN_LEN: usize = 12;
pub const MAX_LEN: usize = 1024;

impl Passwords {
    pub fn new(memory_kib: u32, iterations: u32) -> Passwords {
        let params = Params::new(memory_kib, iterations, 1, None).unwrap_or(Params::DEFAULT);
        Passwords {
            params,
            decoy: Arc::new(OnceLock::new()),
        }
    }

    fn hasher(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Checks a new password's length (in characters), the one rule we impose.
    pub fn check_new(password: &str) -> Result<(), String> {
        let n = password.chars().count();
        if n < MIN_LEN {
            Err(format!("password must have at least {MIN_LEN} characters"))
        } else if password.len() > MAX_LEN {
            Err(format!("password must have at most {MAX_LEN} bytes"))
        } else {
            Ok(())
        }
    }

    /// A PHC string for `password`.
    pub async fn hash(&self, password: String) -> Result<String, String> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.hasher()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| format!("cannot hash password: {e}"))
        })
        .await
        .map_err(|e| format!("hash task failed: {e}"))?
    }

    /// Whether `password` matches `hash`; with no hash (unknown account, service account)
    /// it verifies against the decoy and answers false, in the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let (hash, real) = match hash {
                Some(h) => (h, true),
                None => (this.decoy().to_string(), false),
            };
            let ok = this
                .hasher()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok();
            ok && real
        })
        .await
        .unwrap_or(false)
    }

    fn decoy(&self) -> &str {
        self.decoy.get_or_init(|| {
            let random: [u8; 32] = rand::random();
            self.hasher()
                .hash_password(&random)
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_carry_their_parameters() {
        let p = Passwords::new(1024, 1);
        let hash = p.hash("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
        assert!(
            p.verify("correct horse battery".into(), Some(hash.clone()))
                .await
        );
        assert!(
            !p.verify("wrong horse battery".into(), Some(hash.clone()))
                .await
        );
        // A hasher with other parameters still verifies old hashes.
        assert!(
            Passwords::new(2048, 2)
                .verify("correct horse battery".into(), Some(hash))
                .await
        );
        // No hash: never matches, even the decoy's own password is unknown to anyone.
        assert!(!p.verify("anything".into(), None).await);
    }

    #[test]
    fn new_passwords_need_twelve_characters() {
        assert!(Passwords::check_new("short").is_err());
        assert!(Passwords::check_new("twelve chars").is_ok());
        assert!(Passwords::check_new(&"x".repeat(2000)).is_err());
    }
}
