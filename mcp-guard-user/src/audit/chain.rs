//! The hash chain and its signatures: what the writer appends to each record, what
//! `audit verify` checks, and the signing key.
//!
//! A record's line is `{...,"prev":"<hex>","hash":"<hex>"}` or, on the last record of each
//! write, `{...,"prev":"<hex>","hash":"<hex>","sig":"<hex>"}`:
//! - `hash` = SHA-256(`prev` ‖ the line up to `,"hash":` followed by `}`);
//! - `sig` = Ed25519(key, [`SIG_CONTEXT`] ‖ `hash`), `hash` as its 64 hex characters.
//!
//! A signature covers its record and, through the chain, every record before it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::Deserialize;

use crate::digest::hex;

/// What a signature signs, before the chain head: keeps these signatures from meaning
/// anything elsewhere.
pub const SIG_CONTEXT: &[u8] = b"mcp-guard audit chain head v1\n";

/// The start of the suffix the writer appends to a record's JSON.
pub(crate) const HASH_FIELD: &[u8] = b",\"hash\":\"";
const SIG_FIELD: &[u8] = b"\",\"sig\":\"";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read signing key {}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create signing key {}", path.display())]
    CreateKey {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("signing key {} is readable by group or others (mode {mode:o}); chmod 600 it", path.display())]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("signing key {} belongs to uid {owner}, not to this user", path.display())]
    KeyOwner { path: PathBuf, owner: u32 },
    #[error("signing key {} is not an Ed25519 PKCS#8 (DER) key", path.display())]
    KeyFormat { path: PathBuf },
    #[error("public key {} does not match signing key {}; remove the public key to export it again", public.display(), key.display())]
    PublicMismatch { key: PathBuf, public: PathBuf },
    #[error("cannot read public key {}", path.display())]
    ReadPublic {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("public key {} is not 64 hex digits (an Ed25519 public key)", path.display())]
    PublicFormat { path: PathBuf },
}

/// What the next record's `prev` names: the record's `hash`, or, when the record is
/// signed, SHA-256 over its hash and its signature. Chaining the signature means every byte
/// of every record, signatures included, is covered by the last signature.
pub fn link(hash: &str, sig: Option<&[u8]>) -> String {
    match sig {
        None => hash.to_string(),
        Some(sig) => hex(&digest(
            b"mcp-guard audit link v1\n",
            &[hash.as_bytes(), b":", sig],
        )),
    }
}

/// SHA-256 over the previous record's hash and this record's bytes (without `hash`).
pub fn chain_hash(prev: &str, body: &[u8]) -> String {
    hex(&digest(prev.as_bytes(), &[body]))
}

fn digest(prev: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A record line taken apart (without its newline).
pub(crate) struct Line<'a> {
    /// The line up to `,"hash":`: with `}` appended, the bytes the hash covers.
    pub body: &'a [u8],
    pub hash: &'a [u8],
    pub sig: Option<&'a [u8]>,
}

impl<'a> Line<'a> {
    /// Splits off the writer's suffix; `None` when the line does not end as the writer ends lines.
    pub fn split(line: &'a [u8]) -> Option<Line<'a>> {
        let at = memchr::memmem::rfind(line, HASH_FIELD)?;
        let rest = line[at + HASH_FIELD.len()..].strip_suffix(b"\"}")?;
        let (hash, sig) = match rest.len() {
            64 => (rest, None),
            n if n == 64 + SIG_FIELD.len() + 128 && rest[64..].starts_with(SIG_FIELD) => {
                (&rest[..64], Some(&rest[64 + SIG_FIELD.len()..]))
            }
            _ => return None,
        };
        is_hex(hash).then_some(())?;
        if let Some(s) = sig {
            is_hex(s).then_some(())?;
        }
        Some(Line {
            body: &line[..at],
            hash,
            sig,
        })
    }

    /// Whether `hash` follows from `prev` and the body.
    pub fn hash_matches(&self, prev: &[u8]) -> bool {
        let d = digest(prev, &[self.body, b"}"]);
        hex_eq(&d, self.hash)
    }
}

fn is_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_eq(bytes: &[u8], hex_text: &[u8]) -> bool {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    hex_text.len() == bytes.len() * 2
        && bytes.iter().zip(hex_text.chunks(2)).all(|(b, h)| {
            h[0] == DIGITS[usize::from(b >> 4)] && h[1] == DIGITS[usize::from(b & 15)]
        })
}

fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let text = text.trim_ascii();
    if text.len() != 2 * N {
        return None;
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.chunks(2)) {
        *o = val(pair[0])? << 4 | val(pair[1])?;
    }
    Some(out)
}

