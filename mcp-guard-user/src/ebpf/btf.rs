//! The kernel's own description of its structures (BTF, `/sys/kernel/btf/vmlinux`), read
//! for the few field offsets the programs need to go from a task to the file behind a
//! descriptor ([`Layout`]). Those offsets depend on the kernel's version and
//! configuration; BTF is how a kernel states them.
//!
//! Only what that takes is read: the type section (to number the types), struct and union
//! members, and the types a member's size resolves through. The format is the kernel's
//! UAPI (`include/uapi/linux/btf.h`).

use std::path::Path;

use mcp_guard_common::Layout;

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Why a layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not BTF data ({0})")]
    Format(&'static str),
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
    #[error("`{strukt}.{member}` is {found} bytes, not {want}")]
    Size {
        strukt: String,
        member: String,
        found: u32,
        want: u32,
    },
}

const MAGIC: u16 = 0xeb9f;

// Kinds (`BTF_KIND_*`).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// One type: its common header and where its kind-specific data starts.
#[derive(Clone, Copy)]
struct Type {
    name: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    extra: usize,
}

/// A parsed BTF blob.
pub struct Btf {
    data: Vec<u8>,
    strings: usize,
    strings_len: usize,
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
}

impl Btf {
    pub fn read(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let u16_at = |at: usize| {
            data.get(at..at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        let u32_at = |at: usize| {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0) != Some(MAGIC) {
            return Err(BtfError::Format(
                "bad magic; a big-endian kernel is not supported",
            ));
        }
        let header = |i: usize| u32_at(4 + 4 * i).ok_or(BtfError::Format("short header"));
        let (hdr_len, type_off, type_len, str_off, str_len) = (
            header(0)? as usize,
            header(1)? as usize,
            header(2)? as usize,
            header(3)? as usize,
            header(4)? as usize,
        );
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = hdr_len + str_off;
        if types_end > data.len() || strings + str_len > data.len() {
            return Err(BtfError::Format("sections past the end"));
        }
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut at = types_start;
        while at < types_end {
            let (Some(name), Some(info), Some(size_or_type)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
                return Err(BtfError::Format("truncated type"));
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = at + 12;
            let more = match kind {
                INT | VAR | DECL_TAG => 4,
                ARRAY => 12,
                STRUCT | UNION | DATASEC | ENUM64 => 12 * vlen as usize,
                ENUM | FUNC_PROTO => 8 * vlen as usize,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
                2 | 7..=12 | 16 | TYPE_TAG => 0,
                _ => return Err(BtfError::Format("unknown type kind")),
            };
            types.push(Type {
                name,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                size_or_type,
                extra,
            });
            at = extra + more;
        }
        Ok(Btf {
            data,
            strings,
            strings_len: str_len,
            types,
        })
    }

    fn u32_at(&self, at: usize) -> u32 {
        self.data
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn name(&self, offset: u32) -> &[u8] {
        let start = self.strings + offset as usize;
        let end = self.strings + self.strings_len;
        let bytes = self.data.get(start..end).unwrap_or_default();
        bytes.split(|&b| b == 0).next().unwrap_or_default()
    }

    /// The size in bytes of type `id`, through typedefs and qualifiers.
    fn size(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                INT | STRUCT | UNION | ENUM | ENUM64 => return Some(t.size_or_type),
                PTR => return Some(8),
                ARRAY => {
                    let elem = self.u32_at(t.extra);
                    let n = self.u32_at(t.extra + 8);
                    return self.size(elem)?.checked_mul(n);
                }
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_type,
                _ => return None,
            }
        }
        None
    }

    /// The byte offset and size of `member` in struct `strukt`, looking into anonymous
    /// struct and union members as C does.
    pub fn member(&self, strukt: &str, member: &str) -> Result<(u32, u32), BtfError> {
        let id = self
            .types
            .iter()
            .position(|t| t.kind == STRUCT && t.vlen > 0 && self.name(t.name) == strukt.as_bytes())
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        self.find(id as u32, member.as_bytes(), 0)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_string(),
                member: member.to_string(),
            })
    }

