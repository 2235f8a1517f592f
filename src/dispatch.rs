//! Where a call runs. All-device operands run on the GPU, enqueued on the
//! caller's stream; host operands run on the CPU, or on the GPU through staging
//! buffers when the cost model (or `CUDANN_BACKEND=cuda`) says so; without a
//! usable GPU everything runs on the CPU.

use std::ffi::c_void;
use std::sync::OnceLock;

use crate::check::{self, Region};
use crate::cpu::convert::Float;
use crate::error::{Error, Result};
use crate::gpu::driver::DevPtr;
use crate::gpu::memory::{self, Place};
use crate::gpu::widen::{self, Use};
use crate::gpu::{self, Gpu};
use crate::handles;

/// What `CUDANN_BACKEND` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    Auto,
    Cpu,
    Cuda,
}

/// The caller's `CUstream` (NULL = default stream); the CPU backend ignores it.
pub type Stream = *mut c_void;

fn parse(value: Option<&str>) -> std::result::Result<Requested, String> {
    match value.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("auto") => Ok(Requested::Auto),
        Some("cpu") => Ok(Requested::Cpu),
        Some("cuda") | Some("gpu") => Ok(Requested::Cuda),
        Some(other) => Err(format!("CUDANN_BACKEND must be auto, cpu or cuda (got '{other}')")),
    }
}

/// `CUDANN_BACKEND`, read once at the first call (the environment of a running
/// process is not re-read; set it before loading the library).
pub fn requested() -> Result<Requested> {
    static REQUESTED: OnceLock<std::result::Result<Requested, String>> = OnceLock::new();
    REQUESTED
        .get_or_init(|| parse(std::env::var("CUDANN_BACKEND").ok().as_deref()))
        .clone()
        .map_err(Error::InvalidValue)
}

/// Whether the host may read `ptr` (for value checks such as targets < vocab):
/// false for device and managed memory.
pub fn host_readable<T>(ptr: *const T) -> bool {
    chosen_gpu().ok().flatten().is_none_or(|_| memory::classify(ptr as usize) == Place::Host)
}

/// One validated call as the dispatcher sees it, with its N operands.
pub struct Call<const N: usize> {
    stream: Stream,
    /// Output elements; a call with none is a no-op on every backend.
    work: usize,
    /// Arithmetic, for the cost model (0 for memory-bound ops).
    flops: f64,
    /// Every operand, in the order the GPU closure receives device pointers.
    buffers: [Region; N],
    /// Whether the GPU kernels handle an output that is an input's very buffer.
    in_place_kernels: bool,
}

impl<const N: usize> Call<N> {
    /// Checks the operands for overlaps (see [`check::disjoint`]).
    pub fn new(stream: Stream, work: usize, buffers: [Region; N]) -> Result<Self> {
        check::disjoint(&buffers)?;
        Ok(Call { stream, work, flops: 0.0, buffers, in_place_kernels: true })
    }

    pub fn flops(mut self, flops: f64) -> Self {
        self.flops = flops;
        self
    }

    /// Whether the op's GPU kernels handle this call's aliasing themselves; when
    /// not (they read inputs other threads may already have overwritten), an
    /// aliased input is copied first.
    pub fn kernels_in_place(mut self, safe: bool) -> Self {
        self.in_place_kernels = safe;
        self
    }

    fn aliased(&self) -> bool {
        self.buffers.iter().any(|o| o.written && self.buffers.iter().any(|i| !i.written && i.bytes > 0 && i.start == o.start))
    }

