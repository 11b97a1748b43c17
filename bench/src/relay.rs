//! A zero-logic stdio relay: what an extra process hop costs before any parsing,
//! policy or audit. Plain read/write with a 64 KiB buffer in each direction.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

fn pump(mut from: impl Read, mut to: impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

pub fn run(command: &[String]) -> Result<()> {
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", command[0]))?;
    let child_in = child.stdin.take().context("child stdin")?;
    let child_out = child.stdout.take().context("child stdout")?;
    let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    // Client -> server; dropping `child_in` at client EOF closes the server's stdin.
    let up = std::thread::spawn(move || pump(stdin, child_in));
    let down = pump(child_out, stdout);
    let status = child.wait()?;
    drop(up);
    down?;
    std::process::exit(status.code().unwrap_or(1));
}
