//! SHA-256 of two independent inputs at once, their rounds interleaved.
//!
//! With the x86 SHA extensions, one SHA-256 stream waits on the latency of
//! `sha256rnds2`, one round pair after another. A second, independent stream
//! fills those waits: on the benchmark machine (AMD EPYC, Zen 4) two streams
//! hashed together ran at 3.12-3.18 GB/s in all, against 1.77-1.80 GB/s for
//! one stream alone (the `sha2` crate's or this module's); three at once gave
//! only 3.5 GB/s, and four ran out of registers (2.6 GB/s). BENCHMARKS.md,
//! nineteenth session.

/// The SHA-256 state words and the number of 64-byte blocks they cover.
pub(crate) struct Sha256Blocks {
    pub(crate) state: [u32; 8],
    pub(crate) blocks: u64,
}

/// Whether this CPU can hash two streams at once.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("sha")
                && std::arch::is_x86_feature_detected!("sse4.1")
                && std::arch::is_x86_feature_detected!("ssse3")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Hashes `a_blocks` into `a` and `b_blocks` into `b`, which must be as
/// many; the caller has checked [`available`].
pub(crate) fn compress_pair(
    a: &mut Sha256Blocks,
    a_blocks: &[[u8; 64]],
    b: &mut Sha256Blocks,
    b_blocks: &[[u8; 64]],
) {
    assert_eq!(a_blocks.len(), b_blocks.len(), "pairs of equal length");
    assert!(available(), "SHA extensions required");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` checked the CPU features the function enables.
    unsafe {
        x86::compress_pair(&mut a.state, a_blocks, &mut b.state, b_blocks);
    }
    a.blocks += a_blocks.len() as u64;
    b.blocks += b_blocks.len() as u64;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// The state as `sha256rnds2` wants it: ABEF and CDGH.
    #[derive(Clone, Copy)]
    struct Lane {
        abef: __m128i,
        cdgh: __m128i,
    }

    #[inline]
    #[target_feature(enable = "sha,sse4.1,ssse3")]
    fn load(state: &[u32; 8]) -> Lane {
        // SAFETY: both loads read 16 of the state's 32 bytes; unaligned loads.
        let (dcba, hgfe) = unsafe {
            (
                _mm_loadu_si128(state.as_ptr().cast()),
                _mm_loadu_si128(state.as_ptr().add(4).cast()),
            )
        };
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
        Lane {
            abef: _mm_alignr_epi8(cdab, efgh, 8),
            cdgh: _mm_blend_epi16(efgh, cdab, 0xF0),
        }
    }

    #[inline]
    #[target_feature(enable = "sha,sse4.1,ssse3")]
    fn store(lane: Lane, state: &mut [u32; 8]) {
        let feba = _mm_shuffle_epi32(lane.abef, 0x1B);
        let dchg = _mm_shuffle_epi32(lane.cdgh, 0xB1);
        let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
        let hgef = _mm_alignr_epi8(dchg, feba, 8);
        // SAFETY: both stores write 16 of the state's 32 bytes; unaligned.
        unsafe {
            _mm_storeu_si128(state.as_mut_ptr().cast(), dcba);
            _mm_storeu_si128(state.as_mut_ptr().add(4).cast(), hgef);
        }
    }

    /// The block's 16 message words, big-endian, four to a register.
    #[inline]
    #[target_feature(enable = "sha,sse4.1,ssse3")]
    fn message(block: &[u8; 64]) -> [__m128i; 4] {
        let big_endian = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        // SAFETY: each load reads 16 of the block's 64 bytes; unaligned loads.
        std::array::from_fn(|i| unsafe {
            _mm_shuffle_epi8(
                _mm_loadu_si128(block.as_ptr().add(16 * i).cast()),
                big_endian,
            )
        })
    }

    /// The next four message words, replacing `w[i]` (words t-16..t-13).
    #[inline]
    #[target_feature(enable = "sha,sse4.1,ssse3")]
    fn schedule(w: &mut [__m128i; 4], i: usize) -> __m128i {
        let sigma0 = _mm_sha256msg1_epu32(w[i], w[(i + 1) % 4]);
        let with_t7 = _mm_add_epi32(sigma0, _mm_alignr_epi8(w[(i + 3) % 4], w[(i + 2) % 4], 4));
        w[i] = _mm_sha256msg2_epu32(with_t7, w[(i + 3) % 4]);
        w[i]
    }

    #[inline]
    #[target_feature(enable = "sha,sse4.1,ssse3")]
    fn round_constants(group: usize) -> __m128i {
        let k = |i: usize| K[4 * group + i] as i32;
        _mm_set_epi32(k(3), k(2), k(1), k(0))
    }

    /// Both blocks' 64 rounds, each step issued for `a` and then for `b`, so
    /// that one lane's rounds run while the other's wait.
    #[inline]
    #[target_feature(enable = "sha,sse4.1,ssse3")]
    fn blocks_pair(a: &mut Lane, a_block: &[u8; 64], b: &mut Lane, b_block: &[u8; 64]) {
        let (a_saved, b_saved) = (*a, *b);
        let mut a_words = message(a_block);
        let mut b_words = message(b_block);
        // Unrolled by a macro: a loop kept the words in memory, and one lane
        // ran at 1.45 GB/s instead of 1.8.
        macro_rules! four_rounds {
            ($group:expr) => {
                let (a_next, b_next) = if $group < 4 {
                    (a_words[$group % 4], b_words[$group % 4])
                } else {
                    (
                        schedule(&mut a_words, $group % 4),
                        schedule(&mut b_words, $group % 4),
                    )
                };
                let k = round_constants($group);
                let a_msg = _mm_add_epi32(a_next, k);
                let b_msg = _mm_add_epi32(b_next, k);
                a.cdgh = _mm_sha256rnds2_epu32(a.cdgh, a.abef, a_msg);
                b.cdgh = _mm_sha256rnds2_epu32(b.cdgh, b.abef, b_msg);
                a.abef = _mm_sha256rnds2_epu32(a.abef, a.cdgh, _mm_shuffle_epi32(a_msg, 0x0E));
                b.abef = _mm_sha256rnds2_epu32(b.abef, b.cdgh, _mm_shuffle_epi32(b_msg, 0x0E));
            };
        }
        four_rounds!(0);
        four_rounds!(1);
        four_rounds!(2);
        four_rounds!(3);
        four_rounds!(4);
        four_rounds!(5);
        four_rounds!(6);
        four_rounds!(7);
        four_rounds!(8);
        four_rounds!(9);
        four_rounds!(10);
        four_rounds!(11);
        four_rounds!(12);
        four_rounds!(13);
        four_rounds!(14);
        four_rounds!(15);
        a.abef = _mm_add_epi32(a.abef, a_saved.abef);
        a.cdgh = _mm_add_epi32(a.cdgh, a_saved.cdgh);
        b.abef = _mm_add_epi32(b.abef, b_saved.abef);
        b.cdgh = _mm_add_epi32(b.cdgh, b_saved.cdgh);
    }

    #[target_feature(enable = "sha,sse4.1,ssse3")]
    pub(super) fn compress_pair(
        a_state: &mut [u32; 8],
        a_blocks: &[[u8; 64]],
        b_state: &mut [u32; 8],
        b_blocks: &[[u8; 64]],
    ) {
        let mut a = load(a_state);
        let mut b = load(b_state);
        for (a_block, b_block) in a_blocks.iter().zip(b_blocks) {
            blocks_pair(&mut a, a_block, &mut b, b_block);
        }
        store(a, a_state);
        store(b, b_state);
    }
}
