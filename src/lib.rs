//! IBN-Net for burn.
pub mod block;
pub mod error;
pub mod model;
pub mod norm;
pub mod npy;
pub mod weights;

pub use error::{IbnError, Result};
