//! Device memory and streams for the GPU tests, straight from the driver.

use std::ffi::c_void;

use cudarc::driver::sys;

/// The GPU tests' gate: true when a usable GPU exists; otherwise says so
/// visibly (written past the test harness's capture, which takes only the
/// print macros), since a skipped GPU test must show in the log.
pub fn present(test: &str) -> bool {
    use std::io::Write;
    match cudann::gpu::get() {
        Ok(_) => true,
        Err(why) => {
            let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: no usable GPU ({why})");
            false
        }
    }
}

fn ok(result: sys::CUresult) {
    assert_eq!(result, sys::CUresult::CUDA_SUCCESS);
}

/// A device buffer of T freed on drop.
pub struct Dev<T> {
    pub ptr: sys::CUdeviceptr,
    pub len: usize,
    _t: std::marker::PhantomData<T>,
}

/// Makes the library's context current on this thread (test threads are new).
fn current() {
    cudann::gpu::get().expect("a usable GPU");
}

impl<T: Copy + Default> Dev<T> {
    pub fn from(host: &[T]) -> Self {
        current();
        let mut ptr = 0;
        let bytes = std::mem::size_of_val(host).max(4);
        unsafe {
            ok(sys::cuMemAlloc_v2(&mut ptr, bytes));
            if !host.is_empty() {
                ok(sys::cuMemcpyHtoD_v2(ptr, host.as_ptr().cast(), std::mem::size_of_val(host)));
                // From pageable memory the copy may return before its DMA lands, and
                // the tests' streams do not wait for the legacy stream.
                ok(sys::cuCtxSynchronize());
            }
        }
        Dev { ptr, len: host.len(), _t: std::marker::PhantomData }
    }

    /// Synchronizes the device, then copies the buffer back.
    pub fn read(&self) -> Vec<T> {
        current();
        let mut host = vec![T::default(); self.len];
        unsafe {
            ok(sys::cuCtxSynchronize());
            ok(sys::cuMemcpyDtoH_v2(host.as_mut_ptr().cast(), self.ptr, std::mem::size_of_val(&host[..])));
        }
        host
    }

    pub fn p(&self) -> *mut T {
        self.ptr as *mut T
    }
}

impl<T> Drop for Dev<T> {
    fn drop(&mut self) {
        unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

/// A non-default stream, destroyed on drop.
pub struct Stream(pub sys::CUstream);

impl Stream {
    pub fn new() -> Self {
        current();
        let mut s = std::ptr::null_mut();
        ok(unsafe { sys::cuStreamCreate(&mut s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32) });
        Stream(s)
    }
    pub fn raw(&self) -> *mut c_void {
        self.0.cast()
    }
    pub fn sync(&self) {
        ok(unsafe { sys::cuStreamSynchronize(self.0) });
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        unsafe { sys::cuStreamDestroy_v2(self.0) };
    }
}

/// Captures what `f` enqueues on `stream` into a graph, replays it `times`
/// times, and synchronizes.
pub fn capture_and_replay(stream: &Stream, times: usize, f: impl FnOnce()) {
    capture_and_replay_each(stream, times, f, || ());
}

/// As [`capture_and_replay`], calling `after` once each replay has finished
/// (to read what it left in device memory).
pub fn capture_and_replay_each(stream: &Stream, times: usize, f: impl FnOnce(), mut after: impl FnMut()) {
    unsafe {
        ok(sys::cuStreamBeginCapture_v2(stream.0, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
        f();
        let mut graph = std::ptr::null_mut();
        ok(sys::cuStreamEndCapture(stream.0, &mut graph));
        let mut exec = std::ptr::null_mut();
        ok(sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0));
        for _ in 0..times {
            ok(sys::cuGraphLaunch(exec, stream.0));
            stream.sync();
            after();
        }
        ok(sys::cuGraphExecDestroy(exec));
        ok(sys::cuGraphDestroy(graph));
    }
}

/// Runs `call(q, k, v, extra, out, stream)` on device copies of the inputs (on
/// stream `s`) and on the host arrays, each into a poisoned output the size of
/// q (extra: one more input, NULL when absent): (device result, host result).
fn on_both<C>(s: &Stream, q: &[f32], k: &[f32], v: &[f32], extra: Option<&[f32]>, call: C) -> (Vec<f32>, Vec<f32>)
where
    C: Fn(*const f32, *const f32, *const f32, *const f32, *mut f32, *mut c_void) -> i32,
{
    let (dq, dk, dv, dout) = (Dev::from(q), Dev::from(k), Dev::from(v), Dev::from(&super::poisoned(q.len())));
    let dextra = extra.map(Dev::from);
    let mut out = super::poisoned(q.len());
    super::assert_ok(call(dq.p(), dk.p(), dv.p(), dextra.as_ref().map_or(std::ptr::null(), |d| d.p()), dout.p(), s.raw()));
    super::assert_ok(call(q.as_ptr(), k.as_ptr(), v.as_ptr(), extra.map_or(std::ptr::null(), <[f32]>::as_ptr), out.as_mut_ptr(), super::NULL));
    s.sync();
    (dout.read(), out)
}

/// N(0, 1) query, key and value tensors [batch, seq, heads, d], and the dims
/// (batch, seq, heads, d) the attention helpers take.
pub fn random_qkv(rng: &mut super::Rng, (batch, seq, heads, d): (usize, usize, usize, usize)) -> (Vec<f32>, Vec<f32>, Vec<f32>, (i32, i32, i32, i32)) {
    let n = batch * seq * heads * d;
    (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0), (batch as i32, seq as i32, heads as i32, d as i32))
}

/// cuda_flash_attention at scale 1/sqrt(head_dim) on device copies of q, k, v
/// (on stream `s`) and on the host arrays: (device result, host result).
pub fn flash_both(s: &Stream, q: &[f32], k: &[f32], v: &[f32], dims: (i32, i32, i32, i32), causal: i32) -> (Vec<f32>, Vec<f32>) {
    let (b, seq, heads, d) = dims;
    let scale = 1.0 / (d as f32).sqrt();
    on_both(s, q, k, v, None, |q, k, v, _, out, st| unsafe { cudann::cuda_flash_attention(q, k, v, out, b, seq, heads, d, scale, causal, st) })
}

/// The additive [seq, seq] mask of the attention tests: query seq / 2 sees no key
/// (its output must be zeros), every other query the keys up to 3 past itself.
pub fn test_mask(seq: usize) -> Vec<f32> {
    (0..seq * seq).map(|x| if x / seq == seq / 2 || x % seq > x / seq + 3 { f32::NEG_INFINITY } else { 0.0 }).collect()
}

/// cuda_mqa_attention (one shared KV head kv, vv; mask NULL = causal) on device
/// copies (on stream `s`) and on the host arrays: (device result, host result).
pub fn mqa_both(s: &Stream, q: &[f32], kv: &[f32], vv: &[f32], mask: Option<&[f32]>, dims: (i32, i32, i32, i32)) -> (Vec<f32>, Vec<f32>) {
    let (b, seq, heads, d) = dims;
    let scale = 1.0 / (d as f32).sqrt();
    on_both(s, q, kv, vv, mask, |q, k, v, m, out, st| unsafe { cudann::cuda_mqa_attention(q, k, v, out, m, b, seq, heads, d, scale, st) })
}
