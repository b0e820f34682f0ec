//! Streaming digests (sha256, sha384, sha512) whose state can be saved and restored.
//!
//! The saved state is what makes a resumed ingest cheap: the local store writes it
//! beside the partial data at checkpoints and, on reopen, hashes only the tail.

use digest::common::hazmat::SerializableState;
use oci_spec::image::{Digest, DigestAlgorithm};
use sha2::Digest as _;

use crate::{Error, Result};

/// How much of an input [`Digester::update_handed_over`] requests into the
/// cache ahead of the hash. On the benchmark machine, SHA-256 of 4 MiB
/// chunks another thread had just filled ran at 1.11-1.19 GiB/s fed whole
/// and 1.49-1.50 GiB/s fed this way; of chunks this thread filled, 1.59-1.63
/// GiB/s whole and 1.53-1.57 this way (`cargo bench --bench
/// digest_handoff`; BENCHMARKS.md, sixteenth session).
const PREFETCH_PIECE: usize = 16 << 10;

/// Asks the CPU to bring `bytes` into its cache, without waiting for them.
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        /// The cache line size of x86_64 CPUs.
        const CACHE_LINE: usize = 64;
        for line in bytes.chunks(CACHE_LINE) {
            // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has.
            // A prefetch only hints at the cache; it never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// A running digest of bytes in one of the supported algorithms.
#[derive(Clone, Debug)]
pub struct Digester {
    state: State,
}

#[derive(Clone, Debug)]
enum State {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Digester {
    /// A new digester for `algorithm`; only the SHA-2 family is supported.
    pub fn new(algorithm: &DigestAlgorithm) -> Result<Self> {
        let state = match algorithm {
            DigestAlgorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha384 => State::Sha384(sha2::Sha384::new()),
            DigestAlgorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unsupported digest algorithm {other:?}"
                )));
            }
        };
        Ok(Digester { state })
    }

    /// A new sha256 digester, the OCI default.
    pub fn sha256() -> Self {
        Digester {
            state: State::Sha256(sha2::Sha256::new()),
        }
    }

    /// The algorithm this digester computes.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self.state {
            State::Sha256(_) => DigestAlgorithm::Sha256,
            State::Sha384(_) => DigestAlgorithm::Sha384,
            State::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    /// Feeds bytes. The digest is the same however the input is split
    /// across calls.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(data),
            State::Sha384(h) => h.update(data),
            State::Sha512(h) => h.update(data),
        }
    }

    /// Feeds bytes another thread has just written, such as a chunk handed
    /// over by the thread that received it; the digest is the same as with
    /// [`Digester::update`].
    ///
    /// Those bytes are likely in the other core's cache, and a hash loop fetches
    /// them a line at a time: this feeds them piece by piece, requesting each
    /// next piece into the cache while the current one is hashed. On bytes
    /// already in this core's cache that costs a few percent, which is why
    /// `update` does not do it.
    pub fn update_handed_over(&mut self, data: &[u8]) {
        // An input of fewer than two pieces has nothing to request ahead.
        if data.len() < 2 * PREFETCH_PIECE {
            return self.update(data);
        }
        let mut pieces = data.chunks(PREFETCH_PIECE).peekable();
        while let Some(piece) = pieces.next() {
            if let Some(next) = pieces.peek() {
                prefetch(next);
            }
            self.update(piece);
        }
    }

    /// The digest of everything fed so far; the digester can keep going.
    pub fn digest(&self) -> Digest {
        let (alg, bytes): (&str, Vec<u8>) = match &self.state {
            State::Sha256(h) => ("sha256", h.clone().finalize().to_vec()),
            State::Sha384(h) => ("sha384", h.clone().finalize().to_vec()),
            State::Sha512(h) => ("sha512", h.clone().finalize().to_vec()),
        };
        let text = format!("{alg}:{}", hex(&bytes));
        Digest::try_from(text).expect("a hex SHA-2 digest is always a valid OCI digest")
    }

    /// Returns to the empty state.
    pub fn reset(&mut self) {
        *self = Digester::new(&self.algorithm()).expect("algorithm was supported before");
    }

    /// The internal state, to restore later with [`Digester::restore`].
    pub fn save(&self) -> Vec<u8> {
        match &self.state {
            State::Sha256(h) => h.serialize().to_vec(),
            State::Sha384(h) => h.serialize().to_vec(),
            State::Sha512(h) => h.serialize().to_vec(),
        }
    }

    /// Restores a state written by [`Digester::save`] for the same algorithm.
    pub fn restore(algorithm: &DigestAlgorithm, saved: &[u8]) -> Result<Self> {
        fn load<H: SerializableState>(saved: &[u8]) -> Option<H> {
            H::deserialize(saved.try_into().ok()?).ok()
        }
        let state = match algorithm {
            DigestAlgorithm::Sha256 => load(saved).map(State::Sha256),
            DigestAlgorithm::Sha384 => load(saved).map(State::Sha384),
            DigestAlgorithm::Sha512 => load(saved).map(State::Sha512),
            _ => None,
        };
        state
            .map(|state| Digester { state })
            .ok_or_else(|| Error::InvalidArgument(format!("bad saved {algorithm} digest state")))
    }
}

