//! [`CudaKernels`] (feature `cudnn`): convolutions through cuDNN in both directions.
//!
//! candle 0.11 has no cuDNN backward: its input gradient goes to a naive transposed
//! convolution, its weight gradient passes a transposed (non-contiguous) gradient as a kernel
//! and then falls to a direct loop, it rebuilds descriptors, re-picks the algorithm and
//! allocates a zeroed workspace on every call, never sets the math type (no tensor cores for
//! f32) nor the group count (a depthwise convolution runs as one convolution per channel).
//!
//! Here the convolution is a candle [`CustomOp2`] whose forward calls cuDNN's forward and
//! whose backward calls cuDNN's backward-data (the input gradient) and backward-filter (the
//! weight gradient), each only when its tensor tracks gradients: attacks pass detached
//! weights and never pay for the weight gradient, the first layer of a training step never
//! computes the input gradient of the data.
//!
//! Per thread (cuDNN handles are neither `Send` nor `Sync`, as candle's own use notes), this
//! module keeps one cuDNN handle per device, one growing workspace per device, and per
//! convolution shape (device, dtype, input and weight shapes, geometry, precision) the
//! descriptors and, for each direction, the algorithm cuDNN's heuristics chose and its
//! workspace size, so a training step looks them up instead of rebuilding them.
//!
//! The math type follows the [`Precision`]:
//! - `F32`: `CUDNN_FMA_MATH`, plain f32 products. (cuDNN's *default* math allows TF32 on
//!   Ampere and later, which would break f32 parity with the CPU; PyTorch also selects FMA
//!   math when TF32 is switched off.)
//! - `Tf32`: `CUDNN_TENSOR_OP_MATH` on f32 tensors: TF32 tensor cores, as PyTorch does by
//!   default for cuDNN convolutions.
//! - `Bf16`: input and weight converted to bf16, cuDNN's bf16 configuration (bf16 tensors,
//!   f32 accumulation, tensor-op math), the output converted back to f32, so BatchNorm,
//!   losses and master weights stay f32 as under PyTorch's autocast. The gradients flow back
//!   through the same conversions (the output gradient is rounded to bf16, the input and
//!   weight gradients come back as f32).
//!
//! Everything other than the convolution (linear layers, BatchNorm, pooling, activations)
//! still runs the reference [`CandleKernels`] on candle's CUDA operations.

#![allow(unsafe_code)]

use super::fast_cpu::Geometry;
use super::{CandleKernels, ConvCfg, Kernels, Precision};
use crate::Result;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t, cudnnConvolutionFwdAlgo_t,
    cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t,
};
use candle_core::cuda_backend::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// Kernels for CUDA devices: convolutions (dense, strided, dilated, grouped, depthwise) in
/// both directions through cuDNN, with the math type of the [`Precision`]; every other
/// operation, and any convolution not on CUDA f32 tensors, runs [`CandleKernels`].
///
/// The default for CUDA devices in builds with the `cudnn` feature (see
/// [`default_kernels`](super::default_kernels)).
#[derive(Debug, Default, Clone, Copy)]
pub struct CudaKernels;

impl CudaKernels {
    /// The name [`Kernels::name`] returns, without a value at hand.
    pub const fn name_static(&self) -> &'static str {
        "cudnn"
    }
}

/// Whether cuDNN takes this convolution: CUDA f32 tensors of rank 4 whose channels match the
/// groups, and sizes cuDNN's 32-bit descriptors can describe.
fn covers(x: &Tensor, weight: &Tensor, cfg: ConvCfg) -> bool {
    let fits = |t: &Tensor| t.dims().iter().all(|&d| d > 0) && t.elem_count() <= i32::MAX as usize;
    x.device().is_cuda()
        && weight.device().is_cuda()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.rank() == 4
        && weight.rank() == 4
        && cfg.groups >= 1
        && cfg.stride >= 1
        && cfg.dilation >= 1
        && x.dims()[1] == weight.dims()[1] * cfg.groups
        && weight.dims()[0] % cfg.groups == 0
        && fits(x)
        && fits(weight)
        && [cfg.stride, cfg.padding, cfg.dilation, cfg.groups]
            .iter()
            .all(|&v| v <= i32::MAX as usize)
}

