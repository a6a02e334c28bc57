//! Signed firmware patches: the container ([`container`]), the streaming heatshrink decoder
//! ([`heatshrink`]), the detools sequential patch and its streaming bspatch ([`detools`]), and
//! the verifying applier that ties them together ([`apply`]).

pub mod apply;
pub mod container;
pub mod detools;
pub mod heatshrink;

pub use apply::{
    Applied, Applier, ApplyError, Checkpoint, DetoolsApplier, SourceImage, TargetImage,
};
pub use container::{Compression, Container, ContainerError, ImageVersion, Kind, Manifest};
pub use p256::ecdsa::VerifyingKey;
