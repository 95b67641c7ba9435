//! NVTX ranges around the decoding phases and the CUDA backend's kernel groups (GEMMs, attention,
//! the Clover cell), so an Nsight Systems timeline shows draft, verify and accept per step and
//! what each spends on the GPU. With the `nvtx` feature the library is loaded at run time
//! (`libnvToolsExt.so` of CUDA ≤ 12, `libnvtx3interop.so` of CUDA 13, or the file
//! `CLOVER_NVTX_LIB` names), so building needs no CUDA and a machine without it just runs without
//! ranges; without the feature `scoped` is a plain call and compiles to nothing.

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

    /// The libraries tried, in order: `CLOVER_NVTX_LIB` (a path, e.g. to the pip wheel's copy), the
    /// NVTX v2 library of CUDA ≤ 12, then CUDA 13's `libnvtx3interop` (the same two C functions,
    /// forwarded to the profiler that nsys injects).
    fn candidates() -> Vec<std::ffi::OsString> {
        let mut names: Vec<std::ffi::OsString> = std::env::var_os("CLOVER_NVTX_LIB").into_iter().collect();
        names.extend(
            ["libnvToolsExt.so.1", "libnvToolsExt.so", "libnvtx3interop.so.1", "libnvtx3interop.so"].map(Into::into),
        );
        names
    }

    fn load() -> Result<Nvtx, String> {
        let mut tried = Vec::new();
        for name in candidates() {
            // SAFETY: loading runs the library's initialisers; the NVTX libraries have no unusual
            // ones, and both symbols have these C signatures in each of them.
            let loaded = unsafe {
                libloading::Library::new(&name).and_then(|lib| {
                    let push = *lib.get::<PushFn>(b"nvtxRangePushA\0")?;
                    let pop = *lib.get::<PopFn>(b"nvtxRangePop\0")?;
                    Ok(Nvtx { push, pop, _lib: lib })
                })
            };
            match loaded {
                Ok(n) => return Ok(n),
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(format!("no NVTX library could be loaded ({}); CLOVER_NVTX_LIB can name one", tried.join("; ")))
    }
}
