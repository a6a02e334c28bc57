//! Secrets at rest: device root keys and group McKeys are stored encrypted with AES-256-GCM
//! under the server key (config `keys.server_key`, env `FUOTA_SERVER_KEY`, or a key file made
//! on first start). Each value has its own random nonce; the DevEUI (or campaign) is the
//! associated data, so that a ciphertext moved to another row does not decrypt.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::{OsRng, RngCore};

const NONCE_LEN: usize = 12;

/// The server key.
#[derive(Clone)]
pub struct KeyStore {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyStore(..)")
    }
}

/// A key that cannot be used, or a value that does not decrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl KeyStore {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// From 64 hex digits.
    pub fn from_hex(hex_key: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(hex_key.trim())
            .map_err(|e| KeyError(format!("server key is not hex: {e}")))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError("server key must be 32 bytes (64 hex digits)".into()))?;
        Ok(Self::new(&key))
    }

    /// Reads the key file, or makes one with a random key (mode 0600) if there is none.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_hex(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                OsRng.fill_bytes(&mut key);
                write_private(path, &hex::encode(key))
                    .map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
                Ok(Self::new(&key))
            }
            Err(e) => Err(KeyError(format!("{}: {e}", path.display()))),
        }
    }

    /// nonce || ciphertext || tag.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            // AES-GCM encryption fails only for messages of gigabytes.
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(ct);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        if sealed.len() < NONCE_LEN {
            return Err(KeyError("sealed value too short".into()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| KeyError("a stored key does not decrypt: wrong server key?".into()))
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_the_same_key_and_row_only() {
        let ks = KeyStore::new(&[7; 32]);
        let s = ks.seal(&[1; 16], b"0000000000000001");
        assert_eq!(s.len(), 12 + 16 + 16);
        assert!(!s.windows(16).any(|w| w == [1; 16]));
        assert_eq!(ks.open(&s, b"0000000000000001").unwrap(), [1; 16]);
        assert!(ks.open(&s, b"0000000000000002").is_err());
        assert!(KeyStore::new(&[8; 32])
            .open(&s, b"0000000000000001")
            .is_err());
        assert!(ks.open(&s[..5], b"").is_err());
        assert!(KeyStore::from_hex("00").is_err());
        assert!(KeyStore::from_hex(&"ab".repeat(32)).is_ok());
    }

    #[test]
    fn a_key_file_is_made_once_then_read() {
        let dir = std::env::temp_dir().join(format!("fuota-ks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.key");
        let _ = std::fs::remove_file(&path);
        let a = KeyStore::from_file(&path).unwrap();
        let s = a.seal(b"root", b"x");
        let b = KeyStore::from_file(&path).unwrap();
        assert_eq!(b.open(&s, b"x").unwrap(), b"root");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
