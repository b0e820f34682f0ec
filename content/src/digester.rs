//! Streaming digests (sha256, sha384, sha512) whose state can be saved and restored.
//!
//! The local store writes the saved state beside the partial data at
//! checkpoints; a resume hashes the data again and compares, so data changed
//! behind a checkpoint is found before anything is committed.

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
                    "unsupported digest algorithm {other}"
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

    /// Feeds `a_data` to `a` and `b_data` to `b`, as two [`Digester::update`]s
    /// would, hashing both at once where the CPU allows: two SHA-256 streams
    /// with their rounds interleaved run about 1.75 times as fast as one after
    /// the other (x86 SHA extensions). Inputs of other algorithms, and what
    /// one input has beyond the other, are hashed one at a time.
    ///
    /// ```
    /// use ocidist_content::{Digester, sha256_of};
    ///
    /// let (mut a, mut b) = (Digester::sha256(), Digester::sha256());
    /// Digester::update_pair(&mut a, &[1; 5000], &mut b, &[2; 3000]);
    /// assert_eq!(a.digest(), sha256_of(&[1; 5000]));
    /// assert_eq!(b.digest(), sha256_of(&[2; 3000]));
    /// ```
    pub fn update_pair(a: &mut Digester, a_data: &[u8], b: &mut Digester, b_data: &[u8]) {
        let (a_done, b_done) = Self::update_pair_blocks(a, a_data, b, b_data);
        // What one input has beyond the other was, like the rest, most
        // likely filled on another core.
        a.update_handed_over(&a_data[a_done..]);
        b.update_handed_over(&b_data[b_done..]);
    }

    /// Whether [`Digester::update_pair`] hashes this digester's input
    /// together with another's on this CPU (SHA-256 with the x86 SHA
    /// extensions), rather than one after the other.
    pub fn pairs(&self) -> bool {
        matches!(self.state, State::Sha256(_)) && Self::pairs_on_this_cpu()
    }

    /// Whether [`Digester::update_pair`] hashes two SHA-256 inputs together
    /// on this CPU (the x86 SHA extensions).
    pub fn pairs_on_this_cpu() -> bool {
        crate::sha256_pair::available()
    }

    /// Hashes what of the two inputs can be hashed together; returns how
    /// much of each that was.
    fn update_pair_blocks(
        a: &mut Digester,
        a_data: &[u8],
        b: &mut Digester,
        b_data: &[u8],
    ) -> (usize, usize) {
        if !a.pairs() || !b.pairs() {
            return (0, 0);
        }
        let (State::Sha256(a_hash), State::Sha256(b_hash)) = (&mut a.state, &mut b.state) else {
            unreachable!("both checked above");
        };
        let a_rest = complete_block(a_hash, a_data);
        let b_rest = complete_block(b_hash, b_data);
        let (a_blocks, _) = a_rest.as_chunks::<SHA256_BLOCK>();
        let (b_blocks, _) = b_rest.as_chunks::<SHA256_BLOCK>();
        let blocks = a_blocks.len().min(b_blocks.len());
        if blocks > 0 {
            let mut a_core = sha256_blocks(a_hash);
            let mut b_core = sha256_blocks(b_hash);
            // As in `update_handed_over`: each next piece of both inputs is
            // requested while the current ones are hashed.
            const PIECE_BLOCKS: usize = PREFETCH_PIECE / SHA256_BLOCK;
            let mut a_pieces = a_blocks[..blocks].chunks(PIECE_BLOCKS).peekable();
            let mut b_pieces = b_blocks[..blocks].chunks(PIECE_BLOCKS).peekable();
            while let (Some(a_piece), Some(b_piece)) = (a_pieces.next(), b_pieces.next()) {
                if let (Some(a_next), Some(b_next)) = (a_pieces.peek(), b_pieces.peek()) {
                    prefetch(a_next.as_flattened());
                    prefetch(b_next.as_flattened());
                }
                crate::sha256_pair::compress_pair(&mut a_core, a_piece, &mut b_core, b_piece);
            }
            set_sha256_blocks(a_hash, &a_core);
            set_sha256_blocks(b_hash, &b_core);
        }
        let paired = blocks * SHA256_BLOCK;
        (
            a_data.len() - a_rest.len() + paired,
            b_data.len() - b_rest.len() + paired,
        )
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
    ///
    /// Its bytes are the hash implementation's, not a format of ours: a
    /// state saved by another version of this crate may fail to restore,
    /// or differ from this version's for the same input. A store that keeps
    /// one to resume an ingest treats that as no state, hashing the data
    /// written so far again or starting over. (The local store hashes its
    /// ingest's data again at a resume anyway, and starts the ingest over
    /// when that does not give the state its checkpoint saved.)
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

/// SHA-256's block size.
const SHA256_BLOCK: usize = 64;

// `sha2::Sha256`'s saved state (`SerializableState`): the eight state words
// (little-endian), the count of blocks hashed (little-endian u64), then the
// buffered partial block as its length (one byte) and up to 63 bytes. A change
// of this layout fails `saved_state_layout_is_what_pairs_read`, on any CPU.
const SAVED_BLOCKS_AT: usize = 32;
const SAVED_BUFFERED_AT: usize = 40;

/// Feeds `hash` as much of `data` as completes its buffered partial block;
/// returns the rest, which starts on a block boundary.
fn complete_block<'a>(hash: &mut sha2::Sha256, data: &'a [u8]) -> &'a [u8] {
    let buffered = usize::from(hash.serialize()[SAVED_BUFFERED_AT]);
    let head = ((SHA256_BLOCK - buffered) % SHA256_BLOCK).min(data.len());
    hash.update(&data[..head]);
    &data[head..]
}

