//! Communicators: one rank on any backend and memory (collectives are exact
//! copies), the checks, and (with two GPUs and NCCL) a two-rank all-reduce and
//! broadcast driven by two threads of one process. The GPU parts skip visibly.
mod common;
use std::ffi::c_void;

use common::device::{Dev, Stream, present};
use common::*;
use cudann::*;

fn comm_id() -> [u8; 128] {
    let mut id = [0u8; 128];
    unsafe { assert_ok(cudann_comm_id(id.as_mut_ptr().cast())) };
    id
}

fn init(nranks: i32, rank: i32, id: &[u8; 128]) -> *mut c_void {
    let mut comm = std::ptr::null_mut();
    unsafe { assert_ok(cudann_comm_init(&mut comm, nranks, rank, id.as_ptr().cast())) };
    comm
}

#[test]
fn one_rank_collectives_are_exact_copies_on_host_memory() {
    let comm = init(1, 0, &comm_id());
    let mut rng = Rng::new(5);
    let x = with_nan(rng.vec(1001, 3.0));
    for op in [CUDANN_SUM, CUDANN_AVG] {
        let mut y = poisoned(x.len());
        unsafe { assert_ok(cudann_all_reduce(x.as_ptr(), y.as_mut_ptr(), x.len() as i64, op, comm, NULL)) };
        assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "all_reduce op {op} with one rank is a copy");
        // In place: nothing changes.
        let mut z = x.clone();
        unsafe { assert_ok(cudann_all_reduce(z.as_ptr(), z.as_mut_ptr(), z.len() as i64, op, comm, NULL)) };
        assert!(x.iter().zip(&z).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    let mut y = poisoned(x.len());
    unsafe { assert_ok(cudann_broadcast(x.as_ptr(), y.as_mut_ptr(), x.len() as i64, 0, comm, NULL)) };
    assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "broadcast with one rank is a copy");
    unsafe {
        assert_ok(cudann_all_reduce(std::ptr::null(), std::ptr::null_mut(), 0, CUDANN_SUM, comm, NULL));
        assert_ok(cudann_comm_destroy(comm));
    }
}

/// A NaN among the values: copies keep its bits.
fn with_nan(mut x: Vec<f32>) -> Vec<f32> {
    x[7] = f32::from_bits(0x7fa0_0001);
    x
}

#[test]
fn bad_arguments_are_refused_and_leave_outputs_untouched() {
    let id = comm_id();
    let mut comm = std::ptr::null_mut();
    unsafe {
        assert_invalid(cudann_comm_init(&mut comm, 0, 0, id.as_ptr().cast()), "cudann_comm_init", "nranks");
        assert_invalid(cudann_comm_init(&mut comm, 2, 2, id.as_ptr().cast()), "cudann_comm_init", "rank");
        assert_invalid(cudann_comm_init(&mut comm, 1, -1, id.as_ptr().cast()), "cudann_comm_init", "rank");
        assert_invalid(cudann_comm_init(&mut comm, 1, 0, std::ptr::null()), "cudann_comm_init", "id");
        assert_invalid(cudann_comm_init(std::ptr::null_mut(), 1, 0, id.as_ptr().cast()), "cudann_comm_init", "comm");
        assert_invalid(cudann_comm_id(std::ptr::null_mut()), "cudann_comm_id", "id");
    }
    assert!(comm.is_null(), "nothing written by a failing init");
    let comm = init(1, 0, &id);
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let mut y = poisoned(4);
    unsafe {
        assert_invalid(cudann_all_reduce(x.as_ptr(), y.as_mut_ptr(), 4, 2, comm, NULL), "cudann_all_reduce", "op");
        assert_invalid(cudann_all_reduce(x.as_ptr(), y.as_mut_ptr(), -1, CUDANN_SUM, comm, NULL), "cudann_all_reduce", "n");
        assert_invalid(cudann_all_reduce(std::ptr::null(), y.as_mut_ptr(), 4, CUDANN_SUM, comm, NULL), "cudann_all_reduce", "send");
        assert_invalid(cudann_broadcast(x.as_ptr(), y.as_mut_ptr(), 4, 1, comm, NULL), "cudann_broadcast", "root");
        // A partial overlap.
        let mut buf = vec![0.0f32; 8];
        assert_invalid(cudann_all_reduce(buf.as_ptr(), buf.as_mut_ptr().add(1), 4, CUDANN_SUM, comm, NULL), "cudann_all_reduce", "overlap");
    }
    assert_untouched(&y, "recv after refused calls");
    unsafe {
        assert_ok(cudann_comm_destroy(comm));
        assert_invalid(cudann_comm_destroy(comm), "cudann_comm_destroy", "not a live communicator");
        assert_invalid(cudann_all_reduce(x.as_ptr(), y.as_mut_ptr(), 4, CUDANN_SUM, comm, NULL), "cudann_all_reduce", "not a live communicator");
        assert_invalid(cudann_comm_destroy(0x1234 as *mut c_void), "cudann_comm_destroy", "not a live communicator");
    }
}

