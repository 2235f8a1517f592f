//! Embedding lookup and its backward.

use rayon::prelude::*;

use super::optim::{scatter_add, zero};

/// output[i, :] = table[ids[i], :]; a negative id gives a row of zeros. Ids
/// must be < the table's height (checked by the caller).
/// Rows of any element type are copied as they are (zero bits are +0).
pub fn embedding<T: Copy + Default + Send + Sync>(ids: &[i32], table: &[T], output: &mut [T], dim: usize) {
    output.par_chunks_mut(dim).zip(ids).for_each(|(row, &id)| match usize::try_from(id) {
        Ok(id) => row.copy_from_slice(&table[id * dim..(id + 1) * dim]),
        Err(_) => row.fill(T::default()),
    });
}

/// d_table = Σ over i with ids[i] = v of d_output[i, :] for every row v (rows no
/// id names are zeros; negative ids are skipped), deterministically.
pub fn embedding_backward(ids: &[i32], d_output: &[f32], d_table: &mut [f32], dim: usize) {
    zero(d_table);
    scatter_add(d_output, ids, d_table, dim);
}
