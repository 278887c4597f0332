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
