//! Opening a GPU: the checks cudarc does not make (it panics when a library is missing), the
//! context and stream, cuBLAS, and the kernels build.rs compiled.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

mod images {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Whether build.rs found nvcc and compiled the kernels into this binary.
pub fn built_with_kernels() -> bool {
    !images::KERNELS.is_empty()
}

/// Whether GPU `ordinal` can be opened: kernels in this build, the driver and cuBLAS libraries, the
/// device. Cheap (no context is created), so the CLI can pick its default device with it.
pub fn check(ordinal: usize) -> Result<()> {
    if !built_with_kernels() {
        return Err(Error::input(
            "CUDA backend: built without CUDA kernels (nvcc was not found at build time; see DEVELOPERS.md)",
        ));
    }
    // SAFETY: both only try to open the shared libraries; nothing is called in them.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::input("CUDA backend: the NVIDIA driver library (libcuda) was not found"));
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(Error::input("CUDA backend: the cuBLAS library (libcublas) was not found"));
    }
    let count = CudaContext::device_count().map_err(|e| Error::input(format!("CUDA backend: {e}")))?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::input(format!("CUDA backend: no GPU cuda:{ordinal} (this machine has {count})")));
    }
    Ok(())
}

/// Buffers come from the device's stream-ordered pool, which by default hands freed memory back
/// to the driver whenever the stream synchronises (every download, so every decoding step) and
/// maps it again at the next allocation. Keeping it in the pool makes those allocations cheap.
/// A device without pools (or a refusal) only loses the optimisation.
fn keep_freed_memory(ctx: &CudaContext) {
    use cudarc::driver::result::{device, mem_pool};
    use cudarc::driver::sys::CUmemPool_attribute;
    let mut keep_all: u64 = u64::MAX;
    // SAFETY: the device is the context's; the release threshold attribute is a cuuint64_t.
    unsafe {
        if let Ok(pool) = device::get_mem_pool(ctx.cu_device()) {
            let _ = mem_pool::set_attribute(
                pool,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep_all as *mut u64).cast(),
            );
        }
    }
}

pub struct Device {
    pub ordinal: usize,
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlas,
    functions: HashMap<String, CudaFunction>,
}

impl Device {
    /// GPU `ordinal`, or a clear error saying what is missing.
    pub fn open(ordinal: usize) -> Result<Device> {
        check(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::input(format!("CUDA backend: cuda:{ordinal}: {e}")))?;
        // SAFETY: the backend uses one stream (cuBLAS included), so stream order alone keeps every
        // buffer's uses in order; the two events cudarc would record per allocation buy nothing.
        unsafe { ctx.disable_event_tracking() };
        keep_freed_memory(&ctx);
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::input(format!("CUDA backend: cuBLAS: {e}")))?;
        let mut functions = HashMap::new();
        for (file, image, names) in images::KERNELS {
            let module = ctx
                .load_module(Ptx::from_binary(image.to_vec()))
                .map_err(|e| Error::input(format!("CUDA backend: loading kernels/{file}.cu: {e}")))?;
            for name in names.iter() {
                let f = module
                    .load_function(name)
                    .map_err(|e| Error::input(format!("CUDA backend: kernel {name} of kernels/{file}.cu: {e}")))?;
                functions.insert(name.to_string(), f);
            }
        }
        Ok(Device { ordinal, stream, blas, functions })
    }

    /// The kernel `name` (a missing one is a build bug, not a user error).
    pub fn function(&self, name: &str) -> &CudaFunction {
        self.functions.get(name).unwrap_or_else(|| panic!("CUDA backend: kernel {name} is not in this build"))
    }
}
