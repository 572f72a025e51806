//! The file guard: every write, rename and delete memoryd performs.
//!
//! [`RealDir`] is the one way to reach files under a root without following
//! symbolic links (the vault's zones: a link must not carry a read or a
//! write into another zone or out of the vault); [`PlainDir`] looks beneath
//! a peer folder in one call per directory and file (the surfaces).
//!
//! The live form writes; the refusing form (test sandbox armed) refuses any
//! path under the real home's `.iapeer`, `.claude`, `.codex` or service
//! definition dirs (`.config/systemd`, `Library/LaunchAgents`) (the home
//! from the user database, not `$HOME`) and any path that crosses such a
//! segment outside the sandbox roots (the temp dir, `R` and the vault).
#![allow(clippy::disallowed_methods)]

use crate::host::paths::{normalize, resolve_existing_prefix};
use crate::host::stamp::Stamp;
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Directory names that belong to the agents and the iapeer core.
const GUARDED_SEGMENTS: &[&str] = &[".iapeer", ".claude", ".codex"];
/// The user's service definitions (systemd user units, launchd agents),
/// under the home.
const SERVICE_DIRS: &[&str] = &[".config/systemd", "Library/LaunchAgents"];

/// What a listing for stale tmp files did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TmpSweep {
    pub removed: usize,
    /// Tmp files of ours too young to be a killed writer's.
    pub left: usize,
}

/// A refused or failed file operation, naming the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot {op} {path}: {error}")]
    Io { op: &'static str, path: PathBuf, error: io::Error },
    #[error("refused to {op} {path}: the test sandbox forbids {why}")]
    Refused { op: &'static str, path: PathBuf, why: String },
    /// A [`RealDir`] path met a symbolic link.
    #[error(
        "refused to {op} through {path}: it is a symbolic link, which memoryd does not follow here; replace it with a real directory or file"
    )]
    Symlink { op: &'static str, path: PathBuf },
}

impl FileError {
    pub fn is_refusal(&self) -> bool {
        matches!(self, FileError::Refused { .. })
    }

    pub fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
        move |error| FileError::Io { op, path: path.to_path_buf(), error }
    }

    fn errno<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> FileError + 'a {
        move |e| FileError::Io { op, path: path.to_path_buf(), error: e.into() }
    }
}

/// What a directory entry is, as `lstat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

impl EntryKind {
    fn of_mode(mode: nix::libc::mode_t) -> EntryKind {
        match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
            SFlag::S_IFDIR => EntryKind::Dir,
            SFlag::S_IFREG => EntryKind::File,
            SFlag::S_IFLNK => EntryKind::Symlink,
            _ => EntryKind::Other,
        }
    }
}

/// A regular file's bytes, mtime and number of hard links.
#[derive(Debug)]
pub struct FileRead {
    pub bytes: Vec<u8>,
    pub modified: SystemTime,
    pub links: u64,
}

/// A directory held open, whose files and subdirectories are reached
/// without following symbolic links: a path through a link fails with
/// [`FileError::Symlink`] rather than landing where the link points, and a
/// part swapped for a link after a check cannot redirect the open.
#[derive(Debug)]
pub struct RealDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a one-call look beneath a directory found.
#[derive(Debug)]
pub enum Beneath<T> {
    /// What was asked for, reached with no symbolic link on the way.
    Found(T),
    /// Nothing there, and no symbolic link on the way to it.
    Missing,
    /// Not decided in one call (a link on the way, not the kind asked for,
    /// an error, or a kernel without `openat2`): check part by part.
    Unsure,
}

/// A directory reached beneath a [`RealDir`] with no symbolic link on the
/// way, held by an `O_PATH` descriptor (enough to look up and open the
/// names in it), with its stamp when opened.
#[derive(Debug)]
pub struct PlainDir {
    fd: OwnedFd,
    stamp: Stamp,
}

