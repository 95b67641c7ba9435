//! Small host arrays that every layer of a step passes again: the tree mask of a verification or
//! a drafting level, and the slot moves of a KV compaction. Uploading them once per step instead
//! of once per layer (and per K and V) saves some 60 small synchronous copies a step.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};

/// The last array uploaded through it, kept on the device while the next call asks for the same
/// values. Device copies are never written, so handing the same one to several kernels is safe.
pub struct Reused<T> {
    last: Mutex<Option<Upload<T>>>,
}

/// Host values and their device copy.
type Upload<T> = (Vec<T>, Arc<CudaSlice<T>>);

impl<T: DeviceRepr + Clone + PartialEq> Reused<T> {
    pub fn new() -> Self {
        Reused { last: Mutex::new(None) }
    }

    /// The device copy of `host`: the kept one when the values are the same, else a new upload.
    pub fn get(&self, stream: &Arc<CudaStream>, host: &[T]) -> Arc<CudaSlice<T>> {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((values, on_device)) = last.as_ref() {
            if values.as_slice() == host {
                return on_device.clone();
            }
        }
        let on_device = Arc::new(stream.clone_htod(host).expect("CUDA backend: upload"));
        *last = Some((host.to_vec(), on_device.clone()));
        on_device
    }
}
