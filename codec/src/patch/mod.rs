//! Signed firmware patches: the container ([`container`]), the streaming heatshrink decoder
//! ([`heatshrink`]), the detools sequential patch and its streaming bspatch ([`detools`]), the
//! ECDSA P-256 signature check ([`ecdsa`]), and the verifying applier that ties them together
//! ([`apply`]).

pub mod apply;
pub mod container;
pub mod detools;
pub mod ecdsa;
pub mod heatshrink;

pub use apply::{
    Applied, Applier, ApplyError, BorrowedApplier, Checkpoint, DetoolsApplier, SourceImage,
    TargetImage,
};
pub use container::{Compression, Container, ContainerError, ImageVersion, Kind, Manifest};
pub use ecdsa::{KeyError, VerifyingKey};

/// What checks a patch's signature: ECDSA P-256 over the SHA-256 digest of the signed bytes
/// (header and manifest), the signature as r || s. [`VerifyingKey`] does it in software (the
/// codec's own verifier, [`ecdsa`]: about 2.2 KiB of Cortex-M4 code and 1 KiB of stack); a
/// device with a public-key accelerator (the STM32WL's PKA, for one) can bring its own and
/// leave that code out.
pub trait SignatureCheck {
    /// Whether `signature` is valid for `digest` under the trusted key.
    fn verify_digest(&self, digest: &[u8; 32], signature: &[u8; 64]) -> bool;
}

impl SignatureCheck for VerifyingKey {
    fn verify_digest(&self, digest: &[u8; 32], signature: &[u8; 64]) -> bool {
        self.verify_prehash(digest, signature)
    }
}

impl<K: SignatureCheck + ?Sized> SignatureCheck for &K {
    fn verify_digest(&self, digest: &[u8; 32], signature: &[u8; 64]) -> bool {
        (**self).verify_digest(digest, signature)
    }
}
