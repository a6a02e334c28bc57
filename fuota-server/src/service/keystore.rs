//! Secrets at rest: device root keys and group McKeys are stored encrypted with AES-256-GCM
//! under the server key (config `keys.server_key`, env `FUOTA_SERVER_KEY`, or a key file made
//! on first start). Each value has its own random nonce; the DevEUI (or campaign) is the
//! associated data, so that a ciphertext moved to another row does not decrypt.
//!
//! A key file's key can be rotated (an admin's `POST /api/keys/rotate`): the new key is written
//! next to the file (`<file>.next`), every sealed value is sealed again under it in one
//! transaction with a check value, then the new file replaces the old. Cut short anywhere, the
//! next start finishes or forgets the rotation: whichever key opens the check value is the
//! database's.

use std::path::{Path, PathBuf};

use super::config::KeysConfig;
use super::store::Store;

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
    f.write_all(b"\n")?;
    f.sync_all()
}

/// The settings row that holds the check value.
pub const CHECK_NAME: &str = "server_key_check";
const CHECK_TEXT: &[u8] = b"the fuota server key of this database";

impl KeyStore {
    /// A value only this key opens, for the settings table.
    pub fn check_value(&self) -> Vec<u8> {
        self.seal(CHECK_TEXT, CHECK_NAME.as_bytes())
    }

    pub fn opens_check(&self, v: &[u8]) -> bool {
        self.open(v, CHECK_NAME.as_bytes())
            .is_ok_and(|p| p == CHECK_TEXT)
    }
}

/// Where the server key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `keys.server_key` or `FUOTA_SERVER_KEY`: only the configuration can change it.
    Config,
    /// A key file: it can be rotated.
    File(PathBuf),
}

/// `<file>.next`: a rotation's new key until it is the file.
pub fn next_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".next");
    PathBuf::from(p)
}

/// Writes a rotation's new key beside the key file (durably, mode 0600).
pub fn write_next(path: &Path, key: &[u8; 32]) -> Result<(), KeyError> {
    let next = next_path(path);
    let _ = std::fs::remove_file(&next);
    write_private(&next, &hex::encode(key))
        .map_err(|e| KeyError(format!("{}: {e}", next.display())))
}

/// Makes the rotation's new key the key file.
pub fn commit_next(path: &Path) -> Result<(), KeyError> {
    let next = next_path(path);
    std::fs::rename(&next, path).map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename itself made durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The server key from the configuration or its file, a rotation cut short finished or
/// forgotten, and the check value written if the database has none.
pub async fn load(cfg: &KeysConfig, store: &Store) -> Result<(KeyStore, KeySource), KeyError> {
    let db = |e: sqlx::Error| KeyError(format!("database: {e}"));
    let check = store.setting(CHECK_NAME).await.map_err(db)?;
    let (keys, source) = match &cfg.server_key {
        Some(k) => (KeyStore::from_hex(k)?, KeySource::Config),
        None => {
            let path = &cfg.server_key_file;
            let next = next_path(path);
            let pending = match std::fs::read_to_string(&next) {
                Ok(text) => Some(KeyStore::from_hex(&text)?),
                Err(_) => None,
            };
            let keys = match (pending, &check) {
                (Some(n), Some(c)) if n.opens_check(c) => {
                    tracing::warn!("a key rotation was cut short after its commit: finished");
                    commit_next(path)?;
                    n
                }
                (Some(_), _) => {
                    tracing::warn!("a key rotation was cut short before its commit: undone");
                    let _ = std::fs::remove_file(&next);
                    KeyStore::from_file(path)?
                }
                (None, _) => KeyStore::from_file(path)?,
            };
            (keys, KeySource::File(path.clone()))
        }
    };
    match &check {
        None => store
            .set_setting(CHECK_NAME, &keys.check_value())
            .await
            .map_err(db)?,
        Some(c) if !keys.opens_check(c) => tracing::error!(
            "the server key is not the one this database's keys are sealed under: campaigns \
             and rollouts will not resume"
        ),
        Some(_) => {}
    }
    Ok((keys, source))
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

    #[tokio::test]
    async fn a_rotation_cut_short_is_finished_or_forgotten_at_start() {
        let dir = std::env::temp_dir().join(format!("fuota-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.join("t.db").display()), 1)
            .await
            .unwrap();
        let cfg = KeysConfig {
            server_key: None,
            server_key_file: dir.join("server.key"),
        };
        // First start: a key file, and its check value in the database.
        let (first, source) = load(&cfg, &store).await.unwrap();
        assert_eq!(source, KeySource::File(cfg.server_key_file.clone()));
        let check = store.setting(CHECK_NAME).await.unwrap().unwrap();
        assert!(first.opens_check(&check));
        let sealed = first.seal(b"root", b"x");
        // Cut short before the commit: the new key is forgotten.
        write_next(&cfg.server_key_file, &[3; 32]).unwrap();
        let (again, _) = load(&cfg, &store).await.unwrap();
        assert_eq!(again.open(&sealed, b"x").unwrap(), b"root");
        assert!(!next_path(&cfg.server_key_file).exists());
        // Cut short after the commit (the database has the new key's check): finished.
        write_next(&cfg.server_key_file, &[4; 32]).unwrap();
        let newer = KeyStore::new(&[4; 32]);
        store
            .set_setting(CHECK_NAME, &newer.check_value())
            .await
            .unwrap();
        let (now, _) = load(&cfg, &store).await.unwrap();
        assert!(now.opens_check(&store.setting(CHECK_NAME).await.unwrap().unwrap()));
        assert!(now.open(&sealed, b"x").is_err());
        assert!(!next_path(&cfg.server_key_file).exists());
        let file = std::fs::read_to_string(&cfg.server_key_file).unwrap();
        assert_eq!(file.trim(), hex::encode([4u8; 32]));
        // A configured key is the configuration's.
        let (_, source) = load(
            &KeysConfig {
                server_key: Some(hex::encode([4u8; 32])),
                server_key_file: dir.join("unused.key"),
            },
            &store,
        )
        .await
        .unwrap();
        assert_eq!(source, KeySource::Config);
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
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
