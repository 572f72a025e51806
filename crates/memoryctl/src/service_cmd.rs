//! `memoryctl service install [--now]` and `service uninstall`: the
//! service definition of this install for the user's service manager, the
//! systemd user unit (Linux) or the launchd agent (macOS), made from the
//! shipped files with this install's real paths filled in.

use crate::{Ctx, Failure};
use anyhow::{Context as _, anyhow, bail};
use clap::Subcommand;
use memoryd_core::host::egress::Egress;
use memoryd_core::host::files::{FileGuard, WriteOutcome};
use memoryd_core::ops::install::{self, Binaries};
use memoryd_proto::ErrorKind;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const SYSTEMD_UNIT: &str = include_str!("../../../systemd/memoryd.service");
const LAUNCHD_PLIST: &str = include_str!("../../../systemd/com.memoryd.memoryd.plist");
/// The placeholders of the shipped plist (launchd expands neither `~` nor `$HOME`).
const PLIST_MEMORYD: &str = "/Users/YOU/.local/bin/memoryd";
const PLIST_ROOT: &str = "/Users/YOU/.iapeer";
const LAUNCHD_LABEL: &str = "com.memoryd.memoryd";
/// How long one call of the service manager may take: starting memoryd
/// waits for its READY=1, stopping it for its shutdown grace (20 s).
const MANAGER_LIMIT: Duration = Duration::from_secs(40);

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Write the service definition of this root: the systemd user unit
    /// ~/.config/systemd/user/memoryd.service (Linux) or the launchd agent
    /// ~/Library/LaunchAgents/com.memoryd.memoryd.plist (macOS)
    ///
    /// It runs memoryd_bin from the config (else the memoryd next to this
    /// memoryctl) with --root of this install. Writing the same definition
    /// again changes nothing.
    Install {
        /// Then load and start it: systemctl --user daemon-reload and
        /// enable --now memoryd (launchctl bootstrap on macOS)
        #[arg(long)]
        now: bool,
    },
    /// Stop and disable the service, then remove its definition
    Uninstall,
}

/// The user's service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Manager {
    Systemd,
    Launchd,
}

/// One call of the service manager, as the operator would type it.
struct Call {
    program: PathBuf,
    args: Vec<String>,
    /// Whether a failure is expected and harmless (unloading what may not
    /// be loaded).
    may_fail: bool,
}

impl Call {
    fn shell(&self) -> String {
        let name = self.program.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        std::iter::once(name.into_owned()).chain(self.args.iter().cloned()).collect::<Vec<_>>().join(" ")
    }
}

impl Manager {
    fn here() -> Manager {
        if cfg!(target_os = "macos") { Manager::Launchd } else { Manager::Systemd }
    }

    fn definition(self, home: &Path) -> PathBuf {
        match self {
            Manager::Systemd => home.join(".config/systemd/user/memoryd.service"),
            Manager::Launchd => home.join("Library/LaunchAgents").join(format!("{LAUNCHD_LABEL}.plist")),
        }
    }

    /// The shipped definition with `memoryd` and `root` filled in.
    fn render(self, memoryd: &Path, root: &Path) -> anyhow::Result<String> {
        match self {
            Manager::Systemd => render_unit(SYSTEMD_UNIT, memoryd, root),
            Manager::Launchd => {
                let (memoryd, root) = (xml_text(memoryd)?, xml_text(root)?);
                Ok(LAUNCHD_PLIST.replace(PLIST_MEMORYD, &memoryd).replace(PLIST_ROOT, &root))
            }
        }
    }

    fn program(self) -> PathBuf {
        let candidates: &[&str] = match self {
            Manager::Systemd => &["/usr/bin/systemctl", "/bin/systemctl"],
            Manager::Launchd => &["/bin/launchctl"],
        };
        candidates.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(candidates[0]))
    }

    fn call(self, args: &[&str]) -> Call {
        Call { program: self.program(), args: args.iter().map(|a| (*a).to_owned()).collect(), may_fail: false }
    }

    fn domain() -> String {
        format!("gui/{}", nix::unistd::getuid())
    }

    /// What loads and starts the definition; a `changed` one restarts a
    /// memoryd that runs, which would otherwise keep the old command line.
    fn start(self, definition: &Path, changed: bool) -> Vec<Call> {
        match self {
            Manager::Systemd if changed => vec![
                self.call(&["--user", "daemon-reload"]),
                self.call(&["--user", "enable", "memoryd"]),
                self.call(&["--user", "restart", "memoryd"]),
            ],
            Manager::Systemd => {
                vec![self.call(&["--user", "daemon-reload"]), self.call(&["--user", "enable", "--now", "memoryd"])]
            }
            // launchd refuses to bootstrap a loaded agent: unload it first.
            Manager::Launchd => {
                let plist = definition.display().to_string();
                vec![Call { may_fail: true, ..self.stop() }, self.call(&["bootstrap", &Self::domain(), &plist])]
            }
        }
    }

    /// What stops and disables it.
    fn stop(self) -> Call {
        match self {
            Manager::Systemd => self.call(&["--user", "disable", "--now", "memoryd"]),
            Manager::Launchd => self.call(&["bootout", &format!("{}/{LAUNCHD_LABEL}", Self::domain())]),
        }
    }
}