    /// The cost model for host operands: staging wins when the arithmetic saved
    /// outweighs moving every operand over PCIe (outputs both ways), operand i's
    /// bytes counted `widths[i]` times (see [`run_typed`]).
    fn gpu_pays_off(&self, widths: [f64; N]) -> bool {
        const CPU_BYTES_PER_S: f64 = 10e9;
        const CPU_FLOPS_PER_CORE: f64 = 30e9;
        const PCIE_BYTES_PER_S: f64 = 12e9;
        const GPU_FLOPS: f64 = 15e12;
        const GPU_FIXED_S: f64 = 50e-6;
        let bytes: f64 = self.buffers.iter().zip(widths).map(|(r, w)| w * r.bytes as f64 * if r.written { 2.0 } else { 1.0 }).sum();
        // The machine's cores, not the calling pool's threads: the choice (and so
        // the results' bits) must not depend on which pool a caller runs in.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cpu = bytes / CPU_BYTES_PER_S + self.flops / (CPU_FLOPS_PER_CORE * cores);
        let gpu = bytes / PCIE_BYTES_PER_S + self.flops / GPU_FLOPS + GPU_FIXED_S;
        gpu < cpu
    }
}

/// Runs a call on the place its operands and the backend choice dictate: on
/// the GPU that owns its device operands (the calling thread's current device
/// when there are none). `gpu` receives one device pointer per buffer of the
/// call, in order.
pub fn run<const N: usize>(call: &Call<N>, cpu: impl FnOnce(), gpu: impl FnOnce(&Gpu, &[DevPtr]) -> Result<()>) -> Result<()> {
    run_as_wide(call, [1.0; N], cpu, gpu)
}

/// [`run`], host operands staged or not as if operand i's bytes were
/// `widths[i]` times what they are.
fn run_as_wide<const N: usize>(call: &Call<N>, widths: [f64; N], cpu: impl FnOnce(), gpu: impl FnOnce(&Gpu, &[DevPtr]) -> Result<()>) -> Result<()> {
    if call.work == 0 {
        return Ok(());
    }
    handles::check_stream(call.stream)?;
    let Some(current) = chosen_gpu()? else {
        cpu();
        return Ok(());
    };
    // Empty operands are not read or written: they go with any placement.
    let places = call.buffers.map(|r| (r.bytes > 0).then(|| memory::classify(r.start)));
    let device = match owner(&places)? {
        Some(ordinal) => gpu::device(ordinal)?,
        None => current,
    };
    let _entered = device.enter()?;
    let all_device = places.iter().flatten().all(|p| matches!(p, Place::Device(_)));
    if all_device && (call.in_place_kernels || !call.aliased()) {
        let pointers = call.buffers.map(|r| r.start as DevPtr);
        return gpu(device, &pointers);
    }
    let all_host = places.iter().flatten().all(|&p| p == Place::Host);
    if all_host && requested()? == Requested::Auto && !call.gpu_pays_off(widths) {
        cpu();
        return Ok(());
    }
    staged(device, call, &places, gpu)
}

/// The device that owns a call's device operands (None when all are host);
/// -2 when they are spread over two devices.
fn owner(places: &[Option<Place>]) -> Result<Option<i32>> {
    let mut owner = None;
    for place in places.iter().flatten() {
        if let Place::Device(ordinal) = *place {
            match owner {
                Some(other) if other != ordinal => {
                    return Err(Error::InvalidValue(format!("operands live on two devices ({other} and {ordinal}); pass memory of one device")));
                }
                _ => owner = Some(ordinal),
            }
        }
    }
    Ok(owner)
}

/// [`run`] for an op whose GPU kernels are float32: a half-precision call (`t`
/// not F32) runs them on float32 copies of its half operands (`uses` says
/// which buffers those are; see [`widen::run`]). Host operands go where the
/// float32 op of the same shape goes (its tensors have twice their bytes), so that a
/// half result stays that backend's float32 result rounded once: the CPU's
/// and the GPU's float32 ops may differ in the last bit (RoPE's sines).
pub fn run_typed<const N: usize>(t: Float, call: &Call<N>, uses: [Use; N], cpu: impl FnOnce(), gpu: impl FnOnce(&Gpu, &[DevPtr]) -> Result<()>) -> Result<()> {
    if t == Float::F32 {
        return run(call, cpu, gpu);
    }
    let elements = call.buffers.map(|r| r.bytes / 2);
    let widths = uses.map(|u| if u == Use::Keep { 1.0 } else { 2.0 });
    run_as_wide(call, widths, cpu, |g, p| unsafe { widen::run(g, call.stream.cast(), t, &uses, p, &elements, |wide| gpu(g, wide)) })
}

