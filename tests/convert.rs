//! cudann_convert against an independent reference: half values decoded from
//! their fields in float64, and rounding to a half type as a search for the
//! nearest value in the sorted table of every finite one (ties to the even
//! bit pattern, past the largest by half an ulp: infinity). Every one of the
//! 65536 values of each half type, and millions of float32 values.
mod common;
use std::ffi::c_void;

use common::*;
use cudann::*;

/// A half format: exponent and mantissa widths.
#[derive(Clone, Copy)]
struct Format {
    exp: u32,
    man: u32,
    code: i32,
}

const F16: Format = Format { exp: 5, man: 10, code: CUDANN_F16 };
const BF16: Format = Format { exp: 8, man: 7, code: CUDANN_BF16 };

impl Format {
    /// The value of bit pattern `b`, from its fields (NaN for NaNs).
    fn decode(self, b: u16) -> f64 {
        let sign = if b >> 15 == 1 { -1.0 } else { 1.0 };
        let e = ((b >> self.man) & ((1 << self.exp) - 1)) as i32;
        let m = (b & ((1 << self.man) - 1)) as f64;
        let bias = (1 << (self.exp - 1)) - 1;
        let scale = 2f64.powi(self.man as i32);
        match e {
            0 => sign * 2f64.powi(1 - bias) * m / scale,
            _ if e == (1 << self.exp) - 1 => if m == 0.0 { sign * f64::INFINITY } else { f64::NAN },
            _ => sign * 2f64.powi(e - bias) * (1.0 + m / scale),
        }
    }

    /// Every finite non-negative value with its bit pattern, ascending.
    fn table(self) -> Vec<(f64, u16)> {
        (0..0x8000u16).map(|b| (self.decode(b), b)).filter(|(v, _)| v.is_finite()).collect()
    }

    /// x (finite or infinite, not NaN) rounded to nearest, ties to even.
    fn round(self, table: &[(f64, u16)], x: f64) -> u16 {
        let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
        let a = x.abs();
        let (max, max_bits) = *table.last().unwrap();
        let ulp = max - table[table.len() - 2].0;
        let inf = ((1u16 << self.exp) - 1) << self.man;
        if a >= max + ulp / 2.0 {
            return sign | inf;
        }
        let i = table.partition_point(|&(v, _)| v < a);
        let bits = if i == table.len() {
            max_bits
        } else if table[i].0 == a || i == 0 {
            table[i].1
        } else {
            let (lo, hi) = (table[i - 1], table[i]);
            match (a - lo.0).partial_cmp(&(hi.0 - a)).unwrap() {
                std::cmp::Ordering::Less => lo.1,
                std::cmp::Ordering::Greater => hi.1,
                std::cmp::Ordering::Equal => if lo.1 % 2 == 0 { lo.1 } else { hi.1 },
            }
        };
        sign | bits
    }
}

fn convert<S: Copy, D: Copy + Default>(src: &[S], from: i32, to: i32) -> Vec<D> {
    let mut out = vec![D::default(); src.len()];
    assert_ok(unsafe { cudann_convert(src.as_ptr().cast(), from, out.as_mut_ptr().cast(), to, src.len() as i64, NULL) });
    out
}

/// The NaN rule: a NaN stays NaN, quiet, with its sign.
fn assert_quiet_nan(bits: u32, width: u32, sign: bool, what: &str) {
    let (exp_bits, man_bits) = if width == 32 { (8, 23) } else if width == 16 { (5, 10) } else { (8, 7) };
    let exp = (bits >> man_bits) & ((1 << exp_bits) - 1);
    let man = bits & ((1 << man_bits) - 1);
    assert!(exp == (1 << exp_bits) - 1 && man != 0, "{what}: {bits:#x} is not a NaN");
    assert!(man >> (man_bits - 1) == 1, "{what}: {bits:#x} is a signalling NaN");
    assert_eq!(bits >> (width - 1) == 1, sign, "{what}: the sign of {bits:#x}");
}

#[test]
fn every_half_value_widens_exactly() {
    for (format, width) in [(F16, 16u32), (BF16, 8)] {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let wide: Vec<f32> = convert(&all, format.code, CUDANN_F32);
        for (&b, &w) in all.iter().zip(&wide) {
            let want = format.decode(b);
            if want.is_nan() {
                assert_quiet_nan(w.to_bits(), 32, b >> 15 == 1, &format!("{width}-bit mantissa {b:#06x}"));
            } else {
                assert_eq!(w as f64, want, "{b:#06x}");
                assert_eq!(w.is_sign_negative(), b >> 15 == 1, "the sign of {b:#06x}");
            }
        }
    }
}