/// The shipped unit with its `ExecStart=` naming `memoryd` and `root`.
fn render_unit(template: &str, memoryd: &Path, root: &Path) -> anyhow::Result<String> {
    let exec = format!("ExecStart={} --root {}", unit_word(memoryd)?, unit_word(root)?);
    let mut found = false;
    let mut out = String::with_capacity(template.len() + 64);
    for line in template.lines() {
        if line.starts_with("ExecStart=") {
            found = true;
            out.push_str(&exec);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !found {
        bail!("the shipped systemd unit has no ExecStart= line");
    }
    Ok(out)
}

/// A path as one word of a unit's command line: systemd expands `%`
/// specifiers and `$` variables there and splits at blanks.
fn unit_word(path: &Path) -> anyhow::Result<String> {
    let text = plain_text(path)?.replace('%', "%%").replace('$', "$$");
    if text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+@:,=~".contains(c)) {
        Ok(text)
    } else {
        Ok(format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"")))
    }
}

/// A path as the text of a plist `<string>`.
fn xml_text(path: &Path) -> anyhow::Result<String> {
    Ok(plain_text(path)?.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"))
}

/// A path a service definition can hold: UTF-8 without control characters.
fn plain_text(path: &Path) -> anyhow::Result<&str> {
    match path.to_str() {
        Some(text) if !text.chars().any(char::is_control) => Ok(text),
        _ => Err(anyhow!(
            "the path {} holds bytes a service definition cannot carry; use a root and a memoryd_bin without them",
            path.display()
        )),
    }
}

/// What `service install` and `uninstall` work with, gathered before the
/// blocking part runs.
struct Plan {
    manager: Manager,
    definition: PathBuf,
    root: PathBuf,
    memoryd: PathBuf,
    ctl: String,
    json: bool,
    files: FileGuard,
}

pub async fn run(ctx: &Ctx, action: ServiceAction) -> anyhow::Result<ExitCode> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("HOME is not set; set it to your home directory, where the service definition goes"))?;
    let manager = Manager::here();
    let running = Binaries::running().context("cannot find this memoryctl binary")?;
    let plan = Plan {
        manager,
        definition: manager.definition(&home),
        root: ctx.paths.root.clone(),
        memoryd: Binaries::resolve(&ctx.config, &running).memoryd,
        ctl: ctx.ctl(),
        json: ctx.json,
        files: FileGuard::for_install(&ctx.paths.root, None),
    };
    if matches!(action, ServiceAction::Install { .. }) && !ctx.installed {
        return Err(Failure::new(ErrorKind::InstallMissing, install::missing(&ctx.paths.root)).into());
    }
    // The writes and the service manager's calls block.
    tokio::task::spawn_blocking(move || match action {
        ServiceAction::Install { now } => plan.install(now),
        ServiceAction::Uninstall => plan.uninstall(),
    })
    .await?
}

impl Plan {
    fn egress(&self) -> Egress {
        Egress::from_env(vec![self.manager.program()])
    }

    fn install(&self, now: bool) -> anyhow::Result<ExitCode> {
        if !self.memoryd.is_file() {
            bail!(
                "there is no memoryd at {} to run; install it next to memoryctl (cargo install --locked --path \
                 crates/memoryd) or set memoryd_bin in the config",
                self.memoryd.display()
            );
        }
        let text = self.manager.render(&self.memoryd, &self.root)?;
        if let Some(dir) = self.definition.parent() {
            self.files.create_dir_all(dir, 0o755)?;
        }
        if self.manager == Manager::Launchd {
            // launchd opens the log file but not its directory.
            self.files.create_dir_all(&self.root.join("logs/memoryd"), 0o700)?;
        }
        let written = self.files.write_if_changed(&self.definition, text.as_bytes(), Some(0o644))?;
        let start = self.manager.start(&self.definition, written == WriteOutcome::Written);
        if !self.json {
            let verb = if written == WriteOutcome::Written { "written" } else { "unchanged" };
            println!("service definition {verb}: {}", self.definition.display());
        }
        if now {
            for call in &start {
                let result = self.manager_call(call);
                if call.may_fail {
                    continue;
                }
                result.map_err(|why| {
                    // No memoryd of this manager runs to be restarted.
                    let later = self.manager.start(&self.definition, false);
                    let rest: Vec<String> = later.iter().filter(|c| !c.may_fail).map(Call::shell).collect();
                    anyhow!(
                        "{} is written, but `{}` failed ({why}); once your service manager runs (log in, or \
                         `loginctl enable-linger $USER`), start it with: {}",
                        self.definition.display(),
                        call.shell(),
                        rest.join(" && ")
                    )
                })?;
            }
        }
        if self.json {
            crate::print_json(&json!({
                "definition": self.definition,
                "written": written == WriteOutcome::Written,
                "started": now,
            }))?;
        } else if now {
            println!("memoryd is enabled and running under {}", self.manager_name());
        } else {
            println!("start it with: {} service install --now", self.ctl);
        }
        Ok(ExitCode::SUCCESS)
    }

