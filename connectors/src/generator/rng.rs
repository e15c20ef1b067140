//! The generator's own pseudo-random numbers: SplitMix64 for hashing and seeding,
//! xoshiro256** for streams.
//!
//! Both are written out here (rather than taken from a crate) so that the generated data
//! never changes with a dependency's version. Everything the generator derives from them
//! uses only integer arithmetic and IEEE-754 `+ - * /` and `sqrt` on `f64`, which are
//! correctly rounded everywhere: no `exp`, `ln` or `powf`, whose last bit depends on the
//! platform's math library. So a (config, partition) pair yields the same bytes on every
//! machine.

/// Domain tags keep the hash streams of different entities apart.
pub(crate) mod tag {
    pub const CATALOG: u64 = 0x6361_7461_6c6f_6701;
    pub const CATEGORY_NULL: u64 = 0x6361_745f_6e75_6c02;
    pub const CATEGORY_ID: u64 = 0x6361_745f_6964_0003;
    pub const PARTITION: u64 = 0x7061_7274_6974_0004;
    pub const OUTPUT: u64 = 0x6f75_7470_7574_0005;
    pub const USER: u64 = 0x7573_6572_0000_0006;
    pub const USER_PERM: u64 = 0x7573_6572_7065_0007;
    pub const BOT: u64 = 0x626f_7400_0000_0008;
    pub const BOT_GAPS: u64 = 0x626f_7467_6170_0009;
    pub const BOT_EVENTS: u64 = 0x626f_7465_7600_000a;
    pub const DDOS: u64 = 0x6464_6f73_0000_000b;
    pub const DDOS_SLOT: u64 = 0x6464_6f73_736c_000c;
    pub const DDOS_IP: u64 = 0x6464_6f73_6970_000d;
    pub const BRAND_NULL: u64 = 0x6272_6e75_6c6c_000e;
    pub const PRICE_ZERO: u64 = 0x7072_7a65_726f_000f;
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finalizer: a bijective, well-mixing map on `u64`.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable hash of a short tuple of integers (order matters).
#[inline]
pub(crate) fn hash(parts: &[u64]) -> u64 {
    let mut h = GOLDEN;
    for &p in parts {
        h = mix64(h ^ mix64(p.wrapping_add(GOLDEN)));
    }
    h
}

/// A uniform `f64` in `[0, 1)` from the top 53 bits of `x`.
#[inline]
pub(crate) fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A probability as a `u64` threshold: `hit` is one integer comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prob(u64);

impl Prob {
    /// `p` clamped to `[0, 1]`; `1.0` hits all but a 2^-64 sliver.
    pub(crate) fn new(p: f64) -> Prob {
        if p.is_nan() || p <= 0.0 {
            Prob(0)
        } else if p >= 1.0 {
            Prob(u64::MAX)
        } else {
            // 2^64 * p, exact enough: p has 53 bits.
            Prob((p * 18_446_744_073_709_551_616.0) as u64)
        }
    }

    /// The threshold: a draw `x` hits when `x < threshold`.
    #[inline]
    pub(crate) fn threshold(self) -> u64 {
        self.0
    }

    /// Whether this probability is exactly zero (no draw needed).
    #[inline]
    pub(crate) fn is_zero(self) -> bool {
        self.0 == 0
    }
}

/// xoshiro256** (Blackman and Vigna), seeded through SplitMix64.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A stream seeded from one `u64` (typically a [`hash`] of a tuple).
    pub(crate) fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(GOLDEN);
            mix64(x)
        };
        let mut s = [next(), next(), next(), next()];
        if s == [0; 4] {
            s[0] = GOLDEN;
        }
        Rng { s }
    }

    /// The next 64 random bits.
    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform `f64` in `[0, 1)`.
    #[inline]
    pub(crate) fn f64(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// A uniform integer in `[0, n)` (`n > 0`), by multiply-shift. The bias is below
    /// `n / 2^64`, far under anything a test could see, and there is no rejection loop.
    #[inline]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform `usize` in `[0, n)` (`n > 0`).
    #[inline]
    pub(crate) fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `p`.
    #[inline]
    pub(crate) fn hit(&mut self, p: Prob) -> bool {
        self.next_u64() < p.0
    }

    /// 32 random bits.
    #[inline]
    pub(crate) fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
}

