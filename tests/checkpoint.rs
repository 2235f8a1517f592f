//! Safetensors checkpoints: files written by hand in the format (independent of
//! the crate the library uses) read back, the library's own files read back,
//! and malformed files, bad handles and bad arguments refused cleanly.
mod common;
use common::*;
use cudann::*;
use std::ffi::{CStr, CString, c_char};
use std::path::PathBuf;

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cudann-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn c(path: &std::path::Path) -> CString {
    CString::new(path.to_str().unwrap()).unwrap()
}

/// A safetensors file built byte by byte: 8-byte little-endian header length,
/// the JSON header, then the data.
fn handmade(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{\"__metadata__\":{\"by\":\"test\"}");
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header += &format!(",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", shape.join(","), data.len(), data.len() + bytes.len());
        data.extend_from_slice(bytes);
    }
    header.push('}');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    file
}

fn le_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

unsafe fn open(path: &std::path::Path) -> *mut CudannSafetensors {
    let mut file = std::ptr::null_mut();
    assert_ok(unsafe { cudann_safetensors_open(c(path).as_ptr(), &mut file) });
    file
}

/// (dtype, shape) of a tensor.
unsafe fn info(file: *mut CudannSafetensors, name: &str) -> (i32, Vec<i64>) {
    let (mut dtype, mut ndim, mut shape) = (-1, -1, [0i64; 8]);
    let name = CString::new(name).unwrap();
    assert_ok(unsafe { cudann_safetensors_info(file, name.as_ptr(), &mut dtype, &mut ndim, shape.as_mut_ptr(), 8) });
    (dtype, shape[..ndim as usize].to_vec())
}