impl Kernels for CudaKernels {
    fn name(&self) -> &str {
        self.name_static()
    }

    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: ConvCfg,
        precision: Precision,
    ) -> Result<Tensor> {
        if !covers(x, weight, cfg) {
            return CandleKernels.conv2d(x, weight, bias, cfg, precision);
        }
        let op = ConvCall {
            cfg,
            precision,
            dir: Dir::Forward,
        };
        let y = match precision {
            Precision::Bf16 => {
                let xb = x.to_dtype(DType::BF16)?.contiguous()?;
                let wb = weight.to_dtype(DType::BF16)?.contiguous()?;
                xb.apply_op2(&wb, op)?.to_dtype(DType::F32)?
            }
            Precision::F32 | Precision::Tf32 => x.contiguous()?.apply_op2(&weight.contiguous()?, op)?,
        };
        super::add_channel_bias(y, bias)
    }
}

/// The element types the convolution runs on: f32, and bf16 with f32 accumulation.
trait Elem: CudnnDataType<Scalar = f32> + CudaDType + DeviceRepr + WithDType + 'static {}
impl Elem for f32 {}
impl Elem for half::bf16 {}

/// The cuDNN math type of a precision.
fn math_type(precision: Precision) -> cudnnMathType_t {
    match precision {
        Precision::F32 => cudnnMathType_t::CUDNN_FMA_MATH,
        Precision::Tf32 | Precision::Bf16 => cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
    }
}

/// One convolution shape: what the cached descriptors and algorithms depend on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    device: DeviceId,
    dtype: DType,
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    cfg: ConvCfg,
    precision: Precision,
}

impl Key {
    fn new(
        dev: &CudaDevice,
        dtype: DType,
        x: &[usize],
        w: &[usize],
        cfg: ConvCfg,
        precision: Precision,
    ) -> candle_core::Result<Self> {
        let (&[n, c, h, wd], &[o, ci, kh, kw]) = (x, w) else {
            candle_core::bail!("cudnn conv2d: expected 4-D input and weight, got {x:?} and {w:?}")
        };
        if ci * cfg.groups != c || cfg.groups == 0 || o % cfg.groups != 0 {
            candle_core::bail!(
                "cudnn conv2d: input {x:?} and weight {w:?} do not fit {} groups",
                cfg.groups
            )
        }
        // The output size per group is that of one dense convolution over the group.
        let g = Geometry::new(&[n, ci, h, wd], &[o, ci, kh, kw], ConvCfg { groups: 1, ..cfg })?;
        if n * o * g.oh * g.ow > i32::MAX as usize {
            candle_core::bail!(
                "cudnn conv2d: output {n}x{o}x{}x{} too large for cuDNN",
                g.oh,
                g.ow
            )
        }
        Ok(Key {
            device: dev.id(),
            dtype,
            x: [n, c, h, wd],
            w: [o, ci, kh, kw],
            y: [n, o, g.oh, g.ow],
            cfg,
            precision,
        })
    }
}

/// An algorithm and the workspace it needs, in bytes.
type Choice<A> = Cell<Option<(A, usize)>>;

/// The descriptors of one convolution shape, and the algorithm of each direction once chosen.
struct Plan<T: Elem> {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    fwd: Choice<cudnnConvolutionFwdAlgo_t>,
    data: Choice<cudnnConvolutionBwdDataAlgo_t>,
    filter: Choice<cudnnConvolutionBwdFilterAlgo_t>,
}

/// Beyond this many cached shapes the cache is cleared (a run sees a handful: every layer at
/// the training and the last, smaller batch size).
const MAX_PLANS: usize = 1024;

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static WORKSPACES: RefCell<HashMap<DeviceId, CudaSlice<u8>>> = RefCell::new(HashMap::new());
    static PLANS: RefCell<HashMap<Key, Rc<dyn Any>>> = RefCell::new(HashMap::new());
}