/// The key that signs chain heads.
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    /// Loads the PKCS#8 key at `path`, creating it (mode 0600) if it does not exist, and
    /// exports its public half (hex) to `path` with the extension `.pub`.
    pub fn load_or_create(path: &Path) -> Result<Signer, Error> {
        let signer = match File::open(path) {
            Ok(f) => Signer::read(path, f)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Signer::create(path)?,
            Err(source) => {
                return Err(Error::ReadKey {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        signer.export(path)?;
        Ok(signer)
    }

    fn read(path: &Path, mut f: File) -> Result<Signer, Error> {
        let err = |source| Error::ReadKey {
            path: path.to_path_buf(),
            source,
        };
        let meta = f.metadata().map_err(err)?;
        if meta.mode() & 0o077 != 0 {
            return Err(Error::KeyMode {
                path: path.to_path_buf(),
                mode: meta.mode() & 0o7777,
            });
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(Error::KeyOwner {
                path: path.to_path_buf(),
                owner: meta.uid(),
            });
        }
        let mut der = Vec::new();
        f.read_to_end(&mut der).map_err(err)?;
        // `maybe_unchecked` also takes v1 PKCS#8 (openssl genpkey -algorithm ed25519 -outform DER).
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| Error::KeyFormat {
                path: path.to_path_buf(),
            })?;
        Ok(Signer { pair })
    }

    /// Creates the key under a temporary name and links it into place, so concurrent first
    /// starts agree on one key: whoever links second loads the winner's.
    fn create(path: &Path) -> Result<Signer, Error> {
        let err = |source| Error::CreateKey {
            path: path.to_path_buf(),
            source,
        };
        // Its directory too, on a first start (root's alone: 0700).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| err(io::Error::other("no randomness")))?;
        let tmp = sibling(path, &format!(".tmp-{}", super::random_id()));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(der.as_ref())?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                sync_dir(path);
                Ok(Signer {
                    pair: Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|_| {
                        Error::KeyFormat {
                            path: path.to_path_buf(),
                        }
                    })?,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Signer::read(
                path,
                File::open(path).map_err(|source| Error::ReadKey {
                    path: path.to_path_buf(),
                    source,
                })?,
            ),
            Err(e) => Err(err(e)),
        }
    }

    /// Writes the public key next to the private one if it is not there; refuses a different one.
    fn export(&self, key: &Path) -> Result<(), Error> {
        let public = key.with_extension("pub");
        let mine = hex(self.pair.public_key().as_ref());
        match std::fs::read(&public) {
            Ok(text)
                if unhex::<32>(&text)
                    .is_some_and(|k| k.as_slice() == self.pair.public_key().as_ref()) =>
            {
                Ok(())
            }
            Ok(_) => Err(Error::PublicMismatch {
                key: key.to_path_buf(),
                public,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let tmp = sibling(&public, &format!(".tmp-{}", super::random_id()));
                let res = (|| {
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(&tmp)?;
                    f.write_all(format!("{mine}\n").as_bytes())?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &public)
                })();
                let _ = std::fs::remove_file(&tmp);
                res.map_err(|source| Error::CreateKey {
                    path: public,
                    source,
                })
            }
            Err(source) => Err(Error::ReadPublic {
                path: public,
                source,
            }),
        }
    }

    /// The signature (hex) over a chain head.
    pub fn sign(&self, hash: &[u8]) -> String {
        let mut msg = Vec::with_capacity(SIG_CONTEXT.len() + hash.len());
        msg.extend_from_slice(SIG_CONTEXT);
        msg.extend_from_slice(hash);
        hex(self.pair.sign(&msg).as_ref())
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex(self.pair.public_key().as_ref())
    }
}

/// A public key to check signatures with.
pub struct PublicKey(UnparsedPublicKey<[u8; 32]>);

impl PublicKey {
    /// Reads a public key file: 64 hex digits (surrounding whitespace ignored).
    pub fn read(path: &Path) -> Result<PublicKey, Error> {
        let text = std::fs::read(path).map_err(|source| Error::ReadPublic {
            path: path.to_path_buf(),
            source,
        })?;
        PublicKey::from_hex(&text).ok_or_else(|| Error::PublicFormat {
            path: path.to_path_buf(),
        })
    }

    /// A key from its 64 hex digits.
    pub fn from_hex(text: &[u8]) -> Option<PublicKey> {
        Some(PublicKey(UnparsedPublicKey::new(
            &ED25519,
            unhex::<32>(text)?,
        )))
    }

    /// The key's 32 bytes.
    pub fn bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// The key, 64 hex digits.
    pub fn hex(&self) -> String {
        hex(self.0.as_ref())
    }

    /// Whether `sig` (hex) signs the chain head `hash` (hex).
    pub fn verifies(&self, hash: &[u8], sig: &[u8]) -> bool {
        let Some(sig) = unhex::<64>(sig) else {
            return false;
        };
        let mut msg = [0u8; 128];
        let n = SIG_CONTEXT.len() + hash.len();
        if n > msg.len() {
            return false;
        }
        msg[..SIG_CONTEXT.len()].copy_from_slice(SIG_CONTEXT);
        msg[SIG_CONTEXT.len()..n].copy_from_slice(hash);
        self.0.verify(&msg[..n], &sig).is_ok()
    }
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Makes a new directory entry durable (best effort: some filesystems refuse).
pub(crate) fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// The last signed chain head written: `<log>.head`, one line
/// `{"seq":N,"hash":"<hex>","sig":"<hex>"}`. It is rewritten in place after writes (in
/// durable mode only after their `fdatasync`), never `fsync`ed itself: it may lag the log,
/// never run ahead of what reached the disk. A log that ends before the head was truncated.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub sig: String,
}

impl Head {
    /// The head file of the log at `log`.
    pub fn path(log: &Path) -> PathBuf {
        sibling(log, ".head")
    }

    /// Reads a head file; `None` if there is none.
    pub fn read(path: &Path) -> io::Result<Option<Head>> {
        match std::fs::read(path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The open head file, shared by the writers of one log in this process, and the
/// checkpoint file the heads are copied to, if there is one.
pub(crate) struct HeadFile {
    file: File,
    checkpoint: Option<super::checkpoint::Checkpoint>,
}

impl HeadFile {
    pub fn open(
        log: &Path,
        checkpoint: Option<super::checkpoint::Checkpoint>,
    ) -> io::Result<HeadFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(Head::path(log))?;
        Ok(HeadFile { file, checkpoint })
    }

    /// Writes a checkpoint that waits, once it is due.
    pub fn tick(&self) {
        if let Some(c) = &self.checkpoint {
            c.tick();
        }
    }

    /// Writes a checkpoint that waits (the log is being closed).
    pub fn flush(&self) {
        if let Some(c) = &self.checkpoint {
            c.flush();
        }
    }

    /// Records `head` unless the file already names a later record (another process's).
    pub fn advance(&self, head: &Head) -> io::Result<()> {
        let f =
            nix::fcntl::Flock::lock(self.file.try_clone()?, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| io::Error::from(e))?;
        let mut f = f;
        let mut text = Vec::with_capacity(256);
        f.seek(SeekFrom::Start(0))?;
        Read::by_ref(&mut *f).take(4096).read_to_end(&mut text)?;
        if let Ok(cur) = serde_json::from_slice::<Head>(&text)
            && cur.seq >= head.seq
        {
            return Ok(());
        }
        let line = format!(
            "{{\"seq\":{},\"hash\":\"{}\",\"sig\":\"{}\"}}\n",
            head.seq, head.hash, head.sig
        );
        f.seek(SeekFrom::Start(0))?;
        f.write_all(line.as_bytes())?;
        f.set_len(line.len() as u64)?;
        drop(f);
        if let Some(c) = &self.checkpoint {
            c.offer(head);
        }
        Ok(())
    }
}
