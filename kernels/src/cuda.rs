//! The CUDA executor: CUDA C kernels compiled at run time with NVRTC and launched through
//! `cudarc`.
//!
//! * **Kernels.** `conv2d` (direct, one thread per output element, summing input channels
//!   and taps in the same order as [`CpuExecutor`](crate::CpuExecutor)), `dense` (one warp
//!   per output, lanes striding over the inputs, then a shuffle reduction), `relu` (in
//!   place), `maxpool` and `gap` (global average pool), one thread per output element.
//!   [`Layer::Repeat`] launches its body `times` times. Everything is `f32`, 256 threads
//!   per block, on the context's default stream.
//! * **Weights** are uploaded once per model *name*: the first [`Executor::run`] of a model,
//!   or an explicit [`CudaExecutor::load`], copies all its weights to the device, and later
//!   runs of a model with that name and the same layer structure reuse them. After changing
//!   the weights of a model without renaming it, call [`CudaExecutor::load`] again; a model
//!   whose layer structure differs from the cached one is uploaded again automatically.
//!   [`CudaExecutor::unload`] frees a model's device memory.
//! * **No GPU.** `libcuda` and `libnvrtc` are loaded at run time. cudarc panics on its first
//!   call when they are missing, so [`CudaExecutor::new`] probes for both first and returns
//!   [`KernelError::NoCuda`] saying which is missing; a panic inside cudarc during set-up
//!   (e.g. a driver older than the CUDA 12.4 API it binds) is caught and reported the same
//!   way.

// `unsafe` is allowed in this module only: cudarc's library probes (`is_culib_present`)
// and kernel launches (`LaunchArgs::launch`) are `unsafe fn`s, because the compiler cannot
// check a kernel's parameter list or its memory accesses. Each block says why it is sound.
#![allow(unsafe_code)]

use crate::{check_input, out_shape, Executor, KernelError, Layer, Model, Shape};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Threads per block of every kernel (a multiple of the warp size, 32).
const BLOCK: usize = 256;

/// The kernels. Tensors are NCHW `f32`; `int` dimensions, `long long` flat indices.
const SRC: &str = r#"
extern "C" __global__ void conv2d(const float* x, const float* w, const float* b, float* y,
                                  int n, int cin, int h, int wd, int cout, int oh, int ow,
                                  int k, int stride, int pad) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * cout * oh * ow) return;
    int xo = (int)(i % ow);
    long long t = i / ow;
    int yo = (int)(t % oh);
    t /= oh;
    int o = (int)(t % cout);
    long long ni = t / cout;
    float acc = b[o];
    for (int ci = 0; ci < cin; ++ci) {
        const float* xp = x + (ni * cin + ci) * h * wd;
        const float* wp = w + ((long long)o * cin + ci) * k * k;
        for (int ky = 0; ky < k; ++ky) {
            int iy = yo * stride + ky - pad;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < k; ++kx) {
                int ix = xo * stride + kx - pad;
                if (ix < 0 || ix >= wd) continue;
                acc += xp[(long long)iy * wd + ix] * wp[ky * k + kx];
            }
        }
    }
    y[i] = acc;
}

extern "C" __global__ void dense(const float* x, const float* w, const float* b, float* y,
                                 int n, int din, int dout) {
    long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= (long long)n * dout) return; /* the whole warp leaves together */
    int o = (int)(warp % dout);
    const float* wr = w + (long long)o * din;
    const float* xr = x + (warp / dout) * din;
    float acc = 0.0f;
    for (int j = lane; j < din; j += 32) acc += wr[j] * xr[j];
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) y[warp] = b[o] + acc;
}

extern "C" __global__ void relu(float* x, long long total) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) x[i] = fmaxf(x[i], 0.0f);
}

extern "C" __global__ void maxpool(const float* x, float* y, int nc, int h, int wd, int k,
                                   int oh, int ow) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)nc * oh * ow) return;
    int xo = (int)(i % ow);
    long long t = i / ow;
    int yo = (int)(t % oh);
    const float* xp = x + (t / oh) * h * wd;
    float m = __int_as_float(0xff800000); /* -infinity */
    for (int dy = 0; dy < k; ++dy)
        for (int dx = 0; dx < k; ++dx)
            m = fmaxf(m, xp[(long long)(yo * k + dy) * wd + xo * k + dx]);
    y[i] = m;
}

