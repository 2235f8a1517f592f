//! The contract every entry point keeps, checked on inputs drawn from fuzz
//! bytes: no crash; a non-zero return leaves every buffer byte as it was and
//! sets a message naming the function; a zero return clears the message and
//! writes only buffers passed as outputs; a caught panic (-5) is a bug.
//!
//! Arguments come from the bytes: dimensions small (so that every valid call
//! fits the buffers: a call whose sizes are valid but larger than the memory
//! behind its pointers breaks the caller's side of the contract, not the
//! library's), now and then negative; flat counts small, negative, or past
//! 2^60; floats from a set of awkward values; pointers NULL, or into one of
//! four buffers at offsets that may misalign or overlap another argument.
//! Buffer contents are floats (NaN and infinities among them) or small
//! integers (ids out of range and negative among them).

use std::path::Path;

include!(concat!(env!("OUT_DIR"), "/calls.rs"));

/// Buffers per call, and each one's size: enough for any valid call with
/// dimensions up to MAX_DIM (products of four of them: 10^4) and counts up to
/// MAX_COUNT (strided matrices: (batch - 1) * stride + (rows - 1) * ld + cols
/// < 2 * 10 * 945), at any offset.
const BUFFERS: usize = 4;
const MAX_DIM: i32 = 10;
const MAX_COUNT: i64 = 945;
const BUFFER_BYTES: usize = 4 * 20_000 + 64;

/// Reads the fuzz input as a stream of choices (zeros once it runs out).
pub struct Args<'a> {
    data: &'a [u8],
    /// BUFFERS shared buffers, then one of small integers only.
    buffers: Vec<Vec<u64>>,
    /// The buffers some output pointer points into.
    outputs: Vec<usize>,
    /// The arguments drawn, when explaining a failure.
    trace: Option<Vec<String>>,
}

impl<'a> Args<'a> {
    fn new(data: &'a [u8]) -> Self {
        let mut args = Args { data, buffers: Vec::new(), outputs: Vec::new(), trace: None };
        for _ in 0..BUFFERS {
            let (contents, seed) = (args.byte(), args.byte() as u64 | (args.byte() as u64) << 8);
            args.buffers.push(fill(contents, seed));
        }
        args.buffers.push(fill(0, 7));
        args
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn word(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// A pointer into a buffer (or NULL), at an offset that may misalign it.
    fn pointer(&mut self) -> Option<(usize, *mut u8)> {
        let choice = self.byte();
        if choice % 16 == 15 {
            return None;
        }
        let buffer = choice as usize % BUFFERS;
        let offset = [0usize, 0, 0, 4, 8, 1, 2, 60][(choice / 16 % 8) as usize];
        Some((buffer, unsafe { self.buffers[buffer].as_mut_ptr().cast::<u8>().add(offset) }))
    }

    /// Indices in [-4, 24] (or NULL): for a call whose table must hold them.
    pub fn small_indices(&mut self) -> *const i32 {
        if self.byte() % 16 == 15 { std::ptr::null() } else { self.buffers[BUFFERS].as_ptr().cast() }
    }

    fn note<T: std::fmt::Debug>(&mut self, what: &str, value: T) -> T {
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{what} {value:?}"));
        }
        value
    }

    pub fn input<T>(&mut self) -> *const T {
        let p = self.pointer();
        self.note("in", p.map(|(b, p)| (b, p as usize % 64)));
        p.map_or(std::ptr::null(), |(_, p)| p.cast::<T>().cast_const())
    }

    pub fn output<T>(&mut self) -> *mut T {
        let p = self.pointer();
        self.note("out", p.map(|(b, p)| (b, p as usize % 64)));
        match p {
            Some((buffer, p)) => {
                self.outputs.push(buffer);
                p.cast()
            }
            None => std::ptr::null_mut(),
        }
    }

    /// A dimension: mostly 0..=MAX_DIM, sometimes negative.
    pub fn dim(&mut self) -> i32 {
        let v = self.dim_value();
        self.note("dim", v)
    }

    fn dim_value(&mut self) -> i32 {
        match self.byte() {
            b @ 0..=239 => (b % (MAX_DIM as u8 + 1)) as i32,
            b @ 240..=253 => -((b - 239) as i32),
            254 => i32::MIN,
            _ => -1,
        }
    }

    /// A flat element count: small, negative, or past what memory addresses.
    pub fn count(&mut self) -> i64 {
        let v = self.count_value();
        self.note("count", v)
    }

    fn count_value(&mut self) -> i64 {
        match self.byte() {
            b @ 0..=223 => (b as i64 % 64) * if b % 7 == 0 { MAX_COUNT / 63 } else { 1 },
            b @ 224..=247 => -((b - 223) as i64),
            248 => i64::MIN,
            249 => i64::MAX,
            250 => 1 << 62,
            251 => 1 << 61,
            252 => (1 << 60) + 1,
            _ => 1 << 63 >> 1,
        }
    }

    /// A data type: usually CUDANN_F32, otherwise any value.
    pub fn dtype(&mut self) -> i32 {
        let v = match self.byte() {
            0..=191 => cudann::CUDANN_F32,
            b => (b as i32 % 9) - 2,
        };
        self.note("dtype", v)
    }

    /// A 0/1 flag, sometimes another value.
    pub fn flag(&mut self) -> i32 {
        let v = match self.byte() {
            b @ 0..=239 => (b % 2) as i32,
            b => b as i32 - 245,
        };
        self.note("flag", v)
    }

    pub fn float(&mut self) -> f32 {
        let v = self.float_value();
        self.note("float", v)
    }

    fn float_value(&mut self) -> f32 {
        const AWKWARD: [f32; 16] = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-6, 0.9, 2.0, 1e30, -1e30, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE, 1e-40, 0.999];
        match self.byte() {
            b @ 0..=127 => AWKWARD[b as usize % 16],
            _ => f32::from_bits(self.word()),
        }
    }
}

