//! File helpers: atomic writes (temp file + fsync + rename), atomic folder replacement, and
//! sha256 digests.
//!
//! Checkpoints and exports are replaced atomically: a reader, or a run killed at any instant,
//! sees either the old complete file (or folder) or the new complete one, never a torn one.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temp file in the same directory (`.NAME.tmp-PID`),
/// flushed to disk, then renamed over the destination. Temp files of the same name left by
/// killed processes are removed first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    remove_stale_temps(dir, Some(&name.to_string_lossy()));
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a whole folder at once: `fill` writes its files into a staging folder beside `out`
/// (`.NAME.tmp-PID`), which then replaces `out` in one step (Linux `renameat2` with
/// `RENAME_EXCHANGE`, then the old contents are removed), so that a process killed at any
/// instant leaves either the previous `out`, whole, or the new one. Where the exchange is not
/// available, the old folder is moved aside first (`.NAME.old-PID`), and a kill between the two
/// renames leaves it there, whole. A failing `fill` leaves `out` untouched.
pub fn write_dir_atomic<T>(out: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let parent = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = out.file_name().with_context(|| format!("{} has no folder name", out.display()))?.to_string_lossy();
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    remove_stale_temps(parent, Some(&name));
    let staging = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let value = match fill(&staging) {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if out.exists() && !out.is_dir() {
        let _ = fs::remove_dir_all(&staging);
        anyhow::bail!("{} exists and is not a folder", out.display());
    }
    let swapped = if out.exists() {
        exchange(&staging, out)?
    } else {
        fs::rename(&staging, out).with_context(|| format!("renaming {} to {}", staging.display(), out.display()))?;
        true
    };
    if swapped {
        // `staging` now holds the previous contents (or nothing, after a plain rename).
        let _ = fs::remove_dir_all(&staging);
    } else {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
        fs::rename(&staging, out).with_context(|| format!("renaming {} to {}", staging.display(), out.display()))?;
        let _ = fs::remove_dir_all(&old);
    }
    if let Ok(d) = File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(value)
}

/// Removes the `.NAME.tmp-PID` and `.NAME.old-PID` files and folders that processes killed
/// mid-write left in `parent` (their PID no longer runs; Linux only, elsewhere they stay): those
/// of `name`, or of any name.
pub fn remove_stale_temps(parent: &Path, name: Option<&str>) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix('.') else { continue };
        let pid = [".tmp-", ".old-"].iter().find_map(|tag| {
            let (stem, pid) = rest.rsplit_once(tag)?;
            name.is_none_or(|n| n == stem).then_some(pid)
        });
        let Some(Ok(pid)) = pid.map(str::parse::<u32>) else { continue };
        if pid != std::process::id() && cfg!(target_os = "linux") && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = if e.path().is_dir() { fs::remove_dir_all(e.path()) } else { fs::remove_file(e.path()) };
        }
    }
}

/// Swaps two paths atomically; `Ok(false)` where the system cannot (then nothing was changed).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).context("a path with a NUL byte");
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both are valid NUL-terminated paths; renameat2 only reads them.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(err).with_context(|| format!("exchanging {} and {}", a.display(), b.display())),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> Result<bool> {
    Ok(false)
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads and parses a JSON file, naming the file in any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_replaced_whole_and_a_failing_fill_leaves_it_untouched() {
        let root = std::env::temp_dir().join(format!("itera-dir-atomic-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let out = root.join("export");
        write_dir_atomic(&out, |d| write_atomic(&d.join("a.txt"), b"one")).unwrap();
        fs::write(out.join("stale.txt"), b"from before").unwrap();
        write_dir_atomic(&out, |d| write_atomic(&d.join("b.txt"), b"two")).unwrap();
        let names = |dir: &Path| {
            let mut v: Vec<String> =
                fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&out), ["b.txt"], "the new folder replaces the old one entirely");
        assert_eq!(names(&root), ["export"], "no staging or old folder is left behind");
        let err = write_dir_atomic(&out, |d| -> Result<()> {
            write_atomic(&d.join("c.txt"), b"three")?;
            anyhow::bail!("the export failed half-way")
        })
        .unwrap_err();
        assert!(err.to_string().contains("half-way"));
        assert_eq!(names(&out), ["b.txt"], "a failed fill changes nothing");
        assert_eq!(names(&root), ["export"]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp_behind() {
        let dir = std::env::temp_dir().join(format!("itera-files-test-{}", std::process::id()));
        let path = dir.join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha256_of_abc_is_the_published_digest() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