/// The digest of `data` in `algorithm`.
pub fn digest_of(algorithm: &DigestAlgorithm, data: &[u8]) -> Result<Digest> {
    let mut digester = Digester::new(algorithm)?;
    digester.update(data);
    Ok(digester.digest())
}

/// The sha256 digest of `data`.
pub fn sha256_of(data: &[u8]) -> Digest {
    let mut digester = Digester::sha256();
    digester.update(data);
    digester.digest()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_sha256_vectors() {
        assert_eq!(
            sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest_of(&DigestAlgorithm::Sha512, b"abc")
                .unwrap()
                .to_string(),
            "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn large_inputs_fed_in_pieces_hash_as_one() {
        let data: Vec<u8> = (0..5 * PREFETCH_PIECE + 37)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for len in [
            0,
            1,
            2 * PREFETCH_PIECE - 1,
            2 * PREFETCH_PIECE,
            2 * PREFETCH_PIECE + 1,
            data.len(),
        ] {
            let bytes = &data[..len];
            let mut sha256 = Digester::sha256();
            sha256.update_handed_over(bytes);
            // A partial block already buffered shifts every piece's alignment.
            let mut after_a_byte = Digester::sha256();
            after_a_byte.update(&bytes[..len.min(1)]);
            after_a_byte.update_handed_over(&bytes[len.min(1)..]);
            assert_eq!(
                after_a_byte.digest(),
                sha256.digest(),
                "split after 1 of {len}"
            );
            assert_eq!(
                sha256.digest().digest(),
                hex(&sha2::Sha256::digest(bytes)),
                "sha256 of {len} bytes"
            );
            let mut sha512 = Digester::new(&DigestAlgorithm::Sha512).unwrap();
            sha512.update_handed_over(bytes);
            assert_eq!(
                sha512.digest().digest(),
                hex(&sha2::Sha512::digest(bytes)),
                "sha512 of {len} bytes"
            );
        }
    }

    #[test]
    fn unsupported_algorithm_is_invalid_argument() {
        let err = Digester::new(&DigestAlgorithm::from("md5")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
    }

    proptest! {
        #[test]
        fn saved_state_resumes_to_the_same_digest(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..600,
            alg in prop_oneof![Just(DigestAlgorithm::Sha256), Just(DigestAlgorithm::Sha384), Just(DigestAlgorithm::Sha512)],
        ) {
            let cut = cut.min(data.len());
            let mut first = Digester::new(&alg).unwrap();
            first.update(&data[..cut]);
            let mut resumed = Digester::restore(&alg, &first.save()).unwrap();
            resumed.update(&data[cut..]);
            prop_assert_eq!(resumed.digest(), digest_of(&alg, &data).unwrap());
        }
    }
}