#[test]
fn reads_a_handmade_file() {
    let w = Rng::new(100).vec(6, 1.0);
    let ids: Vec<u8> = [3i32, -1, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = temp_path("handmade.safetensors");
    std::fs::write(&path, handmade(&[("layer.w", "F32", &[2, 3], le_bytes(&w)), ("ids", "I32", &[3], ids), ("empty", "F32", &[0, 4], vec![])])).unwrap();
    unsafe {
        let file = open(&path);
        let mut count = -1;
        assert_ok(cudann_safetensors_count(file, &mut count));
        assert_eq!(count, 3);
        let mut names = Vec::new();
        for i in 0..count {
            let mut name: *const c_char = std::ptr::null();
            assert_ok(cudann_safetensors_name(file, i, &mut name));
            names.push(CStr::from_ptr(name).to_str().unwrap().to_string());
        }
        assert_eq!(names, ["layer.w", "ids", "empty"], "names in file order");
        assert_eq!(info(file, "layer.w"), (CUDANN_F32, vec![2, 3]));
        assert_eq!(info(file, "ids"), (CUDANN_I32, vec![3]));
        assert_eq!(info(file, "empty"), (CUDANN_F32, vec![0, 4]));
        let mut got = poisoned(6);
        let name = CString::new("layer.w").unwrap();
        assert_ok(cudann_safetensors_read(file, name.as_ptr(), CUDANN_F32, got.as_mut_ptr().cast(), 6, NULL));
        assert_eq!(got, w);
        let mut got_ids = [0i32; 3];
        assert_ok(cudann_safetensors_read(file, c"ids".as_ptr(), CUDANN_I32, got_ids.as_mut_ptr().cast(), 3, NULL));
        assert_eq!(got_ids, [3, -1, 7]);
        assert_ok(cudann_safetensors_read(file, c"empty".as_ptr(), CUDANN_F32, std::ptr::null_mut(), 0, NULL));
        assert_ok(cudann_safetensors_close(file));
    }
}

#[test]
fn writes_files_that_read_back_byte_for_byte() {
    let mut rng = Rng::new(101);
    let (a, b) = (rng.vec(12, 1.0), rng.vec(1, 1.0));
    let path = temp_path("written.safetensors");
    unsafe {
        let mut writer = std::ptr::null_mut();
        assert_ok(cudann_safetensors_writer_create(&mut writer));
        assert_ok(cudann_safetensors_writer_add(writer, c"a".as_ptr(), CUDANN_F32, 3, [2i64, 3, 2].as_ptr(), a.as_ptr().cast(), NULL));
        assert_ok(cudann_safetensors_writer_add(writer, c"scalar".as_ptr(), CUDANN_F32, 0, std::ptr::null(), b.as_ptr().cast(), NULL));
        let code = cudann_safetensors_writer_add(writer, c"a".as_ptr(), CUDANN_F32, 1, [1i64].as_ptr(), a.as_ptr().cast(), NULL);
        assert_invalid(code, "cudann_safetensors_writer_add", "a tensor named \"a\" was already added");
        assert_ok(cudann_safetensors_writer_save(writer, c(&path).as_ptr()));
        assert_ok(cudann_safetensors_writer_free(writer));
        let file = open(&path);
        assert_eq!(info(file, "a"), (CUDANN_F32, vec![2, 3, 2]));
        assert_eq!(info(file, "scalar"), (CUDANN_F32, vec![]));
        let mut got = poisoned(12);
        assert_ok(cudann_safetensors_read(file, c"a".as_ptr(), CUDANN_F32, got.as_mut_ptr().cast(), 12, NULL));
        assert_eq!(got, a);
        assert_ok(cudann_safetensors_close(file));
    }
    // The header is plain safetensors JSON, the data little-endian after it.
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(header.contains("\"a\":{\"dtype\":\"F32\",\"shape\":[2,3,2]"), "{header}");
    assert_eq!(bytes.len(), 8 + n + 13 * 4);
}

#[test]
fn malformed_files_are_refused_with_a_reason() {
    let good = handmade(&[("w", "F32", &[4], le_bytes(&[1.0, 2.0, 3.0, 4.0]))]);
    // Offsets that claim more data than the shape holds (the file has it).
    let bad_offsets = handmade(&[("w", "F32", &[4], le_bytes(&[1.0; 5]))]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() - 3].to_vec(), "not a valid safetensors file"),
        ("too-short", vec![1, 2, 3], "header too small"),
        ("huge-header", [u64::MAX.to_le_bytes().to_vec(), b"{}".to_vec()].concat(), "not a valid safetensors file"),
        ("not-json", [8u64.to_le_bytes().to_vec(), b"{notjson".to_vec()].concat(), "invalid JSON"),
        ("bad-offsets", bad_offsets, "not a valid safetensors file"),
        ("trailing", [good.clone(), vec![0; 5]].concat(), "not a valid safetensors file"),
    ];
    for (name, bytes, fragment) in cases {
        let path = temp_path(&format!("{name}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let sentinel = 0x5a5a as *mut CudannSafetensors;
        let mut file = sentinel;
        assert_invalid(unsafe { cudann_safetensors_open(c(&path).as_ptr(), &mut file) }, "cudann_safetensors_open", fragment);
        assert_eq!(file, sentinel, "{name}: the handle was written");
    }
    let mut file = std::ptr::null_mut();
    let missing = temp_path("missing.safetensors");
    assert_invalid(unsafe { cudann_safetensors_open(c(&missing).as_ptr(), &mut file) }, "cudann_safetensors_open", "cannot open");
}

#[test]
fn bad_handles_and_arguments_are_refused() {
    let path = temp_path("args.safetensors");
    std::fs::write(&path, handmade(&[("w", "F32", &[2, 2], le_bytes(&[1.0; 4])), ("h", "F16", &[2], vec![0; 4])])).unwrap();
    unsafe {
        let file = open(&path);
        let mut out = poisoned(4);
        let code = cudann_safetensors_read(file, c"w".as_ptr(), CUDANN_F32, out.as_mut_ptr().cast(), 3, NULL);
        assert_invalid(code, "cudann_safetensors_read", "has 4 elements, not count = 3");
        let code = cudann_safetensors_read(file, c"w".as_ptr(), CUDANN_I32, out.as_mut_ptr().cast(), 4, NULL);
        assert_invalid(code, "cudann_safetensors_read", "is F32, not the dtype asked for");
        let code = cudann_safetensors_read(file, c"nope".as_ptr(), CUDANN_F32, out.as_mut_ptr().cast(), 4, NULL);
        assert_invalid(code, "cudann_safetensors_read", "no tensor named \"nope\"");
        assert_untouched(&out, "data");
        let (mut dtype, mut ndim, mut shape) = (-1, -1, [0i64; 1]);
        let code = cudann_safetensors_info(file, c"w".as_ptr(), &mut dtype, &mut ndim, shape.as_mut_ptr(), 1);
        assert_invalid(code, "cudann_safetensors_info", "more than max_dims (1)");
        assert_eq!((dtype, ndim), (-1, -1));
        assert_eq!(info(file, "h"), (CUDANN_F16, vec![2]));
        let mut name: *const c_char = std::ptr::null();
        assert_invalid(cudann_safetensors_name(file, 2, &mut name), "cudann_safetensors_name", "index must be in 0..2");
        assert_ok(cudann_safetensors_close(file));
        // Closed, twice closed, and made-up handles.
        let mut count = 0;
        assert_invalid(cudann_safetensors_count(file, &mut count), "cudann_safetensors_count", "not an open handle");
        assert_invalid(cudann_safetensors_close(file), "cudann_safetensors_close", "not an open handle");
        assert_invalid(cudann_safetensors_count(0xdead as *const _, &mut count), "cudann_safetensors_count", "not an open handle");
        assert_ok(cudann_safetensors_close(std::ptr::null_mut()));
        assert_invalid(cudann_safetensors_open(std::ptr::null(), &mut std::ptr::null_mut()), "cudann_safetensors_open", "path is NULL");
        let mut writer = std::ptr::null_mut();
        assert_ok(cudann_safetensors_writer_create(&mut writer));
        let code = cudann_safetensors_writer_add(writer, c"x".as_ptr(), 9, 1, [2i64].as_ptr(), out.as_ptr().cast(), NULL);
        assert_invalid(code, "cudann_safetensors_writer_add", "dtype must be one of");
        let code = cudann_safetensors_writer_add(writer, c"x".as_ptr(), CUDANN_F32, 1, [-2i64].as_ptr(), out.as_ptr().cast(), NULL);
        assert_invalid(code, "cudann_safetensors_writer_add", "shape[0] must be >= 0");
        let code = cudann_safetensors_writer_save(writer, c"/nonexistent-dir/x.safetensors".as_ptr());
        assert_invalid(code, "cudann_safetensors_writer_save", "cannot write");
        assert_ok(cudann_safetensors_writer_free(writer));
        assert_invalid(cudann_safetensors_writer_free(writer), "cudann_safetensors_writer_free", "not an open handle");
    }
}
