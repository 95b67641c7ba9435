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