#[test]
fn more_ranks_need_nccl_and_a_gpu() {
    let id = comm_id();
    if id[..14] != *b"cudann solo id" {
        // NCCL and a GPU: a second rank would never join, and init would wait for it.
        eprintln!("SKIPPED more_ranks_need_nccl_and_a_gpu: this machine has NCCL and a GPU");
        return;
    }
    // No NCCL or no GPU here: the id serves one rank only.
    let mut comm = std::ptr::null_mut();
    let code = unsafe { cudann_comm_init(&mut comm, 2, 0, id.as_ptr().cast()) };
    assert_invalid(code, "cudann_comm_init", "one rank only");
    assert!(comm.is_null(), "nothing written by a refused init");
}

#[test]
fn one_rank_collectives_on_device_memory() {
    if !present("one_rank_collectives_on_device_memory") {
        return;
    }
    let s = Stream::new();
    let comm = init(1, 0, &comm_id());
    let x = with_nan(Rng::new(6).vec(4097, 1.0));
    let (dx, dy) = (Dev::from(&x), Dev::from(&poisoned(x.len())));
    unsafe { assert_ok(cudann_all_reduce(dx.p(), dy.p(), x.len() as i64, CUDANN_AVG, comm, s.raw())) };
    s.sync();
    assert!(dy.read().iter().zip(&x).all(|(a, b)| a.to_bits() == b.to_bits()));
    unsafe { assert_ok(cudann_comm_destroy(comm)) };
}

#[test]
fn two_gpus_driven_by_two_threads_sum_and_broadcast() {
    if !present("two_gpus_driven_by_two_threads_sum_and_broadcast") {
        return;
    }
    let mut count = 0;
    unsafe { assert_ok(cudann_device_count(&mut count)) };
    if count < 2 {
        eprintln!("SKIPPED two_gpus_driven_by_two_threads_sum_and_broadcast: {count} GPU(s)");
        return;
    }
    let id = comm_id();
    assert_ne!(&id[..14], b"cudann solo id", "a GPU machine with NCCL makes NCCL ids");
    let n = 1 << 20;
    let inputs: Vec<Vec<f32>> = (0..2).map(|r| Rng::new(10 + r).vec(n, 1.0)).collect();
    let results: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2).map(|rank| {
            let (id, x) = (id, &inputs[rank]);
            scope.spawn(move || {
                assert_ok(cudann_set_device(rank as i32));
                let comm = init(2, rank as i32, &id);
                let mut p: *mut c_void = std::ptr::null_mut();
                unsafe { assert_ok(cudann_malloc(&mut p, (n * 4) as i64)) };
                let (mut sum, mut avg, mut bcast) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
                unsafe {
                    for (op, out) in [(CUDANN_SUM, &mut sum), (CUDANN_AVG, &mut avg)] {
                        assert_ok(cudann_memcpy(p, x.as_ptr().cast(), (n * 4) as i64, NULL));
                        assert_ok(cudann_all_reduce(p.cast(), p.cast(), n as i64, op, comm, NULL));
                        assert_ok(cudann_memcpy(out.as_mut_ptr().cast(), p, (n * 4) as i64, NULL));
                    }
                    assert_ok(cudann_memcpy(p, x.as_ptr().cast(), (n * 4) as i64, NULL));
                    assert_ok(cudann_broadcast(p.cast(), p.cast(), n as i64, 1, comm, NULL));
                    assert_ok(cudann_memcpy(bcast.as_mut_ptr().cast(), p, (n * 4) as i64, NULL));
                }
                assert_ok(cudann_device_synchronize());
                unsafe {
                    assert_ok(cudann_free(p));
                    assert_ok(cudann_comm_destroy(comm));
                }
                (sum, avg, bcast)
            })
        }).collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
    });
    for (rank, (sum, avg, bcast)) in results.iter().enumerate() {
        let want_sum: Vec<f64> = (0..n).map(|i| inputs[0][i] as f64 + inputs[1][i] as f64).collect();
        assert_close(sum, &want_sum, 1e-6, 1e-6, &format!("rank {rank} sum"));
        assert_close(avg, &want_sum.iter().map(|v| v / 2.0).collect::<Vec<_>>(), 1e-6, 1e-6, &format!("rank {rank} avg"));
        assert!(bcast.iter().zip(&inputs[1]).all(|(a, b)| a.to_bits() == b.to_bits()), "rank {rank} broadcast from rank 1");
    }
}