    fn find(&self, id: u32, member: &[u8], depth: u32) -> Option<(u32, u32)> {
        let t = self.types.get(id as usize)?;
        if depth > 8 {
            return None;
        }
        for i in 0..t.vlen as usize {
            let at = t.extra + 12 * i;
            let (name, ty, offset) = (self.u32_at(at), self.u32_at(at + 4), self.u32_at(at + 8));
            let bits = if t.kind_flag {
                offset & 0xff_ffff
            } else {
                offset
            };
            let name = self.name(name);
            if name == member {
                return Some((bits / 8, self.size(ty)?));
            }
            if name.is_empty() {
                let inner = self.strip(ty)?;
                let k = self.types.get(inner as usize)?.kind;
                if (k == STRUCT || k == UNION)
                    && let Some((o, size)) = self.find(inner, member, depth + 1)
                {
                    return Some((bits / 8 + o, size));
                }
            }
        }
        None
    }

    /// Type `id` without typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_type,
                _ => return Some(id),
            }
        }
        None
    }

    /// The offsets the programs follow, each checked for the size they read.
    pub fn layout(&self) -> Result<Layout, BtfError> {
        let field = |strukt: &str, member: &str, want: u32| {
            let (offset, found) = self.member(strukt, member)?;
            if found != want {
                return Err(BtfError::Size {
                    strukt: strukt.to_string(),
                    member: member.to_string(),
                    found,
                    want,
                });
            }
            Ok(offset)
        };
        Ok(Layout {
            task_files: field("task_struct", "files", 8)?,
            files_fdt: field("files_struct", "fdt", 8)?,
            fdt_max_fds: field("fdtable", "max_fds", 4)?,
            fdt_fd: field("fdtable", "fd", 8)?,
            file_inode: field("file", "f_inode", 8)?,
            inode_mode: field("inode", "i_mode", 2)?,
            inode_ino: field("inode", "i_ino", 8)?,
            inode_sb: field("inode", "i_sb", 8)?,
            sb_dev: field("super_block", "s_dev", 4)?,
            known: 1,
        })
    }
}

/// The running kernel's layout.
pub fn layout() -> Result<Layout, BtfError> {
    Btf::read(Path::new(VMLINUX))?.layout()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built by hand: `struct outer { int a; union { long b; char *c; }; }` and
    /// a typedef, enough to check numbering, anonymous members and sizes.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0long\0outer\0a\0b\0c\0d\0char\0myint\0";
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .expect("name")
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        push(&[name("int"), info(INT, 0), 4, 32]); // 1
        push(&[name("long"), info(INT, 0), 8, 64]); // 2
        push(&[name("char"), info(INT, 0), 1, 8]); // 3
        push(&[0, info(PTR, 0), 3]); // 4: char *
        push(&[0, info(UNION, 2), 8, name("b"), 2, 0, name("c"), 4, 0]); // 5
        push(&[name("myint"), info(TYPEDEF, 0), 1]); // 6
        push(&[
            name("outer"),
            info(STRUCT, 3),
            24,
            name("a"),
            6,
            0,
            0,
            5,
            64,
            // A member after the anonymous one, to check numbering goes on.
            name("d"),
            4,
            128,
        ]); // 7
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn members_are_found_through_typedefs_and_anonymous_unions() {
        let btf = Btf::parse(blob()).expect("parse");
        assert_eq!(btf.member("outer", "a").expect("a"), (0, 4));
        assert_eq!(btf.member("outer", "b").expect("b"), (8, 8));
        assert_eq!(btf.member("outer", "c").expect("c"), (8, 8));
        assert_eq!(btf.member("outer", "d").expect("d"), (16, 8));
        assert!(matches!(
            btf.member("outer", "e"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member("inner", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn bad_data_is_an_error_not_a_panic() {
        assert!(matches!(Btf::parse(vec![]), Err(BtfError::Format(_))));
        let mut cut = blob();
        cut.truncate(40);
        assert!(matches!(Btf::parse(cut), Err(BtfError::Format(_))));
        let mut wrong = blob();
        wrong[0] = 0;
        assert!(matches!(Btf::parse(wrong), Err(BtfError::Format(_))));
    }

    /// The running kernel's BTF, where there is one: every field the programs read is
    /// there with the size they read.
    #[test]
    fn this_kernels_layout_is_read() {
        if !Path::new(VMLINUX).exists() {
            eprintln!("skipped: no {VMLINUX}");
            return;
        }
        let l = layout().expect("layout");
        assert_eq!(l.known, 1);
        assert!(l.task_files > 0 && l.file_inode > 0 && l.inode_sb > 0);
    }
}
