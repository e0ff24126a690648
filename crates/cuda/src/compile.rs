//! NVRTC: every kernel family is CUDA C source in its own file (`cuda/<family>.rs`, mirroring
//! `cpu/<kernel>.rs`), compiled to CUBIN (machine code) at first use for the device's architecture
//! and cached by a hash of the source, so a changed kernel is never served stale. CUBIN rather than
//! PTX: a driver older than NVRTC cannot load its PTX, but runs its CUBIN. The sources include no CUDA
//! headers (the runtime wheel's headers want CCCL): [`PRELUDE`] carries the few helpers they share.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};

/// One kernel family: a CUDA C translation unit (after [`PRELUDE`]) and the kernels it defines.
pub struct Family {
    pub name: &'static str,
    pub src: &'static str,
    pub kernels: &'static [&'static str],
}

/// Every family the CUDA device launches (the NVRTC test compiles each).
pub const FAMILIES: [&Family; 9] = [
    &super::elementwise::FAMILY,
    &super::embedding::FAMILY,
    &super::norm::FAMILY,
    &super::rope::FAMILY,
    &super::attention::FAMILY,
    &super::activation::FAMILY,
    &super::cross_entropy::FAMILY,
    &super::adamw::FAMILY,
    &super::flash::FAMILY,
];

/// Shared by every family: integer types, a grid-stride loop, warp/block reductions (blocks are
/// multiples of 32 threads, at most 1024), the column-sum epilogue of `launch::columns` blocks, and
/// a header-free f32 -> bf16 conversion (round to nearest even).
pub const PRELUDE: &str = r#"
typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block, returned to every thread. Every thread must call it. */
__device__ float block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    return warp_sum(lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f);
}

__device__ float block_max(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    return warp_max(lane < (int)(blockDim.x >> 5) ? part[lane] : NEG_INF);
}

/* Column sums over blocks of (32, 8) threads: thread (x, y) of block (bx, by) owns column
   bx * 32 + x and rows by * 8 + y, stepping by gridDim.y * 8. */
#define COLUMN_ROWS(r, rows) for (int r = blockIdx.y * blockDim.y + threadIdx.y; r < (rows); r += gridDim.y * blockDim.y)

/* Adds the block's partial sums of column `col` into out[col] (one atomic per column and block).
   Every thread must call it. */
__device__ void column_accumulate(float s, float* out, int col, int width) {
    __shared__ float part[8][33];
    __syncthreads();
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < width) {
        for (int k = 1; k < 8; k++) s += part[k][threadIdx.x];
        atomicAdd(out + col, s);
    }
}

__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}
"#;

/// The full translation unit of one family.
pub fn source(family: &Family) -> String {
    format!("{PRELUDE}\n{}", family.src)
}

/// Hash of a translation unit: the cache key of its compiled module.
pub fn source_hash(src: &str) -> u64 {
    let mut h = DefaultHasher::new();
    src.hash(&mut h);
    h.finish()
}

/// NVRTC options for `arch` (`sm_90`): precise division and square root, so kernels agree with the
/// CPU engine to ~1e-6. A real architecture (`sm_`), so NVRTC can emit CUBIN.
pub fn options(arch: &str) -> Vec<String> {
    [format!("--gpu-architecture={arch}"), "--std=c++17".into(), "--prec-div=true".into(), "--prec-sqrt=true".into()]
        .into()
}

/// What [`compile`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// PTX text (NUL-terminated), for reading.
    Ptx,
    /// The ELF image the driver loads as is.
    Cubin,
}

/// Compiles one family for `arch`. Needs only libnvrtc (no GPU).
pub fn compile(family: &Family, arch: &str, output: Output) -> Result<Vec<u8>, String> {
    let fail =
        |what: &str, e: nvrtc::NvrtcError| format!("NVRTC {what} kernel family '{}' for {arch}: {e:?}", family.name);
    let src = CString::new(source(family)).expect("kernel sources hold no NUL");
    let name = CString::new(format!("{}.cu", family.name)).expect("family names hold no NUL");
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| fail("could not create", e))?;
    // SAFETY: `prog` is live until the destroy below; every size comes from NVRTC itself.
    let result = unsafe {
        match nvrtc::compile_program(prog, &options(arch)) {
            Err(e) => {
                let log =
                    nvrtc::get_program_log(prog).map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned());
                Err(format!("{}:\n{}", fail("could not compile", e), log.unwrap_or_default()))
            }
            Ok(()) => match output {
                Output::Ptx => nvrtc::get_ptx(prog).map(|p| p.into_iter().map(|c| c as u8).collect()),
                Output::Cubin => cubin(prog),
            }
            .map_err(|e| fail("could not read the output of", e)),
        }
    };
    // SAFETY: created above, destroyed once.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