extern "C" __global__ void gap(const float* x, float* y, long long nc, int hw) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nc) return;
    const float* xp = x + i * hw;
    float s = 0.0f;
    for (int j = 0; j < hw; ++j) s += xp[j];
    y[i] = s / (float)hw;
}
"#;

/// Compile [`SRC`] with NVRTC (needs `libnvrtc`, not a GPU).
pub(crate) fn compile() -> Result<cudarc::nvrtc::Ptx, KernelError> {
    cudarc::nvrtc::compile_ptx(SRC).map_err(|e| {
        let detail = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        };
        KernelError::Cuda(format!("NVRTC cannot compile the kernels: {detail}"))
    })
}

/// A `map_err` adapter: a CUDA failure while doing `what`.
fn cuda<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> KernelError + '_ {
    move |e| KernelError::Cuda(format!("{what}: {e}"))
}

struct Kernels {
    conv2d: CudaFunction,
    dense: CudaFunction,
    relu: CudaFunction,
    maxpool: CudaFunction,
    gap: CudaFunction,
}

/// Device copies of one layer's weights, in the layout of [`Model::layers`].
enum Dev {
    None,
    Weights { w: CudaSlice<f32>, b: CudaSlice<f32> },
    Repeat(Vec<Dev>),
}

/// A model resident on the device.
struct Resident {
    /// The layers without their weights, to notice a different model under the same name.
    skeleton: Vec<Layer>,
    buffers: Vec<Dev>,
}

fn skeleton(layers: &[Layer]) -> Vec<Layer> {
    layers
        .iter()
        .map(|l| match l {
            Layer::Conv2d { cin, cout, k, stride, pad, .. } => Layer::Conv2d {
                cin: *cin,
                cout: *cout,
                k: *k,
                stride: *stride,
                pad: *pad,
                w: Vec::new(),
                b: Vec::new(),
            },
            Layer::Dense { din, dout, .. } => Layer::Dense { din: *din, dout: *dout, w: Vec::new(), b: Vec::new() },
            Layer::Repeat { times, body } => Layer::Repeat { times: *times, body: skeleton(body) },
            other => other.clone(),
        })
        .collect()
}

fn ints<const N: usize>(v: [usize; N]) -> Result<[i32; N], KernelError> {
    let mut out = [0i32; N];
    for (o, x) in out.iter_mut().zip(v) {
        *o =
            i32::try_from(x).map_err(|_| KernelError::Cuda(format!("dimension {x} exceeds the kernels' i32 range")))?;
    }
    Ok(out)
}

fn long(x: usize) -> Result<i64, KernelError> {
    i64::try_from(x).map_err(|_| KernelError::Cuda(format!("size {x} exceeds i64")))
}

/// Blocks of [`BLOCK`] threads covering `threads` threads.
fn grid(threads: usize) -> Result<LaunchConfig, KernelError> {
    let blocks = threads.div_ceil(BLOCK);
    let blocks = u32::try_from(blocks)
        .ok()
        .filter(|b| *b < i32::MAX as u32)
        .ok_or_else(|| KernelError::Cuda(format!("{threads} threads exceed the grid limit")))?;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK as u32, 1, 1), shared_mem_bytes: 0 })
}

/// Runs models on one NVIDIA GPU (see the [module docs](crate::cuda)).
pub struct CudaExecutor {
    stream: Arc<CudaStream>,
    kernels: Kernels,
    models: Mutex<HashMap<String, Arc<Resident>>>,
    device: String,
}

impl std::fmt::Debug for CudaExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaExecutor").field("device", &self.device).finish_non_exhaustive()
    }
}

impl CudaExecutor {
    /// `Ok` when the CUDA driver library (`libcuda.so`) and NVRTC (`libnvrtc.so`) can be
    /// loaded, else [`KernelError::NoCuda`] naming what is missing. Calls no CUDA function.
    pub fn probe() -> Result<(), KernelError> {
        // SAFETY: `is_culib_present` only tries to dlopen the driver library under its usual
        // names and drops the handle; it calls no CUDA function.
        let driver = unsafe { cudarc::driver::sys::is_culib_present() };
        // SAFETY: as above, for the NVRTC library.
        let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
        let mut missing = Vec::new();
        if !driver {
            missing.push("the CUDA driver library libcuda.so (no NVIDIA driver on this machine)");
        }
        if !nvrtc {
            missing.push("the NVRTC library libnvrtc.so (CUDA 12 runtime compiler; add it to LD_LIBRARY_PATH)");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(KernelError::NoCuda(format!("cannot load {}", missing.join(" nor "))))
        }
    }