/// Awkward float32 values: every halfway point and its neighbours for both
/// formats, the edges, and random bit patterns.
fn float32_cases() -> Vec<f32> {
    let mut cases = vec![0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-45, 65504.0, 65519.99, 65520.0, -65520.0, 5.96e-8, 2.98e-8, 2.99e-8];
    for format in [F16, BF16] {
        let table = format.table();
        for pair in table.windows(2) {
            let mid = ((pair[0].0 + pair[1].0) / 2.0) as f32;
            for v in [mid, f32::from_bits(mid.to_bits() + 1), f32::from_bits(mid.to_bits().saturating_sub(1))] {
                cases.extend([v, -v]);
            }
        }
    }
    let mut rng = Rng::new(5);
    cases.extend((0..2_000_000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    cases
}

#[test]
fn float32_rounds_to_nearest_even() {
    let cases = float32_cases();
    for format in [F16, BF16] {
        let table = format.table();
        let narrow: Vec<u16> = convert(&cases, CUDANN_F32, format.code);
        for (&x, &b) in cases.iter().zip(&narrow) {
            if x.is_nan() {
                assert_quiet_nan(b as u32, 16, x.is_sign_negative(), &format!("{:#x}", x.to_bits()));
            } else {
                assert_eq!(b, format.round(&table, x as f64), "{x:e} ({:#010x}) to type {}", x.to_bits(), format.code);
            }
        }
    }
}

#[test]
fn half_types_convert_into_each_other_through_exact_values() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    for (from, to) in [(F16, BF16), (BF16, F16)] {
        let table = to.table();
        let out: Vec<u16> = convert(&all, from.code, to.code);
        for (&b, &o) in all.iter().zip(&out) {
            let v = from.decode(b);
            if v.is_nan() {
                assert_quiet_nan(o as u32, 16, b >> 15 == 1, &format!("{b:#06x}"));
            } else {
                assert_eq!(o, to.round(&table, v), "{b:#06x} ({v:e}) from type {} to {}", from.code, to.code);
            }
        }
    }
}

#[test]
fn same_type_copies_and_in_place_is_a_no_op() {
    let x: Vec<f32> = (0..10_001).map(|i| i as f32 * 0.37 - 100.0).collect();
    assert_eq!(convert::<f32, f32>(&x, CUDANN_F32, CUDANN_F32), x);
    let mut y = x.clone();
    assert_ok(unsafe { cudann_convert(y.as_ptr().cast(), CUDANN_F32, y.as_mut_ptr().cast(), CUDANN_F32, 10_001, NULL) });
    assert_eq!(y, x);
    let h: Vec<u16> = (0..5000).collect();
    assert_eq!(convert::<u16, u16>(&h, CUDANN_BF16, CUDANN_BF16), h);
}

#[test]
fn bad_arguments_are_refused_and_nothing_is_written() {
    let x = vec![1.5f32; 64];
    let mut y = vec![0x5555u16; 64];
    let dst = y.as_mut_ptr().cast::<c_void>();
    unsafe {
        assert_invalid(cudann_convert(x.as_ptr().cast(), 7, dst, CUDANN_F16, 64, NULL), "cudann_convert", "src_type must be CUDANN_F32 (0), CUDANN_F16 (1) or CUDANN_BF16 (2) (got 7)");
        assert_invalid(cudann_convert(x.as_ptr().cast(), CUDANN_F32, dst, CUDANN_I32, 64, NULL), "cudann_convert", "dst_type must be");
        assert_invalid(cudann_convert(x.as_ptr().cast(), CUDANN_F32, dst, CUDANN_F16, -1, NULL), "cudann_convert", "n must be >= 0");
        assert_invalid(cudann_convert(std::ptr::null(), CUDANN_F32, dst, CUDANN_F16, 64, NULL), "cudann_convert", "src is NULL");
        assert_invalid(cudann_convert(x.as_ptr().cast::<u8>().add(2).cast(), CUDANN_F32, dst, CUDANN_F16, 8, NULL), "cudann_convert", "src is not aligned to 4 bytes");
        // float32 -> half in place: the output is half the input's bytes.
        let mut z = vec![1.0f32; 64];
        assert_invalid(cudann_convert(z.as_ptr().cast(), CUDANN_F32, z.as_mut_ptr().cast(), CUDANN_F16, 64, NULL), "cudann_convert", "partially overlaps");
        assert!(z.iter().all(|&v| v == 1.0));
        assert_ok(cudann_convert(std::ptr::null(), CUDANN_F32, std::ptr::null_mut(), CUDANN_BF16, 0, NULL));
    }
    assert!(y.iter().all(|&v| v == 0x5555), "the output after refused calls");
}