impl PlainDir {
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The stamp of the regular file `leaf` in this directory, in one
    /// call: a symbolic link there is not followed but reported `Unsure`.
    pub fn stat(&self, leaf: &OsStr) -> Beneath<Stamp> {
        match fstatat(&self.fd, leaf, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if EntryKind::of_mode(st.st_mode) == EntryKind::File => Beneath::Found(Stamp::of_stat(&st)),
            Err(Errno::ENOENT) => Beneath::Missing,
            _ => Beneath::Unsure,
        }
    }

    /// Opens the regular file `leaf` in this directory to read, not
    /// following a symbolic link there; with its stamp.
    pub fn open(&self, leaf: &OsStr) -> Beneath<(File, Stamp)> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        match openat(&self.fd, leaf, flags, Mode::empty()) {
            Ok(fd) => match nix::sys::stat::fstat(&fd) {
                Ok(st) if EntryKind::of_mode(st.st_mode) == EntryKind::File => {
                    Beneath::Found((File::from(fd), Stamp::of_stat(&st)))
                }
                _ => Beneath::Unsure,
            },
            Err(Errno::ENOENT) => Beneath::Missing,
            Err(_) => Beneath::Unsure,
        }
    }
}

impl PlainDir {
    /// Opens the directory `path` to look beneath it (following symlinks
    /// to it; `O_PATH` on Linux, so no read permission is needed) and finds
    /// its real path: `path` itself when it is absolute, plain (no `.`,
    /// `..` or doubled `/`) and opens with no symbolic link on the way (one
    /// `openat2`, the usual case); else one `readlink` of the descriptor in
    /// `/proc` rather than one per part of the path.
    pub fn open_real(path: &Path) -> io::Result<(PlainDir, PathBuf)> {
        #[cfg(target_os = "linux")]
        if is_plain_absolute(path) {
            use nix::fcntl::{OpenHow, ResolveFlag, openat2};
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
            if let Ok(fd) = openat2(nix::fcntl::AT_FDCWD, path, how) {
                let stamp = Stamp::of_stat(&nix::sys::stat::fstat(&fd)?);
                return Ok((PlainDir { fd, stamp }, path.to_path_buf()));
            }
        }
        #[cfg(target_os = "linux")]
        let look = OFlag::O_PATH;
        #[cfg(not(target_os = "linux"))]
        let look = OFlag::O_RDONLY;
        let fd = nix::fcntl::open(path, look | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        let stamp = Stamp::of_stat(&nix::sys::stat::fstat(&fd)?);
        let by_fd = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)));
        // A folder removed meanwhile reads "... (deleted)"; no /proc: the slow way.
        let real = match by_fd {
            Ok(real) if real.is_absolute() && !real.as_os_str().as_bytes().ends_with(b" (deleted)") => real,
            _ => path.canonicalize()?,
        };
        Ok((PlainDir { fd, stamp }, real))
    }

    /// Opens the directory `rel` beneath this one when no part of it is a
    /// symbolic link, in one call: `openat2` with `RESOLVE_BENEATH |
    /// RESOLVE_NO_SYMLINKS` (Linux 5.6 and later), so nothing can lead it
    /// out of this directory.
    pub fn sub(&self, rel: &Path) -> Beneath<PlainDir> {
        #[cfg(target_os = "linux")]
        {
            use nix::fcntl::{OpenHow, ResolveFlag, openat2};
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            match openat2(&self.fd, rel, how) {
                Ok(fd) => match nix::sys::stat::fstat(&fd) {
                    Ok(st) => Beneath::Found(PlainDir { fd, stamp: Stamp::of_stat(&st) }),
                    Err(_) => Beneath::Unsure,
                },
                // A link on the way would have been ELOOP: nothing is there.
                Err(Errno::ENOENT | Errno::ENOTDIR) => Beneath::Missing,
                Err(_) => Beneath::Unsure,
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = rel;
            Beneath::Unsure
        }
    }
}

