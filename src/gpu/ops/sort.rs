//! The stable counting sort of sort.cu (integers only, so exact): MoE
//! dispatch groups its pairs by expert, the embedding backward its ids by
//! their high bits.

use super::{line, single};
use crate::error::{Error, Result};
use crate::gpu::driver::{Arg, DevPtr, Stream};
use crate::gpu::scratch::Scratch;
use crate::gpu::Gpu;

use Arg::{I32, Ptr};

/// Items a chunk of the sort (SORT_CHUNK in sort.cu).
const CHUNK: usize = 1024;

/// Counts (digit, chunk) up to which every place block sums the counts before
/// its chunk itself: a launch fewer than a prefix-sum pass, for a read of the
/// counts per block (the embedding backward's 65536 ids of a 32000-row
/// vocabulary: 16000 counts; MoE's 131072 pairs over 8 experts: 1024).
const FEW_SLOTS: usize = 32768;

/// One stable counting-sort pass over items `q < n`: item `q` with `key =
/// keys[q]` in `[0, bound)` goes to `order` by the digit `(key >> shift) %
/// buckets`, in `q` order within a digit, and the rows after the placed
/// items get -1; with `sorted_keys` non-zero, `sorted_keys[row]` gets the
/// key of `order[row]` for the placed items; with `offsets` non-zero, `offsets[d]` gets digit `d`'s first
/// row (`buckets + 1` entries); with `inv` non-zero, `inv[q]` gets `q`'s row
/// (-1: dropped).
/// Safety: the pointers are device memory of the sizes these imply.
pub unsafe fn counting_sort_pass(
    g: &Gpu, s: Stream, [keys, order, sorted_keys, offsets, inv]: [DevPtr; 5], n: usize, bound: usize, shift: u32, buckets: usize,
) -> Result<()> {
    let chunks = n.div_ceil(CHUNK);
    let slots = buckets * chunks; // (digit, chunk) counts, digit-major
    if slots >= i32::MAX as usize {
        return Err(Error::Internal(format!("{buckets} groups x {chunks} chunks of items is too many for the GPU sort")));
    }
    let scanned = slots > FEW_SLOTS;
    let (items, bound, shift, buckets, chunks) = (I32(n as i32), I32(bound as i32), I32(shift as i32), I32(buckets as i32), I32(chunks as i32));
    let blocks = line(n.div_ceil(CHUNK).clamp(1, 65535), 1024);
    let mut scratch = Scratch::new(s);
    let counts = scratch.alloc((slots + 1) * std::mem::size_of::<i32>())?;
    unsafe {
        g.launch("sort_count_i32", blocks, s, &mut [Ptr(keys), Ptr(counts), items, bound, shift, buckets, chunks])?;
        if scanned {
            g.launch("sort_prefix_sum_i32", single(1024), s, &mut [Ptr(counts), I32(slots as i32)])?;
        }
        let args = &mut [Ptr(keys), Ptr(counts), Ptr(order), Ptr(sorted_keys), Ptr(offsets), Ptr(inv), items, bound, shift, buckets, chunks, I32(scanned as i32)];
        g.launch("sort_place_i32", blocks, s, args)
    }
}
