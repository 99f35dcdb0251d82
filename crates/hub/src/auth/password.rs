//! Password hashing: Argon2id (RFC 9106), PHC strings with a random 16-byte salt.
//!
//! Parameters for new hashes come from the configuration; the defaults are OWASP's
//! recommendation (m = 19 MiB, t = 2, p = 1). Verification reads the parameters stored in
//! each hash, so raising the cost later keeps old hashes working.
//!
//! Hashes run on a pool of their own: one thread per core (at least two), each owning one
//! Argon2 memory buffer that it reuses for every hash. Memory is therefore allocated once
//! and bounded by `threads × m` however many logins arrive, succeed or fail. (Allocating
//! the buffer per hash, on whichever blocking thread was free, let every malloc arena
//! those threads touched keep its own 19 MiB blocks: hundreds of MiB after a login flood
//! that never went back.) Requests wait for a free hasher at most [`WAIT_FOR_SLOT`].

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A real hash of a random password at the current parameters, verified against when
    /// the account does not exist so that a failed login costs the same time either way.
    decoy: Arc<String>,
    /// Free hashers: as many permits as threads, so a job handed over never queues.
    permits: Arc<Semaphore>,
    jobs: mpsc::Sender<Job>,
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

/// Largest memory cost (KiB) a stored hash may ask of a hasher: 1 GiB. A hash asking more
/// does not verify (no hash of ours ever does).
const MAX_MEMORY_KIB: u32 = 1 << 20;

enum Work {
    Hash { password: String, salt: [u8; 16] },
    Verify { password: String, hash: String },
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<String, String>>,
}

impl Passwords {
    /// Starts the hashers and computes the decoy hash (one hash at the configured cost).
    pub fn new(memory_kib: u32, iterations: u32) -> Passwords {
        let params = Params::new(memory_kib, iterations, 1, None).unwrap_or(Params::DEFAULT);
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let (queue, params) = (queue.clone(), params.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || hasher_thread(&queue, &params));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        let random: [u8; 32] = rand::random();
        let decoy = hash_with(
            &params,
            &mut Vec::new(),
            &String::from_utf8_lossy(&random),
            rand::random(),
        )
        .unwrap_or_default();
        Passwords {
            params,
            decoy: Arc::new(decoy),
            permits: Arc::new(Semaphore::new(threads)),
            jobs,
        }
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

    /// Runs `work` on a free hasher (waiting for one at most [`WAIT_FOR_SLOT`]).
    async fn run(&self, work: Work) -> Result<Result<String, String>, Busy> {
        let _permit = tokio::time::timeout(WAIT_FOR_SLOT, self.permits.acquire())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { work, reply }).map_err(|_| Busy)?;
        answer.await.map_err(|_| Busy)
    }

    /// A PHC string for `password`.
    pub async fn hash(&self, password: String) -> Result<String, String> {
        let salt: [u8; 16] = rand::random();
        self.run(Work::Hash { password, salt })
            .await
            .map_err(|e| e.to_string())?
    }

    /// Whether `password` matches `hash`; with no hash (unknown account, service account)
    /// it verifies against the decoy and answers false, in the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Busy> {
        let real = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.to_string());
        let verdict = self.run(Work::Verify { password, hash }).await?;
        Ok(verdict.is_ok() && real)
    }
}

/// One hasher: takes jobs until the hub goes away, always in the same memory.
fn hasher_thread(queue: &Mutex<mpsc::Receiver<Job>>, params: &Params) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else { return };
        let result = match job.work {
            Work::Hash { password, salt } => hash_with(params, &mut memory, &password, salt),
            Work::Verify { password, hash } => verify_with(&mut memory, &password, &hash),
        };
        let _ = job.reply.send(result);
    }
}

fn argon2id(params: Params, version: Version) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, version, params)
}

/// `memory` grown (once, kept) to what `params` needs.
fn blocks<'m>(memory: &'m mut Vec<Block>, params: &Params) -> &'m mut [Block] {
    let need = params.block_count();
    if memory.len() < need {
        memory.resize(need, Block::default());
    }
    &mut memory[..need]
}

fn hash_with(
    params: &Params,
    memory: &mut Vec<Block>,
    password: &str,
    salt: [u8; 16],
) -> Result<String, String> {
    let mut out = [0u8; 32];
    argon2id(params.clone(), Version::V0x13)
        .hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut out,
            blocks(memory, params),
        )
        .map_err(|e| format!("cannot hash password: {e}"))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| e.to_string())?,
        salt: Some(Salt::new(&salt).map_err(|e| e.to_string())?),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// `Ok` when `password` matches the PHC string `hash` (any Argon2id hash: its own
/// parameters, salt and output length).
fn verify_with(memory: &mut Vec<Block>, password: &str, hash: &str) -> Result<String, String> {
    let phc = PasswordHash::new(hash).map_err(|e| e.to_string())?;
    if phc.algorithm != argon2::ARGON2ID_IDENT {
        return Err("not an argon2id hash".into());
    }
    let version = phc
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let params = Params::try_from(&phc).map_err(|e| e.to_string())?;
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err("the hash asks for more memory than a hasher has".into());
    }
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return Err("the hash has no salt or output".into());
    };
    let mut out = vec![0u8; expected.len()];
    argon2id(params.clone(), version)
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt,
            &mut out,
            blocks(memory, &params),
        )
        .map_err(|e| e.to_string())?;
    aws_lc_rs::constant_time::verify_slices_are_equal(&out, expected.as_bytes())
        .map(|()| String::new())
        .map_err(|_| "wrong password".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher, PasswordVerifier};

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
        // Garbage never matches and never fails the hasher.
        assert!(!check(&p, "anything", Some("$argon2id$nonsense".into())).await);
        assert!(check(&p, "correct horse battery", Some(hash)).await);
    }

    #[tokio::test]
    async fn the_reference_implementation_agrees_both_ways() {
        let p = Passwords::new(1024, 2);
        let ours = p.hash("correct horse battery".into()).await.unwrap();
        let reference = Argon2::default();
        assert!(
            reference
                .verify_password(b"correct horse battery", &PasswordHash::new(&ours).unwrap())
                .is_ok()
        );
        let theirs = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(2048, 1, 1, None).unwrap(),
        )
        .hash_password(b"staple battery horse")
        .unwrap()
        .to_string();
        assert!(
            p.verify("staple battery horse".into(), Some(theirs.clone()))
                .await
                .unwrap()
        );
        assert!(
            !p.verify("staple battery hors".into(), Some(theirs))
                .await
                .unwrap()
        );
    }

    #[test]
    fn new_passwords_need_twelve_characters() {
        assert!(Passwords::check_new("short").is_err());
        assert!(Passwords::check_new("twelve chars").is_ok());
        assert!(Passwords::check_new(&"x".repeat(2000)).is_err());
    }
}