impl RealDir {
    /// Opens the directory `path` itself, following symlinks to it (it is
    /// the operator's choice, such as the configured vault).
    pub fn open(path: &Path) -> Result<RealDir, FileError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(FileError::errno("open", path))?;
        Ok(RealDir { fd, path: path.to_path_buf() })
    }

    /// Where this directory was opened, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The subdirectory `rel` (plain parts only), no part a symlink.
    pub fn sub(&self, rel: &Path) -> Result<RealDir, FileError> {
        self.walk(rel, None)
    }

    fn walk(&self, rel: &Path, create: Option<Mode>) -> Result<RealDir, FileError> {
        let mut dir: Option<RealDir> = None;
        for part in rel.components() {
            let Component::Normal(name) = part else {
                let error = io::Error::new(io::ErrorKind::InvalidInput, "not a plain relative path");
                return Err(FileError::Io { op: "open", path: self.path.join(rel), error });
            };
            let next = dir.as_ref().unwrap_or(self).child(name, create)?;
            dir = Some(next);
        }
        match dir {
            Some(dir) => Ok(dir),
            None => {
                let fd = self.fd.try_clone().map_err(FileError::io("open", &self.path))?;
                Ok(RealDir { fd, path: self.path.clone() })
            }
        }
    }

    fn child(&self, name: &OsStr, create: Option<Mode>) -> Result<RealDir, FileError> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let opened = match (openat(&self.fd, name, flags, Mode::empty()), create) {
            (Err(Errno::ENOENT), Some(mode)) => {
                match nix::sys::stat::mkdirat(&self.fd, name, mode) {
                    // Someone else made it meanwhile: open what is there.
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(FileError::errno("create", &path)(e)),
                }
                openat(&self.fd, name, flags, Mode::empty())
            }
            (opened, _) => opened,
        };
        match opened {
            Ok(fd) => Ok(RealDir { fd, path }),
            Err(e) => Err(self.failed("open", name, e)),
        }
    }

    /// The error of an `*at` call on `name`: a symlink is named as such
    /// (`O_NOFOLLOW` says only ELOOP or ENOTDIR).
    fn failed(&self, op: &'static str, name: &OsStr, e: Errno) -> FileError {
        let path = self.path.join(name);
        match self.kind(name) {
            Ok(Some(EntryKind::Symlink)) => FileError::Symlink { op, path },
            _ => FileError::errno(op, &path)(e),
        }
    }

    /// What `name` is in this directory, a symlink not followed; None when
    /// there is nothing of that name.
    pub fn kind(&self, name: &OsStr) -> Result<Option<EntryKind>, FileError> {
        match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(EntryKind::of_mode(stat.st_mode))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(FileError::errno("inspect", &self.path.join(name))(e)),
        }
    }

    /// The names in this directory with their kinds (`.` and `..` left out).
    pub fn entries(&self) -> Result<Vec<(OsString, EntryKind)>, FileError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut dir = Dir::openat(&self.fd, ".", flags, Mode::empty()).map_err(FileError::errno("list", &self.path))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(FileError::errno("list", &self.path))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                Some(Type::Directory) => EntryKind::Dir,
                Some(Type::File) => EntryKind::File,
                Some(Type::Symlink) => EntryKind::Symlink,
                Some(_) => EntryKind::Other,
                // Some filesystems do not fill in the type.
                None => match self.kind(name)? {
                    Some(kind) => kind,
                    None => continue,
                },
            };
            out.push((name.to_os_string(), kind));
        }
        Ok(out)
    }

    /// Reads the regular file `name`, a symlink not followed and a FIFO not
    /// waited on; None when it holds more than `max` bytes.
    pub fn read_file(&self, name: &OsStr, max: u64) -> Result<Option<FileRead>, FileError> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let file = File::from(openat(&self.fd, name, flags, Mode::empty()).map_err(|e| self.failed("read", name, e))?);
        let meta = file.metadata().map_err(FileError::io("read", &path))?;
        if !meta.is_file() {
            let error = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
            return Err(FileError::Io { op: "read", path, error });
        }
        if meta.len() > max {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        // It may have grown since the fstat.
        file.take(max + 1).read_to_end(&mut bytes).map_err(FileError::io("read", &path))?;
        if bytes.len() as u64 > max {
            return Ok(None);
        }
        Ok(Some(FileRead { bytes, modified: meta.modified().unwrap_or(UNIX_EPOCH), links: meta.nlink() }))
    }
}