    /// An executor on GPU `device_ordinal`: creates the context and compiles the kernels.
    /// [`KernelError::NoCuda`] when the CUDA libraries or the device are missing (never a
    /// panic), [`KernelError::Cuda`] when a CUDA or NVRTC call fails.
    pub fn new(device_ordinal: usize) -> Result<CudaExecutor, KernelError> {
        Self::probe()?;
        // cudarc panics rather than failing when a driver symbol it binds is missing (an
        // older driver); report that as an unusable CUDA installation too.
        std::panic::catch_unwind(move || Self::init(device_ordinal)).unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(KernelError::NoCuda(format!("cudarc failed while setting up: {why}")))
        })
    }

    fn init(ordinal: usize) -> Result<CudaExecutor, KernelError> {
        let count = CudaContext::device_count().map_err(|e| KernelError::NoCuda(format!("no usable GPU: {e}")))?;
        if ordinal >= usize::try_from(count).unwrap_or(0) {
            return Err(KernelError::NoCuda(format!("GPU {ordinal} requested, {count} visible")));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda("creating the CUDA context"))?;
        let device = ctx.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
        let module = ctx.load_module(compile()?).map_err(cuda("loading the kernels"))?;
        let f = |name: &str| module.load_function(name).map_err(cuda("finding a kernel"));
        let kernels = Kernels {
            conv2d: f("conv2d")?,
            dense: f("dense")?,
            relu: f("relu")?,
            maxpool: f("maxpool")?,
            gap: f("gap")?,
        };
        Ok(CudaExecutor { stream: ctx.default_stream(), kernels, models: Mutex::new(HashMap::new()), device })
    }

    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Upload `model`'s weights, replacing any model cached under its name.
    pub fn load(&self, model: &Model) -> Result<(), KernelError> {
        let resident = Arc::new(Resident { skeleton: skeleton(&model.layers), buffers: self.upload(&model.layers)? });
        self.models.lock().unwrap_or_else(PoisonError::into_inner).insert(model.name.clone(), resident);
        Ok(())
    }

    /// Free the device copy of the model called `name`; false if none was cached.
    pub fn unload(&self, name: &str) -> bool {
        self.models.lock().unwrap_or_else(PoisonError::into_inner).remove(name).is_some()
    }

    fn upload(&self, layers: &[Layer]) -> Result<Vec<Dev>, KernelError> {
        let mut out = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            let (w, b, nw, nb) = match l {
                Layer::Conv2d { cin, cout, k, w, b, .. } => (w, b, cout * cin * k * k, *cout),
                Layer::Dense { din, dout, w, b } => (w, b, din * dout, *dout),
                Layer::Repeat { body, .. } => {
                    out.push(Dev::Repeat(self.upload(body)?));
                    continue;
                }
                Layer::Relu | Layer::MaxPool { .. } | Layer::GlobalAvgPool => {
                    out.push(Dev::None);
                    continue;
                }
            };
            if w.len() != nw || b.len() != nb || nw == 0 || nb == 0 {
                let message = "weights or bias do not match the layer's size".into();
                return Err(KernelError::Shape { layer: i, message });
            }
            let w = self.stream.clone_htod(w).map_err(cuda("uploading weights"))?;
            let b = self.stream.clone_htod(b).map_err(cuda("uploading biases"))?;
            out.push(Dev::Weights { w, b });
        }
        Ok(out)
    }

    /// The cached device copy of `model`, uploaded if absent or of another structure.
    fn resident(&self, model: &Model) -> Result<Arc<Resident>, KernelError> {
        let sk = skeleton(&model.layers);
        if let Some(r) = self.models.lock().unwrap_or_else(PoisonError::into_inner).get(&model.name) {
            if r.skeleton == sk {
                return Ok(Arc::clone(r));
            }
        }
        let r = Arc::new(Resident { skeleton: sk, buffers: self.upload(&model.layers)? });
        self.models.lock().unwrap_or_else(PoisonError::into_inner).insert(model.name.clone(), Arc::clone(&r));
        Ok(r)
    }

    /// A zeroed device buffer of `len` values (at least one, so empty tensors need no
    /// special case).
    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>, KernelError> {
        self.stream.alloc_zeros::<f32>(len.max(1)).map_err(cuda("allocating an activation"))
    }

    fn layers(
        &self,
        layers: &[Layer],
        devs: &[Dev],
        mut x: CudaSlice<f32>,
        mut s: Shape,
    ) -> Result<(CudaSlice<f32>, Shape), KernelError> {
        for (i, (l, d)) in layers.iter().zip(devs).enumerate() {
            let o = out_shape(i, l, s, false)?;
            x = self.layer(l, d, x, s, o)?;
            s = o;
        }
        Ok((x, s))
    }

    /// Run one checked layer on `x` of shape `s`, producing shape `o`.
    fn layer(
        &self,
        l: &Layer,
        d: &Dev,
        mut x: CudaSlice<f32>,
        s: Shape,
        o: Shape,
    ) -> Result<CudaSlice<f32>, KernelError> {
        let (n, c, h, w) = s;
        let total = o.0 * o.1 * o.2 * o.3;
        if total == 0 {
            return self.alloc(0);
        }
        let k = &self.kernels;
        match (l, d) {
            (Layer::Conv2d { cin, cout, k: ks, stride, pad, .. }, Dev::Weights { w: wt, b }) => {
                let mut y = self.alloc(total)?;
                let dims = ints([n, *cin, h, w, *cout, o.2, o.3, *ks, *stride, *pad])?;
                {
                    let mut launch = self.stream.launch_builder(&k.conv2d);
                    launch.arg(&x).arg(wt).arg(b).arg(&mut y);
                    for v in &dims {
                        launch.arg(v);
                    }
                    // SAFETY: the arguments match `conv2d(const float*, const float*, const float*,
                    // float*, int x 10)` in order and type. The model was traced against `s`, so x
                    // holds n*cin*h*w values, wt cout*cin*k*k and b cout (checked at upload), y
                    // n*cout*oh*ow; each thread reads inside those bounds and writes only its own
                    // output element, masked by the output count.
                    unsafe { launch.launch(grid(total)?) }.map_err(cuda("launching conv2d"))?;
                }
                Ok(y)
            }
            (Layer::Dense { din, dout, .. }, Dev::Weights { w: wt, b }) => {
                let mut y = self.alloc(total)?;
                let dims = ints([n, *din, *dout])?;
                {
                    let mut launch = self.stream.launch_builder(&k.dense);
                    launch.arg(&x).arg(wt).arg(b).arg(&mut y).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]);
                    // SAFETY: the arguments match `dense(const float*, const float*, const float*,
                    // float*, int, int, int)`. x holds n*din values (din = c*h*w, traced), wt
                    // dout*din, b dout, y n*dout; one warp per output reads its weight row and
                    // input row and lane 0 writes that output; warps past n*dout exit whole, so
                    // the full-mask shuffle only runs in complete warps (blocks are 256 threads).
                    unsafe { launch.launch(grid(n * dout * 32)?) }.map_err(cuda("launching dense"))?;
                }
                Ok(y)
            }
            (Layer::Relu, _) => {
                let len = long(total)?;
                {
                    let mut launch = self.stream.launch_builder(&k.relu);
                    launch.arg(&mut x).arg(&len);
                    // SAFETY: `relu(float*, long long)`: x holds `total` values (ReLU keeps the
                    // shape) and each thread below `total` updates its own element in place.
                    unsafe { launch.launch(grid(total)?) }.map_err(cuda("launching relu"))?;
                }
                Ok(x)
            }
            (Layer::MaxPool { k: ks }, _) => {
                let mut y = self.alloc(total)?;
                let dims = ints([n * c, h, w, *ks, o.2, o.3])?;
                {
                    let mut launch = self.stream.launch_builder(&k.maxpool);
                    launch.arg(&x).arg(&mut y);
                    for v in &dims {
                        launch.arg(v);
                    }
                    // SAFETY: `maxpool(const float*, float*, int x 6)`: x holds n*c*h*w values, y
                    // n*c*oh*ow with oh = h/k, ow = w/k, so every window row (yo*k+dy < h) and
                    // column (xo*k+dx < w) is inside its channel; one thread per output.
                    unsafe { launch.launch(grid(total)?) }.map_err(cuda("launching maxpool"))?;
                }
                Ok(y)
            }
            (Layer::GlobalAvgPool, _) => {
                let mut y = self.alloc(total)?;
                let (nc, hw) = (long(n * c)?, ints([h * w])?[0]);
                {
                    let mut launch = self.stream.launch_builder(&k.gap);
                    launch.arg(&x).arg(&mut y).arg(&nc).arg(&hw);
                    // SAFETY: `gap(const float*, float*, long long, int)`: x holds n*c*h*w values,
                    // y n*c; thread i < n*c sums its own h*w values and writes y[i].
                    unsafe { launch.launch(grid(n * c)?) }.map_err(cuda("launching gap"))?;
                }
                Ok(y)
            }
            (Layer::Repeat { times, body }, Dev::Repeat(devs)) => {
                for _ in 0..*times {
                    x = self.layers(body, devs, x, s)?.0;
                }
                Ok(x)
            }
            _ => Err(KernelError::Cuda("device buffers do not match the model's layers".into())),
        }
    }
}

