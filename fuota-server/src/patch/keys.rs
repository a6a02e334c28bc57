//! ECDSA P-256 key files: PKCS#8 PEM for the private key, SubjectPublicKeyInfo PEM for the
//! public one (what `openssl` and `imgtool` read and write). Signing and PEM are the `p256`
//! crate's; checking is the codec's own verifier, the one the device runs, which takes the
//! public key as SEC1 bytes.

use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};

use super::PatchError;

/// A fresh key pair from the operating system's random source: `(private PEM, public PEM)`.
pub fn generate() -> Result<(String, String), PatchError> {
    let key = SigningKey::random(&mut rand_core::OsRng);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| PatchError::Key(e.to_string()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| PatchError::Key(e.to_string()))?;
    Ok((private.to_string(), public))
}

/// Reads a PKCS#8 ("BEGIN PRIVATE KEY") or SEC1 ("BEGIN EC PRIVATE KEY") P-256 private key.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, PatchError> {
    if let Ok(k) = SigningKey::from_pkcs8_pem(pem) {
        return Ok(k);
    }
    p256::SecretKey::from_sec1_pem(pem)
        .map(SigningKey::from)
        .map_err(|_| PatchError::Key("not a P-256 private key in PKCS#8 or SEC1 PEM".into()))
}

/// Reads a P-256 public key ("BEGIN PUBLIC KEY"; a private key file also works) as the key
/// the device checks patches with.
pub fn verifying_key_from_pem(pem: &str) -> Result<fuota_codec::patch::VerifyingKey, PatchError> {
    let key = match VerifyingKey::from_public_key_pem(pem) {
        Ok(k) => k,
        Err(_) => signing_key_from_pem(pem)
            .map(|k| *k.verifying_key())
            .map_err(|_| PatchError::Key("not a P-256 public key in PEM".into()))?,
    };
    device_key(&key)
}

/// The `p256` crate's public key as the codec's (the device's), through its SEC1 bytes.
pub fn device_key(key: &VerifyingKey) -> Result<fuota_codec::patch::VerifyingKey, PatchError> {
    fuota_codec::patch::VerifyingKey::from_sec1_bytes(key.to_encoded_point(false).as_bytes())
        .map_err(|e| PatchError::Key(e.to_string()))
}
