//! `memoryctl logs [-f] [-n N]`: the daemon's log wherever it goes. Under
//! systemd that is the journal (`journalctl` takes over this process);
//! otherwise the file `R/logs/memoryd/memoryd.log` that `daemon start` and
//! the launchd agent write, read here and followed across rotations.

use crate::{Ctx, Failure};
use memoryd_core::host::egress::Egress;
use memoryd_proto::ErrorKind;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// How often a followed file is looked at again.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

pub async fn logs(ctx: &Ctx, follow: bool, lines: usize) -> anyhow::Result<ExitCode> {
    if ctx.json {
        let why = "logs prints the log as memoryd wrote it; for JSON read the journal with \
                   `journalctl --user -u memoryd -o json`";
        return Err(crate::Usage(why.to_owned()).into());
    }
    let file = ctx.paths.logs.join("memoryd.log");
    let supervisor = ctx.connect().await?.and_then(|c| c.hello.supervisor);
    if (supervisor.as_deref() == Some("systemd") || (supervisor.is_none() && !file.exists()))
        && let Some(journalctl) = find_journalctl()
    {
        return journal(&journalctl, follow, lines);
    }
    if !file.exists() {
        let message = format!(
            "memoryd has no log file at {} and no journal to read (it logs there once `memoryctl daemon start` \
             or the launchd agent runs it; under systemd: journalctl --user -u memoryd)",
            file.display()
        );
        return Err(Failure::new(ErrorKind::DaemonNotRunning, message).into());
    }
    let mut out = std::io::stdout().lock();
    let (mut reader, mut position) = tail(&file, lines, &mut out)?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        // Rotated (another file by that name) or truncated: start over at
        // the top of the new one.
        let current = std::fs::File::open(&file).ok();
        let rotated = match (&current, reader.metadata(), current.as_ref().map(std::fs::File::metadata)) {
            (Some(_), Ok(old), Some(Ok(new))) => {
                use std::os::unix::fs::MetadataExt;
                old.ino() != new.ino() || new.len() < position
            }
            _ => false,
        };
        if rotated && let Some(new) = current {
            copy_from(&mut reader, position, &mut out)?;
            (reader, position) = (new, 0);
        }
        position = copy_from(&mut reader, position, &mut out)?;
    }
}

/// Prints the last `lines` lines of `file`; the open file and where its
/// printed part ends.
fn tail(file: &Path, lines: usize, out: &mut impl Write) -> anyhow::Result<(std::fs::File, u64)> {
    let mut reader = std::fs::File::open(file)?;
    let mut text = Vec::new();
    reader.read_to_end(&mut text)?;
    let end = text.len() as u64;
    // The newline that ends the last line starts no line of its own.
    let body = text.strip_suffix(b"\n").unwrap_or(&text);
    let start = match lines {
        0 => text.len(),
        n => body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').nth(n - 1).map_or(0, |(i, _)| i + 1),
    };
    out.write_all(&text[start..])?;
    out.flush()?;
    Ok((reader, end))
}

/// Copies what `reader` has past `from`; where it ends.
fn copy_from(reader: &mut std::fs::File, from: u64, out: &mut impl Write) -> anyhow::Result<u64> {
    reader.seek(SeekFrom::Start(from))?;
    let copied = std::io::copy(reader, out)?;
    out.flush()?;
    Ok(from + copied)
}

fn find_journalctl() -> Option<PathBuf> {
    ["/usr/bin/journalctl", "/bin/journalctl"].into_iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Hands this process to `journalctl --user -u memoryd`.
fn journal(journalctl: &Path, follow: bool, lines: usize) -> anyhow::Result<ExitCode> {
    let lines = lines.to_string();
    let mut args = vec!["--user", "--unit", "memoryd", "--no-pager", "--lines", &lines];
    if follow {
        args.push("--follow");
    }
    let egress = Egress::from_env(vec![journalctl.to_path_buf()]);
    let e = egress.exec(journalctl, &args, &[]);
    Err(Failure::new(ErrorKind::Internal, format!("cannot run journalctl: {e}")).into())
}