/// The `n`th rotated generation of a log: `FILE.<n>`.
pub fn rotated_name(log: &Path, n: usize) -> PathBuf {
    let mut name = log.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{n}"));
    log.with_file_name(name)
}

/// Whether a write changed the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    Unchanged,
}

#[derive(Debug, Clone)]
struct Sandbox {
    /// The real home's guarded dirs (and `~/.claude.json`).
    protected: Vec<PathBuf>,
    /// Where a guarded segment may be crossed.
    roots: Vec<PathBuf>,
}

/// The only door for writes, renames and deletes.
#[derive(Debug, Clone)]
pub struct FileGuard {
    sandbox: Option<Sandbox>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FileGuard {
    /// The live guard: every operation goes ahead.
    pub fn live() -> FileGuard {
        FileGuard { sandbox: None }
    }

    /// The refusing guard with its sandbox roots (besides the temp dir).
    pub fn refusing(roots: &[&Path]) -> FileGuard {
        let real_home = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.dir);
        let mut protected = Vec::new();
        if let Some(home) = real_home {
            let home = resolve_existing_prefix(&home);
            protected.extend(GUARDED_SEGMENTS.iter().map(|s| home.join(s)));
            protected.push(home.join(".claude.json"));
            // Where `memoryctl service install` puts the user's service
            // definitions: a test must never hand the real manager a unit.
            protected.extend(SERVICE_DIRS.iter().map(|d| home.join(d)));
        }
        let mut all_roots: Vec<PathBuf> = vec![resolve_existing_prefix(&std::env::temp_dir())];
        all_roots.extend(roots.iter().map(|r| resolve_existing_prefix(r)));
        FileGuard { sandbox: Some(Sandbox { protected, roots: all_roots }) }
    }

    /// The refusing guard when the sandbox is armed, else the live one.
    pub fn from_env(roots: &[&Path]) -> FileGuard {
        if crate::sandbox_armed() { FileGuard::refusing(roots) } else { FileGuard::live() }
    }

    /// The guard of one install: its sandbox roots are the root `R` and the
    /// vault, when one is configured.
    pub fn for_install(root: &Path, vault: Option<&Path>) -> FileGuard {
        let roots: Vec<&Path> = [Some(root), vault].into_iter().flatten().collect();
        FileGuard::from_env(&roots)
    }

    pub fn is_sandboxed(&self) -> bool {
        self.sandbox.is_some()
    }

