//! The SIMD level of the CPU kernels (`#[simd]` functions): the best the CPU
//! has, unless `CUDANN_SIMD` pins a lower one, e.g. `scalar` or `avx2` for
//! valgrind, which does not emulate AVX-512. The `gemm` crate, which runs the
//! large matrix products, detects the CPU by itself and is not pinned.

use std::sync::OnceLock;

pub use cudann_simd_macro::simd;

/// Lowest first, so `min` caps a request at what the CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Baseline x86-64 (SSE2), or the target's baseline elsewhere.
    Scalar,
    /// x86-64-v3: AVX2 and FMA.
    Avx2,
    /// x86-64-v4: AVX-512 (F, BW, CD, DQ, VL).
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Whether this level's code fuses multiply-adds (both AVX levels have FMA).
    pub const fn fma(self) -> bool {
        !matches!(self, Level::Scalar)
    }
}

/// The level in use and why, as `cudann info` prints it.
pub struct Choice {
    pub level: Level,
    pub why: String,
}

/// The best level this CPU supports.
pub fn best() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if cudann_simd_macro::detected!(avx512) {
            return Level::Avx512;
        }
        if cudann_simd_macro::detected!(avx2) {
            return Level::Avx2;
        }
    }
    Level::Scalar
}

/// The level for a `CUDANN_SIMD` value on a CPU whose best is `best`: a named
/// level capped at `best`; unset, empty, `auto` or anything else: `best` (an
/// unknown value must not break a program; `why` says it was ignored).
pub fn choose(value: Option<&str>, best: Level) -> Choice {
    let requested = match value.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("auto") => return Choice { level: best, why: "the best this CPU has".into() },
        Some("avx512") => Level::Avx512,
        Some("avx2") => Level::Avx2,
        Some("scalar") => Level::Scalar,
        Some(other) => {
            let why = format!("CUDANN_SIMD='{other}' is not avx512, avx2, scalar or auto: ignored, the best this CPU has");
            return Choice { level: best, why };
        }
    };
    match requested <= best {
        true => Choice { level: requested, why: format!("CUDANN_SIMD={}", requested.name()) },
        false => Choice { level: best, why: format!("CUDANN_SIMD={}, above the best this CPU has", requested.name()) },
    }
}

/// `CUDANN_SIMD` and the CPU, read once at the first kernel call.
pub fn choice() -> &'static Choice {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    CHOICE.get_or_init(|| choose(std::env::var("CUDANN_SIMD").ok().as_deref(), best()))
}

/// The level every `#[simd]` function runs.
#[inline]
pub fn level() -> Level {
    choice().level
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_capped_at_the_cpu_and_unknown_values_mean_auto() {
        let pick = |value, best| choose(value, best).level;
        assert_eq!(pick(None, Level::Avx512), Level::Avx512);
        assert_eq!(pick(Some("auto"), Level::Avx2), Level::Avx2);
        assert_eq!(pick(Some(" AVX2 "), Level::Avx512), Level::Avx2);
        assert_eq!(pick(Some("scalar"), Level::Avx512), Level::Scalar);
        assert_eq!(pick(Some("avx512"), Level::Avx2), Level::Avx2);
        assert_eq!(pick(Some("avx512"), Level::Scalar), Level::Scalar);
        assert_eq!(pick(Some("sse9"), Level::Avx2), Level::Avx2);
        assert!(choose(Some("sse9"), Level::Avx2).why.contains("'sse9' is not"));
        assert_eq!(choose(Some("avx512"), Level::Avx2).why, "CUDANN_SIMD=avx512, above the best this CPU has");
    }
}