impl Executor for CudaExecutor {
    fn run(&self, model: &Model, input: &[f32], shape: Shape) -> Result<(Vec<f32>, Shape), KernelError> {
        let out = check_input(model, input, shape)?;
        let len = out.0 * out.1 * out.2 * out.3;
        if input.is_empty() || len == 0 {
            return Ok((vec![0.0; len], out));
        }
        let resident = self.resident(model)?;
        let x = self.stream.clone_htod(input).map_err(cuda("copying the input"))?;
        let (y, s) = self.layers(&model.layers, &resident.buffers, x, shape)?;
        let mut host = self.stream.clone_dtoh(&y).map_err(cuda("copying the output"))?;
        self.stream.synchronize().map_err(cuda("running the model"))?;
        host.truncate(len);
        Ok((host, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_cuda_new_is_a_typed_error_not_a_panic() {
        match CudaExecutor::probe() {
            Err(KernelError::NoCuda(why)) => {
                assert!(why.contains("libcuda.so") || why.contains("libnvrtc.so"), "{why}");
                assert_eq!(CudaExecutor::new(0).unwrap_err(), KernelError::NoCuda(why.clone()));
                let e = KernelError::NoCuda(why);
                assert!(e.to_string().starts_with("CUDA unavailable: cannot load"), "{e}");
            }
            Err(e) => panic!("probe fails only with NoCuda, got {e}"),
            Ok(()) => {
                // A CUDA machine: a device that does not exist is still a typed error.
                let e = CudaExecutor::new(1 << 20).unwrap_err();
                assert!(matches!(e, KernelError::NoCuda(_)), "{e}");
            }
        }
    }

    #[test]
    fn kernels_compile_with_nvrtc_when_it_is_present() {
        // SAFETY: only tries to dlopen libnvrtc; calls nothing.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            println!("skipped: libnvrtc.so not found (NVRTC compiles without a GPU; add it to LD_LIBRARY_PATH)");
            return;
        }
        let ptx = compile().expect("the kernels compile").to_src();
        for k in ["conv2d", "dense", "relu", "maxpool", "gap"] {
            assert!(ptx.contains(&format!(".entry {k}(")), "{k} missing from the PTX");
        }
    }

    #[test]
    fn launch_geometry_and_skeletons() {
        let g = grid(1).expect("grid");
        assert_eq!((g.grid_dim, g.block_dim), ((1, 1, 1), (256, 1, 1)));
        assert_eq!(grid(257).expect("grid").grid_dim.0, 2);
        assert!(grid(usize::MAX).is_err());
        assert!(ints([1usize << 31]).is_err());
        let m = crate::Model::generated("m", crate::Arch { cin: 3, width: 2, blocks: 1, classes: 2 }, 0);
        let other = crate::Model::generated("m", crate::Arch { cin: 3, width: 2, blocks: 1, classes: 2 }, 1);
        assert_eq!(skeleton(&m.layers), skeleton(&other.layers), "weights do not count");
        let wider = crate::Model::generated("m", crate::Arch { cin: 3, width: 3, blocks: 1, classes: 2 }, 0);
        assert_ne!(skeleton(&m.layers), skeleton(&wider.layers));
    }
}