/// For ops whose GPU kernels do not exist yet: host operands run on the CPU;
/// device operands are refused rather than read from the host.
pub fn run_cpu_only<const N: usize>(call: &Call<N>, cpu: impl FnOnce()) -> Result<()> {
    if call.work == 0 {
        return Ok(());
    }
    handles::check_stream(call.stream)?;
    if chosen_gpu()?.is_some() && call.buffers.iter().any(|r| r.bytes > 0 && memory::classify(r.start) != Place::Host) {
        return Err(Error::NotAvailable("device pointers are not supported by this op yet (no GPU kernel); pass host memory".to_string()));
    }
    cpu();
    Ok(())
}

/// The calling thread's current GPU, None for the CPU backend; -1 when the GPU
/// is demanded but unusable.
pub fn chosen_gpu() -> Result<Option<&'static Gpu>> {
    match requested()? {
        Requested::Cpu => Ok(None),
        Requested::Auto => Ok(gpu::get().ok()),
        Requested::Cuda => gpu::get()
            .map(Some)
            .map_err(|e| Error::NotAvailable(format!("CUDANN_BACKEND=cuda, but the GPU is unusable: {e}"))),
    }
}

/// Host (and aliased) operands go through reused device + pinned buffers;
/// synchronous: outputs are in the caller's memory on return. Nothing is copied
/// back unless every launch succeeded.
fn staged<const N: usize>(device: &Gpu, call: &Call<N>, places: &[Option<Place>], gpu: impl FnOnce(&Gpu, &[DevPtr]) -> Result<()>) -> Result<()> {
    let mut taken = Vec::new();
    let result = (|| {
        let mut pointers = Vec::with_capacity(call.buffers.len());
        for (region, &place) in call.buffers.iter().zip(places) {
            let Some(place) = place else {
                pointers.push(region.start as DevPtr);
                continue;
            };
            let copy = place == Place::Host || (!region.written && call.buffers.iter().any(|o| o.written && o.start == region.start));
            if !copy {
                pointers.push(region.start as DevPtr);
                continue;
            }
            let buffer = device.pools.take(region.bytes)?;
            // SAFETY: the region is the caller's memory of that size (host: read
            // through the pinned buffer; device: copied on the device).
            unsafe {
                if place == Place::Host {
                    memory::upload(&buffer, region.start, region.bytes, call.stream.cast())?;
                } else {
                    memory::copy_on_device(&buffer, region.start as DevPtr, region.bytes, call.stream.cast())?;
                }
            }
            pointers.push(buffer.device.0 as DevPtr);
            taken.push((buffer, *region, place));
        }
        gpu(device, &pointers)?;
        for (buffer, region, place) in &taken {
            if region.written && *place == Place::Host {
                unsafe { memory::download(buffer, region.bytes, call.stream.cast())? };
            }
        }
        unsafe { memory::synchronize(call.stream.cast())? };
        for (buffer, region, place) in &taken {
            if region.written && *place == Place::Host {
                // SAFETY: the caller's output region, checked for size and overlaps.
                unsafe { memory::finish_download(buffer, region.start, region.bytes) };
            }
        }
        Ok(())
    })();
    if result.is_err() {
        // Kernels may still be reading the buffers: let them finish before reuse.
        let _ = unsafe { memory::synchronize(call.stream.cast()) };
    }
    for (buffer, _, _) in taken {
        device.pools.give(buffer);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_names() {
        assert_eq!(parse(None), Ok(Requested::Auto));
        assert_eq!(parse(Some(" CPU ")), Ok(Requested::Cpu));
        assert_eq!(parse(Some("cuda")), Ok(Requested::Cuda));
        assert!(parse(Some("tpu")).unwrap_err().contains("'tpu'"));
    }
}