/// This thread's cuDNN handle for `dev`, bound to the device's stream.
fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream())?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// The cached plan of `key`, made on first use.
fn plan<T: Elem>(dev: &CudaDevice, key: &Key) -> candle_core::Result<Rc<Plan<T>>> {
    if let Some(p) = PLANS.with(|p| p.borrow().get(key).cloned()) {
        return p
            .downcast::<Plan<T>>()
            .map_err(|_| candle_core::Error::msg("cudnn conv2d: cached plan of another dtype"));
    }
    let cudnn = handle(dev)?;
    let i = |v: usize| v as i32; // Every size was checked to fit i32 (`covers`).
    let cfg = key.cfg;
    let mut conv = cudnn.create_conv2d::<f32>(
        [i(cfg.padding); 2],
        [i(cfg.stride); 2],
        [i(cfg.dilation); 2],
        cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    conv.set_group_count(i(cfg.groups))?;
    conv.set_math_type(math_type(key.precision))?;
    let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let [a, b, c, d] = key.x;
    let x = cudnn.create_4d_tensor::<T>(nchw, [i(a), i(b), i(c), i(d)])?;
    let [a, b, c, d] = key.w;
    let w = cudnn.create_4d_filter::<T>(nchw, [i(a), i(b), i(c), i(d)])?;
    let [a, b, c, d] = key.y;
    let y = cudnn.create_4d_tensor::<T>(nchw, [i(a), i(b), i(c), i(d)])?;
    let p = Rc::new(Plan {
        conv,
        x,
        w,
        y,
        fwd: Cell::new(None),
        data: Cell::new(None),
        filter: Cell::new(None),
    });
    PLANS.with(|plans| {
        let mut plans = plans.borrow_mut();
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(key.clone(), p.clone() as Rc<dyn Any>);
    });
    Ok(p)
}

/// The algorithm of one direction: chosen once per plan by cuDNN's heuristics.
fn choose<A: Copy>(
    cell: &Choice<A>,
    pick: impl FnOnce() -> candle_core::Result<A>,
    size: impl FnOnce(A) -> candle_core::Result<usize>,
) -> candle_core::Result<(A, usize)> {
    if let Some(c) = cell.get() {
        return Ok(c);
    }
    let algo = pick()?;
    let c = (algo, size(algo)?);
    cell.set(Some(c));
    Ok(c)
}

/// Runs `f` with this thread's workspace for `dev`, grown to at least `bytes` (none when
/// `bytes` is 0). All work is queued on the device's one stream, so consecutive calls reuse
/// one buffer safely.
fn with_workspace<R>(
    dev: &CudaDevice,
    bytes: usize,
    f: impl FnOnce(Option<&mut CudaSlice<u8>>) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    if bytes == 0 {
        return f(None);
    }
    let cached = WORKSPACES.with(|w| w.borrow_mut().remove(&dev.id()));
    let mut ws = match cached {
        Some(ws) if ws.len() >= bytes => ws,
        _ => {
            // SAFETY: a cuDNN workspace is scratch memory cuDNN writes before it reads; its
            // initial contents are never observed, so it need not be zeroed.
            unsafe { dev.alloc::<u8>(bytes)? }
        }
    };
    let out = f(Some(&mut ws));
    WORKSPACES.with(|w| w.borrow_mut().insert(dev.id(), ws));
    out
}

/// The elements of a contiguous storage, from its layout's start.
fn view<'a, T: Elem>(s: &'a CudaStorage, l: &Layout) -> candle_core::Result<CudaView<'a, T>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg("cudnn conv2d: operand is not contiguous"))?;
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// Output storage of `len` elements, every one of which cuDNN writes (beta = 0).
fn output<T: Elem>(dev: &CudaDevice, len: usize) -> candle_core::Result<CudaSlice<T>> {
    // SAFETY: the convolution calls below run with beta = 0, which makes cuDNN write every
    // element of the output without reading it, so the uninitialised memory is never read.
    unsafe { dev.alloc::<T>(len) }
}

/// What one cuDNN call computes, and from which operands.
#[derive(Debug, Clone, Copy)]
enum Dir {
    /// `y = conv(x, w)` on `(x, w)`.
    Forward,
    /// The input gradient `dx` (of shape `x`) on `(dy, w)`.
    Data { x: [usize; 4] },
    /// The weight gradient `dw` (of shape `w`) on `(x, dy)`.
    Filter { w: [usize; 4] },
}

/// One cuDNN convolution call as a candle op. The forward call's backward makes the two
/// gradient calls; the gradient calls have no backward of their own (no double backward).
#[derive(Debug, Clone, Copy)]
struct ConvCall {
    cfg: ConvCfg,
    precision: Precision,
    dir: Dir,
}

