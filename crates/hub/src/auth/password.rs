//! Password hashing: Argon2id (RFC 9106), PHC strings with a random 16-byte salt.
//!
//! Parameters for new hashes come from the configuration; the defaults are OWASP's
//! recommendation (m = 19 MiB, t = 2, p = 1). Verification reads the parameters stored in
//! each hash, so raising the cost later keeps old hashes working. Hashing runs on the
//! blocking pool: it is deliberately slow (tens of milliseconds) and must not stall the
//! async workers.

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A real hash of a random password at the current parameters, verified against when
    /// the account does not exist so that a failed login costs the same time either way.
    decoy: Arc<String>,
    /// Hashes running at once: each takes `m` KiB, so this bounds their memory.
    permits: Arc<Semaphore>,
}

/// Too many hashes are running; the caller answers 503 and the client retries.
#[derive(Debug, thiserror::Error)]
#[error("password hashing is saturated")]
pub struct Busy;

/// Longest a request waits for a hashing slot.
const WAIT_FOR_SLOT: Duration = Duration::from_secs(5);

/// Shortest and longest password accepted for new passwords.
pub const MIN_LEN: usize = 12;
pub const MAX_LEN: usize = 1024;

impl Passwords {
    /// Computes the decoy hash now (one hash at the configured cost).
    pub fn new(memory_kib: u32, iterations: u32) -> Passwords {
        let params = Params::new(memory_kib, iterations, 1, None).unwrap_or(Params::DEFAULT);
        let random: [u8; 32] = rand::random();
        let decoy = hasher(&params)
            .hash_password(&random)
            .map(|h| h.to_string())
            .unwrap_or_default();
        let slots = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2);
        Passwords {
            params,
            decoy: Arc::new(decoy),
            permits: Arc::new(Semaphore::new(slots)),
        }
    }

    fn hasher(&self) -> Argon2<'static> {
        hasher(&self.params)
    }

    /// Whether `hash` was made with other parameters than new hashes use (then it is worth
    /// re-hashing the password at the next successful login).
    pub fn is_outdated(&self, hash: &str) -> bool {
        let current = format!(
            "m={},t={},p={}",
            self.params.m_cost(),
            self.params.t_cost(),
            self.params.p_cost()
        );
        !hash.starts_with("$argon2id$v=19$") || hash.split('$').nth(3) != Some(current.as_str())
    }

    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Busy> {
        tokio::time::timeout(WAIT_FOR_SLOT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)
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
        let permit = self.slot().await.map_err(|e| e.to_string())?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
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
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Busy> {
        let permit = self.slot().await?;
        let this = self.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let (hash, real) = match hash {
                Some(h) => (h, true),
                None => (this.decoy.to_string(), false),
            };
            let ok = this
                .hasher()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok();
            ok && real
        })
        .await
        .unwrap_or(false))
    }
}

fn hasher(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_carry_their_parameters() {
        let p = Passwords::new(1024, 1);
        let hash = p.hash("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
        let check = |p: &Passwords, pw: &str, h: Option<String>| {
            let (p, pw) = (p.clone(), pw.to_string());
            async move { p.verify(pw, h).await.unwrap() }
        };
        assert!(check(&p, "correct horse battery", Some(hash.clone())).await);
        assert!(!check(&p, "wrong horse battery", Some(hash.clone())).await);
        assert!(!p.is_outdated(&hash));
        // A hasher with other parameters still verifies old hashes, and knows them old.
        let stronger = Passwords::new(2048, 2);
        assert!(check(&stronger, "correct horse battery", Some(hash.clone())).await);
        assert!(stronger.is_outdated(&hash));
        // No hash: never matches (nobody knows the decoy's password).
        assert!(!check(&p, "anything", None).await);
    }

    #[test]
    fn new_passwords_need_twelve_characters() {
        assert!(Passwords::check_new("short").is_err());
        assert!(Passwords::check_new("twelve chars").is_ok());
        assert!(Passwords::check_new(&"x".repeat(2000)).is_err());
    }
}