/// The state of `hash`, which has no partial block buffered.
fn sha256_blocks(hash: &sha2::Sha256) -> crate::sha256_pair::Sha256Blocks {
    let saved = hash.serialize();
    debug_assert_eq!(saved[SAVED_BUFFERED_AT], 0, "on a block boundary");
    let word = |i: usize| u32::from_le_bytes(saved[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let blocks = saved[SAVED_BLOCKS_AT..SAVED_BUFFERED_AT]
        .try_into()
        .expect("8 bytes");
    crate::sha256_pair::Sha256Blocks {
        state: std::array::from_fn(word),
        blocks: u64::from_le_bytes(blocks),
    }
}

/// Sets the state of `hash`, which has no partial block buffered.
fn set_sha256_blocks(hash: &mut sha2::Sha256, core: &crate::sha256_pair::Sha256Blocks) {
    let mut saved = hash.serialize();
    for (i, word) in core.state.iter().enumerate() {
        saved[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
    }
    saved[SAVED_BLOCKS_AT..SAVED_BUFFERED_AT].copy_from_slice(&core.blocks.to_le_bytes());
    *hash = sha2::Sha256::deserialize(&saved).expect("a state saved by sha2 itself, words changed");
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
    fn pairs_hash_as_two_updates() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 253) as u8).collect();
        // Lengths around block boundaries, with and without a partial block
        // buffered before, and one input much longer than the other.
        for (a_before, a_len, b_before, b_len) in [
            (0, 0, 0, 0),
            (0, 64, 0, 64),
            (0, 65_536, 0, 65_536),
            (1, 65_536, 63, 65_535),
            (0, 70_000 - 5, 5, 100),
            (17, 129, 0, 70_000 - 1),
            (64, 1000, 128, 1000),
        ] {
            let (mut a, mut b) = (Digester::sha256(), Digester::sha256());
            a.update(&data[..a_before]);
            b.update(&data[..b_before]);
            let a_data = &data[a_before..a_before + a_len];
            let b_data = &data[b_before..b_before + b_len];
            Digester::update_pair(&mut a, a_data, &mut b, b_data);
            let case = (a_before, a_len, b_before, b_len);
            assert_eq!(
                a.digest(),
                sha256_of(&data[..a_before + a_len]),
                "a {case:?}"
            );
            assert_eq!(
                b.digest(),
                sha256_of(&data[..b_before + b_len]),
                "b {case:?}"
            );
            // The states carry on, saved and restored, as any other.
            a.update(b"tail");
            let resumed = Digester::restore(&DigestAlgorithm::Sha256, &a.save()).unwrap();
            let mut whole = data[..a_before + a_len].to_vec();
            whole.extend_from_slice(b"tail");
            assert_eq!(resumed.digest(), sha256_of(&whole), "a resumed {case:?}");
        }
    }

    #[test]
    fn saved_state_layout_is_what_pairs_read() {
        let data: Vec<u8> = (0..200u8).collect();
        let mut hash = sha2::Sha256::new();
        hash.update(&data[..130]);
        // 130 bytes: two blocks hashed, two bytes buffered.
        assert_eq!(complete_block(&mut hash, &data[130..]), &data[192..]);
        let mut expected = crate::sha256_pair::Sha256Blocks {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            blocks: 0,
        };
        let (blocks, _) = data[..192].as_chunks::<SHA256_BLOCK>();
        sha2::block_api::compress256(&mut expected.state, blocks);
        let core = sha256_blocks(&hash);
        assert_eq!((core.state, core.blocks), (expected.state, 3));
        // Written back, the state carries on to the right digest.
        expected.blocks = 3;
        let mut fresh = sha2::Sha256::new();
        set_sha256_blocks(&mut fresh, &expected);
        fresh.update(&data[192..]);
        assert_eq!(hex(&fresh.finalize()), sha256_of(&data).digest());
    }

    #[test]
    fn pairs_of_other_algorithms_hash_one_at_a_time() {
        let mut a = Digester::new(&DigestAlgorithm::Sha512).unwrap();
        let mut b = Digester::sha256();
        Digester::update_pair(&mut a, &[3; 1000], &mut b, &[4; 1000]);
        assert_eq!(
            a.digest(),
            digest_of(&DigestAlgorithm::Sha512, &[3; 1000]).unwrap()
        );
        assert_eq!(b.digest(), sha256_of(&[4; 1000]));
    }

    #[test]
    fn unsupported_algorithm_is_invalid_argument() {
        let err = Digester::new(&DigestAlgorithm::from("md5")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
    }

    proptest! {
        #[test]
        fn pairs_match_single_updates(
            a_data in proptest::collection::vec(any::<u8>(), 0..2000),
            b_data in proptest::collection::vec(any::<u8>(), 0..2000),
            a_cut in 0usize..2000,
            b_cut in 0usize..2000,
        ) {
            let (a_cut, b_cut) = (a_cut.min(a_data.len()), b_cut.min(b_data.len()));
            let (mut a, mut b) = (Digester::sha256(), Digester::sha256());
            a.update(&a_data[..a_cut]);
            b.update(&b_data[..b_cut]);
            Digester::update_pair(&mut a, &a_data[a_cut..], &mut b, &b_data[b_cut..]);
            prop_assert_eq!(a.digest(), sha256_of(&a_data));
            prop_assert_eq!(b.digest(), sha256_of(&b_data));
        }

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