/// A discrete distribution as cumulative `u32` thresholds: `sample` is a binary search.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cdf {
    thresholds: Vec<u32>,
}

impl Cdf {
    /// The distribution proportional to `weights` (non-negative, not all zero).
    pub(crate) fn new(weights: &[f64]) -> Cdf {
        let mut thresholds = Vec::with_capacity(weights.len());
        push_thresholds(weights, &mut thresholds);
        Cdf { thresholds }
    }

    /// An index drawn from the distribution.
    #[inline]
    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        sample_thresholds(&self.thresholds, rng.u32())
    }
}

/// Appends the cumulative thresholds of `weights` (scaled to 2^32) to `out`.
pub(crate) fn push_thresholds(weights: &[f64], out: &mut Vec<u32>) {
    let total: f64 = weights.iter().sum();
    let mut cum = 0.0;
    for &w in weights {
        cum += w;
        let t = if total > 0.0 {
            cum / total * 4_294_967_296.0
        } else {
            4_294_967_296.0
        };
        out.push(if t >= 4_294_967_295.0 {
            u32::MAX
        } else {
            t as u32
        });
    }
    if let Some(last) = out.last_mut() {
        *last = u32::MAX;
    }
}

/// The first index whose threshold exceeds `x` (clamped to the last index).
#[inline]
pub(crate) fn sample_thresholds(thresholds: &[u32], x: u32) -> usize {
    let i = thresholds.partition_point(|&t| t <= x);
    i.min(thresholds.len().saturating_sub(1))
}

/// A UUID v4 (RFC 4122 version and variant bits set) from 128 random bits.
#[inline]
pub(crate) fn uuid_v4(hi: u64, lo: u64) -> u128 {
    // Printed as xxxxxxxx-xxxx-Mxxx-Nxxx-xxxxxxxxxxxx: M (bits 79..76) = 4, N's top two
    // bits (63..62) = 0b10.
    let hi = (hi & !(0xf << 12)) | (0x4 << 12);
    let lo = (lo & !(0b11 << 62)) | (0b10 << 62);
    (u128::from(hi) << 64) | u128::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_stream_is_pinned() {
        // Pinned so an accidental change of the generator core is caught: the data set
        // of a given seed must never change silently.
        let mut r = Rng::new(42);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            first,
            [
                0x1578_0b2e_0c2e_c716,
                0x6104_d986_6d11_3a7e,
                0xae17_5332_39e4_99a1
            ]
        );
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        assert_ne!(hash(&[1, 2]), hash(&[2, 1]));
    }

    #[test]
    fn below_and_prob_are_in_range() {
        let mut r = Rng::new(7);
        let mut hits = 0;
        for _ in 0..100_000 {
            assert!(r.below(10) < 10);
            let f = r.f64();
            assert!((0.0..1.0).contains(&f));
            if r.hit(Prob::new(0.25)) {
                hits += 1;
            }
        }
        assert!((24_000..26_000).contains(&hits), "{hits}");
        assert!(!Rng::new(1).hit(Prob::new(0.0)));
    }

    #[test]
    fn cdf_follows_weights() {
        let cdf = Cdf::new(&[1.0, 0.0, 3.0]);
        let mut r = Rng::new(3);
        let mut n = [0u32; 3];
        for _ in 0..40_000 {
            n[cdf.sample(&mut r)] += 1;
        }
        assert_eq!(n[1], 0);
        assert!((9_000..11_000).contains(&n[0]), "{n:?}");
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid_v4(u64::MAX, 0);
        let text = cap_engine_uuid_text(u);
        assert_eq!(&text[14..15], "4");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
    }

    fn cap_engine_uuid_text(v: u128) -> String {
        crate::clickstream::SessionId::Uuid(v).to_string()
    }
}