/// A buffer of floats (awkward values among them) or of small integers.
fn fill(contents: u8, seed: u64) -> Vec<u64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words: Vec<u32> = (0..BUFFER_BYTES / 4)
        .map(|_| {
            let r = next();
            match contents % 4 {
                // Integers in [-4, 24]: ids and indices, in and out of range.
                0 => ((r % 29) as i32 - 4) as u32,
                // Floats, now and then NaN or infinite.
                1 if r % 97 == 0 => [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][(r / 97 % 3) as usize].to_bits(),
                _ => ((r % 20_001) as f32 / 1000.0 - 10.0).to_bits(),
            }
        })
        .collect();
    words.chunks(2).map(|w| w[0] as u64 | (*w.get(1).unwrap_or(&0) as u64) << 32).collect()
}

/// The call an input makes, argument by argument (for reports).
pub fn explain(data: &[u8]) -> String {
    let (&pick, rest) = data.split_first().unwrap_or((&0, &[]));
    let index = pick as usize % ENTRY_POINTS.len();
    let mut args = Args::new(rest);
    args.trace = Some(Vec::new());
    let code = unsafe { call(index, &mut args) };
    format!("{}({}) = {code}", ENTRY_POINTS[index], args.trace.unwrap_or_default().join(", "))
}

/// One call of the entry point the input picks, checked against the contract.
pub fn check_call(data: &[u8]) -> Result<(), String> {
    let (&pick, rest) = data.split_first().unwrap_or((&0, &[]));
    let index = pick as usize % ENTRY_POINTS.len();
    let name = ENTRY_POINTS[index];
    let mut args = Args::new(rest);
    let before = args.buffers.clone();
    let code = unsafe { call(index, &mut args) };
    let message = cudann::error::last_error();
    let changed: Vec<usize> = (0..=BUFFERS).filter(|&b| args.buffers[b] != before[b]).collect();
    match code {
        0 if !message.is_empty() => Err(format!("{name} returned 0 with the message {message:?}")),
        0 => match changed.iter().find(|b| !args.outputs.contains(b)) {
            Some(b) => Err(format!("{name} returned 0 and wrote buffer {b}, which no output points into")),
            None => Ok(()),
        },
        -1 | -2 if !changed.is_empty() => Err(format!("{name} returned {code} ({message}) and wrote buffers {changed:?}")),
        -1 | -2 if !message.starts_with(&format!("{name}: ")) => Err(format!("{name} returned {code} with the message {message:?}")),
        -1 | -2 => Ok(()),
        _ => Err(format!("{name} returned {code}: {message}")),
    }
}

/// A safetensors file of these bytes, opened, listed, described and read
/// through the library: never a crash, and every failure a -2 with a message.
pub fn check_checkpoint(bytes: &[u8], scratch: &Path) -> Result<(), String> {
    use cudann::*;
    use std::ffi::{CStr, CString};
    std::fs::write(scratch, bytes).map_err(|e| format!("cannot write {}: {e}", scratch.display()))?;
    let path = CString::new(scratch.to_str().expect("a UTF-8 path")).expect("no NUL");
    let refused = |code: i32, function: &str| -> Result<(), String> {
        let message = error::last_error();
        if code == CUDANN_INVALID_VALUE && message.starts_with(&format!("{function}: ")) { Ok(()) } else { Err(format!("{function}: {code} {message:?}")) }
    };
    let mut file = std::ptr::null_mut();
    let code = unsafe { cudann_safetensors_open(path.as_ptr(), &mut file) };
    if code != 0 {
        return refused(code, "cudann_safetensors_open");
    }
    let mut count = 0i64;
    unsafe { cudann_safetensors_count(file, &mut count) };
    for i in 0..count {
        let mut name = std::ptr::null();
        if unsafe { cudann_safetensors_name(file, i, &mut name) } != 0 {
            return Err(format!("cudann_safetensors_name({i}) failed: {}", error::last_error()));
        }
        let name = unsafe { CStr::from_ptr(name) }.to_owned();
        let (mut dtype, mut ndim, mut shape) = (0, 0, [0i64; 8]);
        let code = unsafe { cudann_safetensors_info(file, name.as_ptr(), &mut dtype, &mut ndim, shape.as_mut_ptr(), 8) };
        if code != 0 {
            refused(code, "cudann_safetensors_info")?;
            continue;
        }
        let elements: i64 = shape[..ndim as usize].iter().product();
        let width = [4usize, 2, 2, 4, 8, 8, 1][dtype as usize];
        let mut data = vec![0u64; (elements as usize * width).div_ceil(8)];
        let code = unsafe { cudann_safetensors_read(file, name.as_ptr(), dtype, data.as_mut_ptr().cast(), elements, std::ptr::null_mut()) };
        if code != 0 {
            return Err(format!("reading {name:?} ({elements} elements of type {dtype}) failed: {}", error::last_error()));
        }
    }
    if unsafe { cudann_safetensors_close(file) } != 0 {
        return Err(format!("close failed: {}", error::last_error()));
    }
    Ok(())
}
