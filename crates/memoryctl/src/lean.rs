//! The command lines every agent turn and most operators type: `status`,
//! `peers` and `hook <event>`, with the global options. They are read here
//! without building clap's tree of every command (a third of a `status`
//! process's instructions); anything else, including every mistake and
//! `--help`, goes to clap, which says what it would have said.

use crate::hook_cmd::HookArgs;
use crate::{Cli, Command};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The `Cli` clap would make of `args` (without the program name), or None
/// when clap must read them.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Option<Cli> {
    let mut cli = Cli {
        root: None,
        json: false,
        verbose: false,
        connect_timeout: Duration::from_secs(2),
        timeout: None,
        command: Command::Status,
    };
    let (mut verb, mut words, mut runtime, mut client_version) = (None, Vec::new(), None, None);
    let (mut connect_timeout, mut args) = (None, args.into_iter());
    while let Some(arg) = args.next() {
        let arg = arg.into_string().ok()?;
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || inline.clone().map_or_else(|| args.next()?.into_string().ok(), Some);
        match flag {
            "--json" if inline.is_none() && !cli.json => cli.json = true,
            "-v" | "--verbose" if inline.is_none() && !cli.verbose => cli.verbose = true,
            "--root" if cli.root.is_none() => cli.root = Some(PathBuf::from(value()?)),
            "--connect-timeout" if connect_timeout.is_none() => {
                connect_timeout = Some(humantime::parse_duration(&value()?).ok()?);
            }
            "--timeout" if cli.timeout.is_none() => cli.timeout = Some(humantime::parse_duration(&value()?).ok()?),
            "--runtime" if verb == Some("hook") && runtime.is_none() => runtime = Some(value()?),
            "--client-version" if verb == Some("hook") && client_version.is_none() => client_version = Some(value()?),
            word if !word.starts_with('-') && inline.is_none() => match verb {
                None => verb = Some(["status", "peers", "hook"].into_iter().find(|v| *v == word)?),
                Some(_) => words.push(word.to_owned()),
            },
            _ => return None,
        }
    }
    cli.connect_timeout = connect_timeout.unwrap_or(cli.connect_timeout);
    cli.command = match (verb?, words.as_slice()) {
        ("status", []) => Command::Status,
        ("peers", []) => Command::Peers,
        ("hook", [event]) => Command::Hook(HookArgs { event: event.clone(), runtime, client_version }),
        _ => return None,
    };
    Some(cli)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn line(text: &str) -> Vec<OsString> {
        text.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn what_it_reads_it_reads_as_clap_does_and_the_rest_it_leaves_to_clap() {
        for text in [
            "status",
            "--json status",
            "status --json",
            "--root /tmp/r -v status --timeout 3s",
            "--root=/tmp/r --connect-timeout=500ms peers --json",
            "peers",
            "hook session-start --runtime claude --client-version 1.0",
            "--root /tmp/r hook prompt-submit --runtime=codex",
            "hook post-tool",
            "hook session-stop --runtime claude",
        ] {
            let clap = Cli::try_parse_from(std::iter::once(OsString::from("memoryctl")).chain(line(text))).unwrap();
            let lean = parse(line(text)).unwrap_or_else(|| panic!("not read: {text}"));
            assert_eq!(format!("{lean:?}"), format!("{clap:?}"), "{text}");
        }
        for text in [
            "",
            "--help",
            "status --help",
            "-h",
            "--version",
            "status extra",
            "peers --runtime claude",
            "status --json --json",
            "--timeout soon status",
            "--root",
            "hook",
            "hook a b",
            "sweep",
            "peer inbox ada",
            "status -vx",
            "--json=1 status",
            "-- status",
        ] {
            assert!(parse(line(text)).is_none(), "read, but clap must: {text:?}");
        }
    }
}