    fn uninstall(&self) -> anyhow::Result<ExitCode> {
        if !self.definition.exists() {
            if self.json {
                crate::print_json(&json!({"definition": self.definition, "removed": false, "stopped": false}))?;
            } else {
                println!("no service definition at {}: nothing to remove", self.definition.display());
            }
            return Ok(ExitCode::SUCCESS);
        }
        let stop = self.manager.stop();
        let stopped = match self.manager_call(&stop) {
            Ok(()) => true,
            Err(why) => {
                eprintln!(
                    "memoryctl service uninstall: warning: `{}` failed ({why}); removing the definition anyway \
                     (a memoryd still running stops with: {} daemon stop)",
                    stop.shell(),
                    self.ctl
                );
                false
            }
        };
        if self.manager == Manager::Systemd {
            // What `disable` removes, when the manager could not do it.
            let wants = self.definition.with_file_name("default.target.wants/memoryd.service");
            if wants.is_symlink() {
                self.files.remove_file(&wants)?;
            }
        }
        self.files.remove_file(&self.definition)?;
        if stopped && self.manager == Manager::Systemd {
            let reload = self.manager.call(&["--user", "daemon-reload"]);
            if let Err(why) = self.manager_call(&reload) {
                eprintln!("memoryctl service uninstall: warning: `{}` failed ({why})", reload.shell());
            }
        }
        if self.json {
            crate::print_json(&json!({"definition": self.definition, "removed": true, "stopped": stopped}))?;
        } else {
            println!("service definition removed: {}", self.definition.display());
        }
        Ok(ExitCode::SUCCESS)
    }

    fn manager_name(&self) -> &'static str {
        match self.manager {
            Manager::Systemd => "systemd",
            Manager::Launchd => "launchd",
        }
    }

    /// One bounded call of the service manager; why it failed, in its words.
    fn manager_call(&self, call: &Call) -> Result<(), String> {
        tracing::debug!(command = %call.shell(), "calling the service manager");
        match self.egress().run(&call.program, &call.args, None, MANAGER_LIMIT) {
            Ok(out) if out.success() => Ok(()),
            Ok(out) => {
                let said = String::from_utf8_lossy(&out.stderr);
                let said = said.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message");
                Err(match out.code {
                    Some(code) => format!("exit {code}: {said}"),
                    None => format!("killed by a signal: {said}"),
                })
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_names_the_binary_and_the_root_as_single_words() {
        let unit = render_unit(SYSTEMD_UNIT, Path::new("/opt/m/bin/memoryd"), Path::new("/home/u/.iapeer")).unwrap();
        let exec: Vec<&str> = unit.lines().filter(|l| l.starts_with("ExecStart=")).collect();
        assert_eq!(exec, ["ExecStart=/opt/m/bin/memoryd --root /home/u/.iapeer"]);
        assert_eq!(unit.lines().count(), SYSTEMD_UNIT.lines().count(), "only ExecStart changes");
        let odd =
            render_unit(SYSTEMD_UNIT, Path::new("/opt/m/bin/memoryd"), Path::new("/home/u/my \"r\" 5%$x")).unwrap();
        assert!(odd.contains("ExecStart=/opt/m/bin/memoryd --root \"/home/u/my \\\"r\\\" 5%%$$x\"\n"), "{odd}");
        assert!(unit_word(Path::new("/a/b\nc")).is_err());
        assert!(render_unit("[Service]\n", Path::new("/m"), Path::new("/r")).is_err());
    }

    #[test]
    fn the_plist_has_no_placeholder_left() {
        let plist = Manager::Launchd.render(Path::new("/opt/m & n/memoryd"), Path::new("/Users/u/.iapeer")).unwrap();
        assert!(!plist.contains("/Users/YOU"), "{plist}");
        assert!(plist.contains("<string>/opt/m &amp; n/memoryd</string>"), "{plist}");
        assert!(plist.contains("<string>/Users/u/.iapeer/logs/memoryd/memoryd.log</string>"), "{plist}");
    }
}
