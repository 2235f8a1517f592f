//! Embedding lookup and its backward.
mod common;
use common::*;
use cudann::*;

#[test]
fn embedding_gathers_rows_and_zeroes_padding() {
    let mut rng = Rng::new(60);
    for (n, vocab, dim) in [(1, 1, 1), (7, 5, 3), (100, 37, 64), (1000, 3, 33)] {
        let table = rng.vec(vocab * dim, 1.0);
        let ids: Vec<i32> = (0..n).map(|i| if i % 5 == 4 { -1 } else { rng.below(vocab) as i32 }).collect();
        let mut y = poisoned(n * dim);
        assert_ok(unsafe { cudann_embedding(ids.as_ptr(), table.as_ptr().cast(), y.as_mut_ptr().cast(), n as i32, vocab as i32, dim as i32, CUDANN_F32, NULL) });
        for (i, &id) in ids.iter().enumerate() {
            let row = &y[i * dim..(i + 1) * dim];
            if id < 0 {
                assert!(row.iter().all(|&v| v == 0.0), "padding row {i}");
            } else {
                assert_eq!(row, &table[id as usize * dim..(id as usize + 1) * dim], "row {i}");
            }
        }
    }
}

/// The backward against finite differences of ⟨dy, embedding(table)⟩: a sum
/// over the ids naming each row (duplicates included), zero elsewhere.
#[test]
fn embedding_backward_matches_finite_differences() {
    let mut rng = Rng::new(61);
    for (n, vocab, dim) in [(1, 1, 1), (9, 4, 3), (50, 20, 7)] {
        let table = rng.vec(vocab * dim, 1.0);
        let ids: Vec<i32> = (0..n).map(|i| if i % 7 == 6 { -3 } else { rng.below(vocab) as i32 }).collect();
        let dy = rng.vec(n * dim, 1.0);
        let mut d_table = poisoned(vocab * dim);
        assert_ok(unsafe { cudann_embedding_backward(ids.as_ptr(), dy.as_ptr(), d_table.as_mut_ptr(), n as i32, vocab as i32, dim as i32, NULL) });
        let dy64 = f64s(&dy);
        let want = numeric_grad(&f64s(&table), |t| {
            let y: Vec<f64> = ids.iter().flat_map(|&id| (0..dim).map(move |j| if id < 0 { 0.0 } else { t[id as usize * dim + j] })).collect();
            dot64(&dy64, &y)
        });
        assert_close(&d_table, &want, 1e-6, 1e-6, &format!("embedding_backward {n} ids, vocab {vocab}"));
    }
}

#[test]
fn embedding_bad_arguments() {
    let table = vec![1.0f32; 12];
    let mut y = poisoned(8);
    let ids = [0i32, 3];
    let f = CUDANN_F32;
    unsafe {
        let code = cudann_embedding(ids.as_ptr(), table.as_ptr().cast(), y.as_mut_ptr().cast(), 2, 3, 4, f, NULL);
        assert_invalid(code, "cudann_embedding", "ids[1] = 3 is outside [0, vocab_size = 3)");
        let code = cudann_embedding(ids.as_ptr(), table.as_ptr().cast(), y.as_mut_ptr().cast(), 2, 4, 4, CUDANN_I32, NULL);
        assert_invalid(code, "cudann_embedding", "dtype must be CUDANN_F32 (0), CUDANN_F16 (1) or CUDANN_BF16 (2) (got 3)");
        let code = cudann_embedding(ids.as_ptr(), std::ptr::null(), y.as_mut_ptr().cast(), 2, 4, 4, f, NULL);
        assert_invalid(code, "cudann_embedding", "table is NULL");
        let code = cudann_embedding_backward(ids.as_ptr(), table.as_ptr(), y.as_mut_ptr(), 2, 2, 4, NULL);
        assert_invalid(code, "cudann_embedding_backward", "ids[1] = 3 is outside [0, vocab_size = 2)");
        let code = cudann_embedding_backward(ids.as_ptr(), table.as_ptr(), y.as_mut_ptr(), -2, 2, 4, NULL);
        assert_invalid(code, "cudann_embedding_backward", "n_ids must be >= 0");
        let null = std::ptr::null_mut();
        assert_ok(cudann_embedding(std::ptr::null(), std::ptr::null(), null, 0, 5, 4, f, NULL));
    }
    assert_untouched(&y, "output");
}