    /// Refuses what the sandbox forbids; the live guard allows everything.
    pub fn check(&self, op: &'static str, path: &Path) -> Result<(), FileError> {
        let Some(sandbox) = &self.sandbox else {
            return Ok(());
        };
        for candidate in [normalize(path), resolve_existing_prefix(path)] {
            if let Some(p) = sandbox.protected.iter().find(|p| candidate.starts_with(p)) {
                return Err(FileError::Refused {
                    op,
                    path: path.to_path_buf(),
                    why: format!("writes under the real {}", p.display()),
                });
            }
            let inside_root = sandbox.roots.iter().any(|r| candidate.starts_with(r));
            let crosses = candidate.components().any(|c| GUARDED_SEGMENTS.iter().any(|s| c.as_os_str() == *s));
            if crosses && !inside_root {
                return Err(FileError::Refused {
                    op,
                    path: path.to_path_buf(),
                    why: "writes through a .iapeer, .claude or .codex folder outside the sandbox roots".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Writes `bytes` to `path` through a tmp file in the same dir and a
    /// rename, so readers see the old or the new content, never a torn one.
    /// `mode` None keeps an existing file's mode (0644 for a new file).
    pub fn write_atomic(&self, path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), FileError> {
        self.replace(path, bytes, mode, false)
    }

    /// [`write_atomic`](Self::write_atomic), and the rename itself made to
    /// survive a crash (the dir is synced): for what was acknowledged to
    /// someone, such as a queued message.
    pub fn write_durable(&self, path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), FileError> {
        self.replace(path, bytes, mode, true)
    }

    fn replace(&self, path: &Path, bytes: &[u8], mode: Option<u32>, sync_dir: bool) -> Result<(), FileError> {
        self.check("write", path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let Some(name) = path.file_name() else {
            let error = io::Error::new(io::ErrorKind::InvalidInput, "the path names no file");
            return Err(FileError::Io { op: "write", path: path.to_path_buf(), error });
        };
        self.replace_in(&RealDir::open(dir)?, name, bytes, mode, sync_dir)
    }

    /// [`write_atomic`](Self::write_atomic) of `name` in `dir`: the tmp file
    /// and the rename stay in that directory, whatever links appear in it
    /// (the rename replaces a link at `name` rather than following it).
    pub fn write_in(&self, dir: &RealDir, name: &OsStr, bytes: &[u8], mode: Option<u32>) -> Result<(), FileError> {
        self.check("write", &dir.path.join(name))?;
        self.replace_in(dir, name, bytes, mode, false)
    }

    fn replace_in(
        &self,
        dir: &RealDir,
        name: &OsStr,
        bytes: &[u8],
        mode: Option<u32>,
        sync_dir: bool,
    ) -> Result<(), FileError> {
        let path = dir.path.join(name);
        let mode = match mode {
            Some(m) => m,
            None => std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644),
        };
        let (tmp, mut file) = create_tmp(dir, name)?;
        let tmp_path = dir.path.join(&tmp);
        let result = (|| {
            file.write_all(bytes).map_err(FileError::io("write", &tmp_path))?;
            file.set_permissions(Permissions::from_mode(mode)).map_err(FileError::io("chmod", &tmp_path))?;
            file.sync_data().map_err(FileError::io("sync", &tmp_path))?;
            nix::fcntl::renameat(&dir.fd, tmp.as_os_str(), &dir.fd, name)
                .map_err(FileError::errno("rename into place", &path))?;
            if sync_dir {
                nix::unistd::fsync(&dir.fd).map_err(FileError::errno("sync", &dir.path))?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = nix::unistd::unlinkat(&dir.fd, tmp.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        result
    }

    /// Like [`write_atomic`](Self::write_atomic), but leaves the file alone
    /// (no mtime churn) when it already holds `bytes` with the right mode.
    pub fn write_if_changed(&self, path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<WriteOutcome, FileError> {
        if let Ok(current) = std::fs::read(path) {
            let mode_ok = match (mode, std::fs::metadata(path)) {
                (Some(m), Ok(meta)) => meta.permissions().mode() & 0o7777 == m,
                (None, _) => true,
                (Some(_), Err(_)) => false,
            };
            if current == bytes && mode_ok {
                return Ok(WriteOutcome::Unchanged);
            }
        }
        self.write_atomic(path, bytes, mode).map(|()| WriteOutcome::Written)
    }

    /// Opens the subdirectory `rel` of `dir` with no part a symlink (see
    /// [`RealDir`]), creating the missing parts with `mode`.
    pub fn create_sub(&self, dir: &RealDir, rel: &Path, mode: u32) -> Result<RealDir, FileError> {
        self.check("create", &dir.path.join(rel))?;
        dir.walk(rel, Some(Mode::from_bits_truncate(mode as nix::libc::mode_t)))
    }

    /// Creates `path` and its missing parents, each with `mode`.
    pub fn create_dir_all(&self, path: &Path, mode: u32) -> Result<(), FileError> {
        self.create_dirs(path, mode).map(drop)
    }

    /// Creates `path` and its missing parents, each with `mode`, and names
    /// the ones this call created (outermost first), so a caller can
    /// remember what is its own to remove later.
    pub fn create_dirs(&self, path: &Path, mode: u32) -> Result<Vec<PathBuf>, FileError> {
        self.check("create", path)?;
        let missing: Vec<&Path> = path.ancestors().take_while(|p| !p.as_os_str().is_empty() && !p.is_dir()).collect();
        let mut created = Vec::new();
        for dir in missing.into_iter().rev() {
            match std::fs::DirBuilder::new().mode(mode).create(dir) {
                Ok(()) => created.push(dir.to_path_buf()),
                // Someone else made it meanwhile: not ours.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(FileError::io("create", dir)(e)),
            }
        }
        Ok(created)
    }

    /// Removes an empty directory; `Ok(false)` when it is gone or not empty.
    pub fn remove_empty_dir(&self, path: &Path) -> Result<bool, FileError> {
        self.check("delete", path)?;
        match std::fs::remove_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty) => Ok(false),
            Err(e) => Err(FileError::io("delete", path)(e)),
        }
    }

    /// Removes the tmp files that a killed writer of `path` left next to it
    /// (ours only, by name), when older than `older_than`.
    pub fn remove_stale_tmp(&self, path: &Path, older_than: Duration) -> Result<usize, FileError> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(0);
        };
        Ok(self.clear_tmp(dir, Some(name), older_than)?.removed)
    }

    /// Removes from `dir` the tmp files of ours (of any file, by name) older
    /// than `older_than`, listing it once; `left` counts the younger ones.
    pub fn remove_stale_tmp_in(&self, dir: &Path, older_than: Duration) -> Result<TmpSweep, FileError> {
        self.clear_tmp(dir, None, older_than)
    }

    fn clear_tmp(&self, dir: &Path, of: Option<&OsStr>, older_than: Duration) -> Result<TmpSweep, FileError> {
        let prefix = of.map(|name| format!(".{}.memoryd-", name.to_string_lossy()));
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TmpSweep::default()),
            Err(e) => return Err(FileError::io("list", dir)(e)),
        };
        let mut swept = TmpSweep::default();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            let ours = match &prefix {
                Some(prefix) => file_name.starts_with(prefix.as_str()),
                None => file_name.starts_with('.') && file_name.contains(".memoryd-"),
            };
            if !(ours && file_name.ends_with(".tmp")) {
                continue;
            }
            let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if age.is_some_and(|age| age >= older_than) && self.remove_file(&entry.path())? {
                swept.removed += 1;
            } else {
                swept.left += 1;
            }
        }
        Ok(swept)
    }

    /// Sets the permission bits of `path`.
    pub fn set_mode(&self, path: &Path, mode: u32) -> Result<(), FileError> {
        self.check("chmod", path)?;
        std::fs::set_permissions(path, Permissions::from_mode(mode)).map_err(FileError::io("chmod", path))
    }

    /// Renames `from` to `to` (same filesystem; replaces `to`).
    pub fn rename(&self, from: &Path, to: &Path) -> Result<(), FileError> {
        self.check("rename", from)?;
        self.check("rename", to)?;
        std::fs::rename(from, to).map_err(FileError::io("rename", from))
    }

    /// Deletes a file; `Ok(false)` when it was already gone.
    pub fn remove_file(&self, path: &Path) -> Result<bool, FileError> {
        self.check("delete", path)?;
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(FileError::io("delete", path)(e)),
        }
    }

    /// Opens a lock file for reading and writing, creating it (0600) if missing.
    pub fn open_lock_file(&self, path: &Path) -> Result<File, FileError> {
        self.check("create", path)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(FileError::io("open", path))
    }

    /// Opens a log file for appending, creating it (0600) if missing.
    /// Rotates the log `path` when it is larger than `max` bytes: `path.1`
    /// becomes `path.2` and so on up to `path.<keep>` (the oldest goes),
    /// then `path` becomes `path.1`. True when it rotated. Every step is a
    /// rename, so a line being written lands whole in one of the files.
    pub fn rotate_log(&self, path: &Path, max: u64, keep: usize) -> Result<bool, FileError> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() > max => {}
            _ => return Ok(false),
        }
        for n in (1..keep.max(1)).rev() {
            let from = rotated_name(path, n);
            if from.exists() {
                self.rename(&from, &rotated_name(path, n + 1))?;
            }
        }
        self.rename(path, &rotated_name(path, 1))?;
        Ok(true)
    }

