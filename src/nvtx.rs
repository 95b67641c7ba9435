//! NVTX ranges around the decoding phases and the CUDA backend's kernel groups (GEMMs, attention,
//! the Clover cell), so an Nsight Systems timeline shows draft, verify and accept per step and
//! what each spends on the GPU. With the `nvtx` feature the library is loaded at run time (`libnvToolsExt.so`),
//! so building needs no CUDA and a machine without it just runs without ranges; without the
//! feature `scoped` is a plain call and compiles to nothing.

use std::ffi::CStr;

/// Runs `f` inside an NVTX range named `name`.
#[cfg(not(feature = "nvtx"))]
#[inline(always)]
pub fn scoped<T>(_name: &CStr, f: impl FnOnce() -> T) -> T {
    f()
}

/// Runs `f` inside an NVTX range named `name`.
#[cfg(feature = "nvtx")]
pub fn scoped<T>(name: &CStr, f: impl FnOnce() -> T) -> T {
    let Some(lib) = loaded::get() else {
        return f();
    };
    // SAFETY: both symbols have these C signatures in every NVTX v1/v2 library, and `name` is a
    // NUL-terminated string that outlives the call.
    unsafe { (lib.push)(name.as_ptr()) };
    let out = f();
    unsafe { (lib.pop)() };
    out
}

/// An NVTX range from `Range::new` until the guard is dropped (for ranges around a block of
/// statements; `scoped` for a closure).
pub struct Range(());

impl Range {
    #[inline(always)]
    pub fn new(name: &CStr) -> Range {
        #[cfg(feature = "nvtx")]
        if let Some(lib) = loaded::get() {
            // SAFETY: as in `scoped`.
            unsafe { (lib.push)(name.as_ptr()) };
        }
        #[cfg(not(feature = "nvtx"))]
        let _ = name;
        Range(())
    }
}

impl Drop for Range {
    #[inline(always)]
    fn drop(&mut self) {
        #[cfg(feature = "nvtx")]
        if let Some(lib) = loaded::get() {
            // SAFETY: pops the range `new` pushed (a missing library pushed nothing and pops nothing).
            unsafe { (lib.pop)() };
        }
    }
}

#[cfg(feature = "nvtx")]
mod loaded {
    use std::ffi::{c_char, c_int};
    use std::sync::OnceLock;

    type PushFn = unsafe extern "C" fn(*const c_char) -> c_int;
    type PopFn = unsafe extern "C" fn() -> c_int;

    pub struct Nvtx {
        pub push: PushFn,
        pub pop: PopFn,
        /// Keeps the library mapped for as long as the function pointers are used.
        _lib: libloading::Library,
    }

    /// The library, loaded on first use; a missing one is reported once, then ranges are off.
    pub fn get() -> Option<&'static Nvtx> {
        static NVTX: OnceLock<Option<Nvtx>> = OnceLock::new();
        NVTX.get_or_init(|| match load() {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("nvtx: ranges are off: {e}");
                None
            }
        })
        .as_ref()
    }

    fn load() -> Result<Nvtx, libloading::Error> {
        // SAFETY: loading runs the library's initialisers; libnvToolsExt has no unusual ones.
        unsafe {
            let lib = libloading::Library::new("libnvToolsExt.so.1")
                .or_else(|_| libloading::Library::new("libnvToolsExt.so"))?;
            let push = *lib.get::<PushFn>(b"nvtxRangePushA\0")?;
            let pop = *lib.get::<PopFn>(b"nvtxRangePop\0")?;
            Ok(Nvtx { push, pop, _lib: lib })
        }
    }
}