/// # Safety
/// `prog` is a live, compiled program.
unsafe fn cubin(prog: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>, nvrtc::NvrtcError> {
    let mut size = 0usize;
    nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result()?;
    let mut image = vec![0u8; size];
    nvrtc_sys::nvrtcGetCUBIN(prog, image.as_mut_ptr() as *mut c_char).result()?;
    Ok(image)
}

/// NVRTC's and the driver's CUDA versions (`13.0`), for the logs: each as far as it loads.
pub fn versions() -> String {
    let mut nvrtc = (0 as c_int, 0 as c_int);
    // SAFETY: plain queries writing integers; the probes keep a missing library from panicking.
    let nvrtc = if unsafe { nvrtc_sys::is_culib_present() } {
        match unsafe { nvrtc_sys::nvrtcVersion(&mut nvrtc.0, &mut nvrtc.1) }.result() {
            Ok(()) => format!("{}.{}", nvrtc.0, nvrtc.1),
            Err(e) => format!("{e:?}"),
        }
    } else {
        "not loaded".into()
    };
    let mut driver: c_int = 0;
    let sys = cudarc::driver::sys::cuDriverGetVersion;
    // SAFETY: as above.
    let driver = if unsafe { cudarc::driver::sys::is_culib_present() } {
        match unsafe { sys(&mut driver) }.result() {
            Ok(()) => format!("{}.{}", driver / 1000, driver % 1000 / 10),
            Err(e) => format!("{e:?}"),
        }
    } else {
        "not loaded".into()
    };
    format!("NVRTC {nvrtc}, driver supports CUDA {driver}")
}

/// Compiled modules of one context, by source hash, and their functions by name.
#[derive(Default)]
pub struct KernelCache {
    modules: Mutex<HashMap<u64, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
}

/// A cache map, even after a panic while it was held (entries are inserted whole), so one failed
/// kernel does not fail every later launch.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KernelCache {
    /// `name` from `family`, compiling and loading the family on first use. Panics with NVRTC's
    /// log when a kernel does not compile (a bug in this crate, caught by the NVRTC test).
    pub fn function(&self, ctx: &Arc<CudaContext>, arch: &str, family: &Family, name: &'static str) -> CudaFunction {
        let key = (family.name, name);
        if let Some(f) = locked(&self.functions).get(&key) {
            return f.clone();
        }
        assert!(family.kernels.contains(&name), "cuda: kernel {name} is not listed in family {}", family.name);
        let hash = source_hash(&source(family));
        let module = {
            let mut modules = locked(&self.modules);
            match modules.get(&hash) {
                Some(m) => m.clone(),
                None => {
                    let cubin = compile(family, arch, Output::Cubin).unwrap_or_else(|e| panic!("cuda: {e}"));
                    let m = ctx.load_module(Ptx::from_binary(cubin)).unwrap_or_else(|e| {
                        panic!("cuda: loading the CUBIN of family {} ({}): {e:?}", family.name, versions())
                    });
                    modules.insert(hash, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .unwrap_or_else(|e| panic!("cuda: kernel {name} of family {}: {e:?}", family.name));
        locked(&self.functions).insert(key, f.clone());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_kernel_is_defined_in_its_family() {
        for family in FAMILIES {
            for kernel in family.kernels {
                let decl = format!("__global__ void {kernel}(");
                assert!(family.src.contains(&decl), "{}: no `{decl}`", family.name);
            }
            let defined = family.src.matches("__global__ void ").count();
            assert_eq!(defined, family.kernels.len(), "{}: kernels defined but not listed", family.name);
        }
    }

    #[test]
    fn the_hash_follows_the_source() {
        let a = source(FAMILIES[0]);
        assert_eq!(source_hash(&a), source_hash(&a.clone()));
        assert_ne!(source_hash(&a), source_hash(&format!("{a} ")));
    }
}