    pub fn open_append(&self, path: &Path) -> Result<File, FileError> {
        self.check("create", path)?;
        OpenOptions::new().append(true).create(true).mode(0o600).open(path).map_err(FileError::io("open", path))
    }
}

/// Whether `path` is `/` and plain names joined by single `/`s: written
/// as its own canonical form (no `.`, `..`, doubled or trailing `/`).
fn is_plain_absolute(path: &Path) -> bool {
    let mut len = 0;
    let plain = path.components().enumerate().all(|(i, part)| match part {
        Component::RootDir => i == 0,
        Component::Normal(name) => {
            len += name.len() + 1;
            true
        }
        _ => false,
    });
    plain && path.is_absolute() && path.as_os_str().len() == len.max(1)
}

/// A new tmp file beside `name` in `dir`: its name and the open file.
fn create_tmp(dir: &RealDir, name: &OsStr) -> Result<(OsString, File), FileError> {
    let pid = u64::from(std::process::id());
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    loop {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::from(d.subsec_nanos()));
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = (pid << 40) ^ (n << 20) ^ nanos;
        let tmp = OsString::from(format!(".{}.memoryd-{tag:012x}.tmp", name.to_string_lossy()));
        match openat(&dir.fd, tmp.as_os_str(), flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => return Ok((tmp, File::from(fd))),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(FileError::errno("create a tmp file in", &dir.path)(e)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    #[test]
    fn a_folder_written_in_its_canonical_form_is_its_own_real_path_and_any_other_is_resolved() {
        for plain in ["/", "/srv", "/srv/peer/a"] {
            assert!(is_plain_absolute(Path::new(plain)), "{plain}");
        }
        for other in ["srv/peer", "/srv/./peer", "/srv/../peer", "/srv//peer", "/srv/peer/", "/srv/peer/.", "//srv"] {
            assert!(!is_plain_absolute(Path::new(other)), "{other}");
        }
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(&real, real.parent().unwrap().join("link")).unwrap();
        for path in [real.clone(), real.parent().unwrap().join("link"), real.join("sub/..")] {
            let (dir, found) = PlainDir::open_real(&path).unwrap();
            assert_eq!(found, real, "{}", path.display());
            assert!(matches!(dir.sub(Path::new("sub")), Beneath::Found(_)));
        }
    }

    #[test]
    fn a_log_past_its_size_rotates_keeping_its_generations() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let files = FileGuard::live();
        assert!(!files.rotate_log(&log, 10, 2).unwrap(), "no file, nothing to do");
        for n in 0..4 {
            std::fs::write(&log, format!("generation {n} is long enough\n")).unwrap();
            assert!(!files.rotate_log(&log, 100, 2).unwrap(), "under the size");
            assert!(files.rotate_log(&log, 10, 2).unwrap());
            assert!(!log.exists());
        }
        let read = |n| std::fs::read_to_string(rotated_name(&log, n)).unwrap();
        assert_eq!(
            (read(1).as_str(), read(2).as_str()),
            ("generation 3 is long enough\n", "generation 2 is long enough\n")
        );
        assert!(!rotated_name(&log, 3).exists(), "two generations kept");
    }
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_atomically_and_skips_unchanged_content() {
        let dir = tempfile::tempdir().unwrap();
        let guard = FileGuard::live();
        let path = dir.path().join("f.json");
        assert_eq!(guard.write_if_changed(&path, b"a", None).unwrap(), WriteOutcome::Written);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        guard.set_mode(&path, 0o600).unwrap();
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(guard.write_if_changed(&path, b"a", None).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), before);
        assert_eq!(guard.write_if_changed(&path, b"b", None).unwrap(), WriteOutcome::Written);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600, "mode kept");
        assert_eq!(
            guard.write_if_changed(&path, b"b", Some(0o755)).unwrap(),
            WriteOutcome::Written,
            "a lost exec bit is drift"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_real_dir_follows_no_link_and_a_write_replaces_a_link_rather_than_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("t.md"), "outside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("t.md"), root.join("a/t.md")).unwrap();
        let guard = FileGuard::live();
        let real = RealDir::open(&root).unwrap();
        for e in [
            real.sub(Path::new("a/link")).unwrap_err(),
            guard.create_sub(&real, Path::new("a/link/new"), 0o755).unwrap_err(),
        ] {
            assert!(matches!(&e, FileError::Symlink { path, .. } if path.ends_with("a/link")), "{e}");
        }
        let a = real.sub(Path::new("a")).unwrap();
        assert!(matches!(a.read_file(OsStr::new("t.md"), 100), Err(FileError::Symlink { .. })));
        assert_eq!(a.kind(OsStr::new("link")).unwrap(), Some(EntryKind::Symlink));
        guard.write_in(&a, OsStr::new("t.md"), b"inside", Some(0o644)).unwrap();
        assert_eq!(std::fs::read_to_string(outside.join("t.md")).unwrap(), "outside");
        assert_eq!(a.read_file(OsStr::new("t.md"), 100).unwrap().unwrap().bytes, b"inside");
        assert_eq!(a.read_file(OsStr::new("t.md"), 3).unwrap().map(|r| r.bytes), None, "larger than the limit");
        let made = guard.create_sub(&real, Path::new("b/c"), 0o755).unwrap();
        assert!(made.path().ends_with("b/c") && root.join("b/c").is_dir());
        let mut names = real.entries().unwrap();
        names.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(names, [(OsString::from("a"), EntryKind::Dir), (OsString::from("b"), EntryKind::Dir)]);
    }

    #[test]
    fn the_sandbox_refuses_the_real_home_and_foreign_agent_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let guard = FileGuard::refusing(&[&root]);
        let home = nix::unistd::User::from_uid(nix::unistd::getuid()).unwrap().unwrap().dir;
        for p in [
            home.join(".claude/settings.json"),
            home.join(".iapeer/x"),
            home.join(".codex/config.toml"),
            home.join(".claude.json"),
        ] {
            let e = guard.write_atomic(&p, b"x", None).unwrap_err();
            assert!(e.is_refusal(), "{p:?}: {e}");
            assert!(guard.remove_file(&p).unwrap_err().is_refusal());
        }
        // Checked, not written: a guard that failed here must not leave a
        // unit in the real home.
        for p in [home.join(".config/systemd/user/memoryd.service"), home.join("Library/LaunchAgents/x.plist")] {
            assert!(guard.check("write", &p).unwrap_err().is_refusal(), "{p:?}");
        }
        guard.check("write", &dir.path().join("home/.config/systemd/user/memoryd.service")).unwrap();
        assert!(guard.check("write", Path::new("/srv/peer/.claude/settings.json")).unwrap_err().is_refusal());
        assert!(guard.check("write", Path::new("/srv/a/../peer/.codex/x")).unwrap_err().is_refusal());
        guard.check("write", &dir.path().join("peer/.claude/settings.json")).unwrap();
        guard.check("write", &root.join(".iapeer/x")).unwrap();
        guard.check("write", Path::new("/srv/peer/notes.md")).unwrap();
        FileGuard::live().check("write", &home.join(".claude/x")).unwrap();
    }

    #[test]
    fn removes_only_our_stale_tmp_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("settings.json");
        let old = dir.path().join(".settings.json.memoryd-00aa.tmp");
        let fresh = dir.path().join(".settings.json.memoryd-00bb.tmp");
        let foreign = dir.path().join(".settings.json.editor.tmp");
        for p in [&old, &fresh, &foreign] {
            std::fs::write(p, "x").unwrap();
        }
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        for p in [&old, &foreign] {
            std::fs::File::options().write(true).open(p).unwrap().set_modified(long_ago).unwrap();
        }
        let other = dir.path().join(".mcp.json.memoryd-00cc.tmp");
        std::fs::write(&other, "x").unwrap();
        std::fs::File::options().write(true).open(&other).unwrap().set_modified(long_ago).unwrap();
        let guard = FileGuard::live();
        assert_eq!(guard.remove_stale_tmp(&target, Duration::from_secs(60)).unwrap(), 1);
        assert!(!old.exists() && fresh.exists() && foreign.exists() && other.exists());
        // The whole directory at once: every file's, the young one left.
        let swept = guard.remove_stale_tmp_in(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(swept, TmpSweep { removed: 1, left: 1 });
        assert!(!other.exists() && fresh.exists() && foreign.exists());
    }
}
