//! Where tensors live. CPU unless built with `--features cuda` and a GPU is present.

use candle_core::Device;

pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(dev) = Device::new_cuda(0) {
            return dev;
        }
    }
    Device::Cpu
}

/// Fixes the CPU thread count for the process: `RAYON_NUM_THREADS`, when
/// the user did not set it, becomes the count candle picks (the physical
/// cores). candle asks for its thread count before every matmul, and
/// without the variable each ask reads /proc/cpuinfo (6% of `glimpse eval
/// vqa`'s samples, and the kernel time around it): its 9,673 questions took
/// 37–47 s on 2 cores, 17–19 s with this.
/// Call it first thing in `main`, before any other thread starts.
pub fn count_threads_once() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
