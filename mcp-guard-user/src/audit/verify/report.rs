//! What verification found, as `audit verify` prints it.

use std::fmt;
use std::path::PathBuf;

/// What verification found.
#[derive(Debug)]
pub enum Verdict {
    Ok(Summary),
    Bad(Finding),
}

/// What a good chain holds.
#[derive(Debug, Default)]
pub struct Summary {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub signatures: u64,
    /// Lines torn by a crash and sealed by a `recovery` record: file and line.
    pub torn: Vec<(PathBuf, u64)>,
    pub gaps: u64,
    pub records_lost: u64,
    pub rotations: u64,
    /// The head file's `seq`, when there was one and it checked out.
    pub head: Option<u64>,
    /// Witnesses that agree: label, the latest seq it saw, and whether that seq comes
    /// before the files given (then it could not be checked).
    pub witnessed: Vec<(String, u64, bool)>,
    /// Line of the last record in the last file.
    pub(super) last_line: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} records", self.records)?;
        if self.records > 0 {
            write!(f, " (seq {}-{})", self.first_seq, self.last_seq)?;
        }
        write!(f, ", {} signatures", self.signatures)?;
        if !self.torn.is_empty() {
            let at: Vec<String> = self
                .torn
                .iter()
                .map(|(p, l)| format!("{}:{l}", p.display()))
                .collect();
            let s = if self.torn.len() == 1 { "" } else { "s" };
            write!(
                f,
                ", {} torn line{s} sealed at {}",
                self.torn.len(),
                at.join(", ")
            )?;
        }
        if self.gaps > 0 {
            write!(
                f,
                ", {} gap{} ({} records lost)",
                self.gaps,
                if self.gaps == 1 { "" } else { "s" },
                self.records_lost
            )?;
        }
        if self.rotations > 0 {
            write!(
                f,
                ", {} rotation{}",
                self.rotations,
                if self.rotations == 1 { "" } else { "s" }
            )?;
        }
        match self.head {
            Some(seq) => write!(f, ", signed head at seq {seq}")?,
            None => write!(f, ", no head file: the end of the log is not checked")?,
        }
        for (i, (label, seq, before)) in self.witnessed.iter().enumerate() {
            f.write_str(if i == 0 { "; agrees with " } else { ", " })?;
            write!(f, "{label} (seq {seq}")?;
            if *before {
                f.write_str(", before these files: not checked")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// The first bad record.
#[derive(Debug)]
pub struct Finding {
    pub file: PathBuf,
    pub line: u64,
    pub seq: Option<u64>,
    pub problem: Problem,
    pub detail: String,
    /// (file index, line), to order findings.
    pub(super) pos: (usize, u64),
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "seq {seq}: ")?;
        }
        write!(f, "{}: {}", self.problem, self.detail)
    }
}

/// What is wrong with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Its content does not match its hash, or its signature (after good ones) fails.
    Edited,
    /// `seq` jumps and `prev` does not match, and the missing `seq`s do not come later.
    Deleted,
    /// Without it (or: without the record before it) the chain would be whole.
    Inserted,
    /// `seq` goes back, or jumps to one that comes later.
    Reordered,
    /// The log ends before its signed head or before a record a witness (cursor,
    /// checkpoint, `--expect-seq`) saw, its last record is unsigned, or a rotated file ends
    /// before its name says.
    Truncated,
    /// The first signature does not verify with the key (or a checkpoint's does not, or a
    /// checkpoint pinned another key).
    WrongKey,
    /// The last line is incomplete and was not sealed (the log was not reopened since).
    Torn,
    /// Not an audit record at all.
    Malformed,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Problem::Edited => "edited",
            Problem::Deleted => "deleted",
            Problem::Inserted => "inserted",
            Problem::Reordered => "reordered",
            Problem::Truncated => "truncated",
            Problem::WrongKey => "wrong key",
            Problem::Torn => "torn",
            Problem::Malformed => "malformed",
        })
    }
}
