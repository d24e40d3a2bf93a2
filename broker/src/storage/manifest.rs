//! The data directory's manifest: format version, shard count and the
//! broker secret (used by the engine to sign receipt handles).
//!
//! File `<data-dir>/MANIFEST`, UTF-8 text, one `key value` per line:
//!
//! ```text
//! cmq-manifest 2
//! shards 4
//! secret 0123456789abcdef0123456789abcdef
//! crc 1a2b3c4d
//! ```
//!
//! `crc` is the CRC32C (hex) of every byte before the `crc` line. Written
//! atomically: `MANIFEST.tmp`, fsync, rename, fsync the directory.
//!
//! The format version is that of the whole data directory: version 2 has
//! the write-ahead log of segment format 2 (position-bound record headers
//! and durable marks). A directory of another version is refused with
//! [`ManifestError::Version`]; there is no conversion (no deployed data
//! predates version 2).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "MANIFEST";
const TMP_NAME: &str = "MANIFEST.tmp";
const FORMAT_VERSION: u32 = 2;
const MAGIC_KEY: &str = "cmq-manifest";
/// A manifest is a few lines; anything bigger is not ours.
const MANIFEST_BYTES_MAX: u64 = 4096;
pub const SECRET_BYTES: usize = 16;
/// Shard counts outside this range are configuration mistakes.
pub const SHARDS_MAX: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("manifest {} is damaged: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error(
        "data directory {} was created with {found} shards, but this cmqd is configured \
         with {wanted}; the shard count of a data directory cannot change (configure \
         {found} shards or use a new data directory)",
        dir.display()
    )]
    ShardMismatch { dir: PathBuf, found: u32, wanted: u32 },
    #[error("shard count {0} is outside 1..={SHARDS_MAX}")]
    BadShardCount(u32),
    #[error(
        "data directory {} has format version {found}; this cmqd reads version {FORMAT_VERSION} only and \
         cannot convert it: start cmqd on a new data directory",
        dir.display()
    )]
    Version { dir: PathBuf, found: u32 },
}

#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: u32,
    pub shards: u32,
    pub secret: [u8; SECRET_BYTES],
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keep the secret out of logs.
        f.debug_struct("Manifest").field("version", &self.version).field("shards", &self.shards).finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; SECRET_BYTES]> {
    if s.len() != 2 * SECRET_BYTES || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; SECRET_BYTES];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Manifest {
    /// Loads the manifest of `data_dir`, or creates it (with a fresh random
    /// secret) if there is none. Refuses a different shard count.
    pub fn load_or_create(data_dir: &Path, shards: u32) -> Result<Manifest, ManifestError> {
        if shards == 0 || shards > SHARDS_MAX {
            return Err(ManifestError::BadShardCount(shards));
        }
        let path = data_dir.join(FILE_NAME);
        let io_err = |source| ManifestError::Io { path: path.clone(), source };
        match File::open(&path) {
            Ok(f) => {
                let mut text = String::new();
                f.take(MANIFEST_BYTES_MAX).read_to_string(&mut text).map_err(io_err)?;
                let m = Self::parse(&text).map_err(|why| ManifestError::Invalid { path: path.clone(), why })?;
                if m.version != FORMAT_VERSION {
                    return Err(ManifestError::Version { dir: data_dir.to_path_buf(), found: m.version });
                }
                if m.shards != shards {
                    return Err(ManifestError::ShardMismatch {
                        dir: data_dir.to_path_buf(),
                        found: m.shards,
                        wanted: shards,
                    });
                }
                Ok(m)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(io_err)?;
                let mut secret = [0u8; SECRET_BYTES];
                File::open("/dev/urandom").and_then(|mut r| r.read_exact(&mut secret)).map_err(io_err)?;
                let m = Manifest { version: FORMAT_VERSION, shards, secret };
                m.write(data_dir).map_err(io_err)?;
                Ok(m)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    fn render(&self) -> String {
        let body = format!("{MAGIC_KEY} {}\nshards {}\nsecret {}\n", self.version, self.shards, hex(&self.secret));
        let crc = crc32c::crc32c(body.as_bytes());
        format!("{body}crc {crc:08x}\n")
    }

    fn write(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(TMP_NAME);
        let mut f = File::create(&tmp)?;
        f.write_all(self.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(FILE_NAME))?;
        File::open(dir)?.sync_all()
    }

    fn parse(text: &str) -> Result<Manifest, String> {
        let crc_at = text.rfind("crc ").ok_or("no crc line")?;
        let (body, crc_line) = text.split_at(crc_at);
        let stored =
            u32::from_str_radix(crc_line.trim_start_matches("crc ").trim(), 16).map_err(|_| "unreadable crc")?;
        if stored != crc32c::crc32c(body.as_bytes()) {
            return Err("checksum mismatch".into());
        }
        let (mut version, mut shards, mut secret) = (None, None, None);
        for line in body.lines() {
            let (k, v) = line.split_once(' ').ok_or_else(|| format!("bad line {line:?}"))?;
            match k {
                MAGIC_KEY => version = v.parse::<u32>().ok(),
                "shards" => shards = v.parse::<u32>().ok(),
                "secret" => secret = unhex(v),
                _ => return Err(format!("unknown key {k:?}")),
            }
        }
        let version = version.ok_or("missing or bad format version")?;
        Ok(Manifest {
            version,
            shards: shards.ok_or("missing or bad shard count")?,
            secret: secret.ok_or("missing or bad secret")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_keeps_the_secret() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let a = Manifest::load_or_create(d.path(), 4)?;
        let b = Manifest::load_or_create(d.path(), 4)?;
        assert_eq!(a, b);
        assert_ne!(a.secret, [0u8; SECRET_BYTES]);
        assert!(!d.path().join(TMP_NAME).exists());
        assert!(!format!("{a:?}").contains(&hex(&a.secret)));
        Ok(())
    }

    #[test]
    fn refuses_another_shard_count() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        Manifest::load_or_create(d.path(), 4)?;
        let err = Manifest::load_or_create(d.path(), 8).err().ok_or("accepted 8 shards")?;
        let msg = err.to_string();
        assert!(msg.contains("created with 4 shards") && msg.contains("configured with 8"), "{msg}");
        assert!(matches!(Manifest::load_or_create(d.path(), 0), Err(ManifestError::BadShardCount(0))));
        Ok(())
    }

    #[test]
    fn another_format_version_is_refused_by_name() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let old = Manifest { version: 1, shards: 2, secret: [1; SECRET_BYTES] };
        old.write(d.path())?;
        let err = Manifest::load_or_create(d.path(), 2).err().ok_or("accepted format 1")?;
        assert!(matches!(err, ManifestError::Version { found: 1, .. }), "{err}");
        assert!(err.to_string().contains("new data directory"), "{err}");
        Ok(())
    }

    #[test]
    fn damage_is_detected() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        Manifest::load_or_create(d.path(), 2)?;
        let p = d.path().join(FILE_NAME);
        let text = std::fs::read_to_string(&p)?.replace("shards 2", "shards 3");
        std::fs::write(&p, text)?;
        assert!(matches!(Manifest::load_or_create(d.path(), 3), Err(ManifestError::Invalid { .. })));
        Ok(())
    }
}