/// Runs `call` on two contiguous operands of element type `T`.
fn launch<T: Elem>(
    call: &ConvCall,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (x_dims, w_dims, dy_dims) = match &call.dir {
        Dir::Forward => (l1.dims(), l2.dims(), None),
        Dir::Data { x } => (&x[..], l2.dims(), Some(l1.dims())),
        Dir::Filter { w } => (l1.dims(), &w[..], Some(l2.dims())),
    };
    let key = Key::new(dev, T::DTYPE, x_dims, w_dims, call.cfg, call.precision)?;
    if let Some(d) = dy_dims.filter(|d| *d != key.y) {
        candle_core::bail!("cudnn conv2d backward: gradient {d:?}, expected {:?}", key.y)
    }
    let plan = plan::<T>(dev, &key)?;
    let (a, b) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
    let out_dims = match call.dir {
        Dir::Forward => key.y,
        Dir::Data { .. } => key.x,
        Dir::Filter { .. } => key.w,
    };
    let mut out = output::<T>(dev, out_dims.iter().product())?;
    let one_zero = (T::from_f64(1.0), T::from_f64(0.0));
    // SAFETY (each `launch` below): the operands and the output are contiguous NCHW buffers
    // of exactly the shapes and the element type `T` of the plan's descriptors (the plan is
    // keyed by both, and the gradient's shape was checked above), on the device whose stream
    // the plan's handle uses; the workspace holds at least the size cuDNN asked for the
    // algorithm; beta is 0, so the output is written, never read.
    match call.dir {
        Dir::Forward => {
            let op = ConvForward {
                conv: &plan.conv,
                x: &plan.x,
                w: &plan.w,
                y: &plan.y,
            };
            let (algo, bytes) = choose(
                &plan.fwd,
                || Ok(op.pick_algorithm()?),
                |a| Ok(op.get_workspace_size(a)?),
            )?;
            with_workspace(dev, bytes, |work| {
                Ok(unsafe { op.launch(algo, work, one_zero, &a, &b, &mut out) }?)
            })?;
        }
        Dir::Data { .. } => {
            let op = ConvBackwardData {
                conv: &plan.conv,
                dx: &plan.x,
                w: &plan.w,
                dy: &plan.y,
            };
            let (algo, bytes) = choose(
                &plan.data,
                || Ok(op.pick_algorithm()?),
                |a| Ok(op.get_workspace_size(a)?),
            )?;
            with_workspace(dev, bytes, |work| {
                Ok(unsafe { op.launch(algo, work, one_zero, &mut out, &b, &a) }?)
            })?;
        }
        Dir::Filter { .. } => {
            let op = ConvBackwardFilter {
                conv: &plan.conv,
                x: &plan.x,
                dw: &plan.w,
                dy: &plan.y,
            };
            let (algo, bytes) = choose(
                &plan.filter,
                || Ok(op.pick_algorithm()?),
                |a| Ok(op.get_workspace_size(a)?),
            )?;
            with_workspace(dev, bytes, |work| {
                Ok(unsafe { op.launch(algo, work, one_zero, &a, &mut out, &b) }?)
            })?;
        }
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(out_dims.to_vec()),
    ))
}

fn dims4(d: &[usize]) -> candle_core::Result<[usize; 4]> {
    d.try_into()
        .map_err(|_| candle_core::Error::msg(format!("cudnn conv2d: expected 4 dims, got {d:?}")))
}

impl CustomOp2 for ConvCall {
    fn name(&self) -> &'static str {
        match self.dir {
            Dir::Forward => "temper-cudnn-conv2d",
            Dir::Data { .. } => "temper-cudnn-conv2d-backward-data",
            Dir::Filter { .. } => "temper-cudnn-conv2d-backward-filter",
        }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{}: cuDNN operation on CPU tensors", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        match s1.dtype() {
            DType::F32 => launch::<f32>(self, (s1, l1), (s2, l2)),
            DType::BF16 => launch::<half::bf16>(self, (s1, l1), (s2, l2)),
            other => candle_core::bail!("cudnn conv2d: unsupported dtype {other:?}"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !matches!(self.dir, Dir::Forward) {
            candle_core::bail!("{}: no double backward through cuDNN convolutions", self.name())
        }
        // A tensor that tracks no gradient (a detached weight in an attack, the data at the
        // first layer) gets none, and its cuDNN call is skipped.
        let (need_dx, need_dw) = (x.track_op(), weight.track_op());
        let dy = grad_res.detach().contiguous()?;
        let call = |dir| ConvCall { dir, ..*self };
        let dx = if need_dx {
            let op = call(Dir::Data { x: dims4(x.dims())? });
            Some(dy.apply_op2_no_bwd(&weight.detach().contiguous()?, &op)?)
        } else {
            None
        };
        let dw = if need_dw {
            let op = call(Dir::Filter {
                w: dims4(weight.dims())?,
            });
            Some(x.detach().contiguous()?.apply_op2_no_bwd(&dy, &op)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}
