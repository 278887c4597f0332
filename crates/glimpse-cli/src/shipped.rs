//! The models the binary carries (embedded by `build.rs`), written once to
//! a cache directory so the loaders, which read directories, can use them:
//! an installed `glimpse` answers with its default model from any
//! directory, with no source tree and no build path looked up at run time.
//!
//! The copy lives in `<cache>/models/<name>-<hash>/`, `<cache>` being
//! `$GLIMPSE_CACHE` (where the scripts also keep easy-VQA), else
//! `$XDG_CACHE_HOME/glimpse`, else `$HOME/.cache/glimpse`; the hash is of the
//! embedded files, so builds carrying different weights never share a copy.
//! It is written into a temporary directory beside it and renamed into
//! place, so a reader never sees half a model, and two processes starting
//! at once both end with the same complete copy. Every use checks the
//! copy against the embedded bytes (a few MB, read anyway by the loader):
//! a truncated, edited or partly written copy (a crash before the data
//! reached the disk) is replaced, not loaded.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One model directory, embedded.
pub struct ShippedModel {
    /// The directory's name under `models/` in the repository.
    pub name: &'static str,
    /// (file name, contents), sorted by name.
    pub files: &'static [(&'static str, &'static [u8])],
    /// Of the names and contents: names the cache copy.
    pub hash: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/shipped_models.rs"));

#[derive(Debug, thiserror::Error)]
pub enum ShippedError {
    #[error(
        "no cache directory for the built-in model {name}: set XDG_CACHE_HOME or HOME, or pass --model DIR"
    )]
    NoCacheDir { name: &'static str },
    #[error(
        "{}: cannot write the built-in model {name} ({msg}); pass --model DIR, or set XDG_CACHE_HOME to a writable directory",
        path.display()
    )]
    Write {
        path: PathBuf,
        name: &'static str,
        msg: String,
    },
}

/// The model named `name` (e.g. `glimpse-easy-vqa`) if this build carries it.
pub fn find(name: &str) -> Option<&'static ShippedModel> {
    SHIPPED_MODELS.iter().find(|m| m.name == name)
}

/// Where the cache lives, from the environment (empty values count as
/// unset; XDG requires an absolute path).
pub fn cache_root() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("GLIMPSE_CACHE")
        .or_else(|| {
            var("XDG_CACHE_HOME")
                .filter(|p| p.is_absolute())
                .map(|p| p.join("glimpse"))
        })
        .or_else(|| var("HOME").map(|h| h.join(".cache/glimpse")))
}

/// The directory holding `model`'s files, written first if it is missing
/// or differs from the embedded files.
pub fn materialize(model: &'static ShippedModel) -> Result<PathBuf, ShippedError> {
    let root = cache_root().ok_or(ShippedError::NoCacheDir { name: model.name })?;
    materialize_in(model.name, model.hash, model.files, &root.join("models"))
}

/// [`materialize`] under `parent`, for any file list (the unit tests').
fn materialize_in(
    name: &'static str,
    hash: &str,
    files: &[(&str, &[u8])],
    parent: &Path,
) -> Result<PathBuf, ShippedError> {
    let dir = parent.join(format!("{name}-{hash}"));
    if matches(&dir, files) {
        return Ok(dir);
    }
    let fail = |path: &Path, e: std::io::Error| ShippedError::Write {
        path: path.to_path_buf(),
        name,
        msg: e.to_string(),
    };
    std::fs::create_dir_all(parent).map_err(|e| fail(parent, e))?;
    let tmp = parent.join(format!(".{name}-{hash}.tmp-{}", unique()));
    if let Err(e) = write_files(&tmp, files) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(fail(&tmp, e));
    }
    // A rename onto a directory that has files fails: another process
    // wrote it first (then use theirs) or it is a bad copy (move it aside).
    if std::fs::rename(&tmp, &dir).is_ok() {
        return Ok(dir);
    }
    if matches(&dir, files) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(dir);
    }
    let stale = parent.join(format!(".{name}-{hash}.stale-{}", unique()));
    let _ = std::fs::rename(&dir, &stale);
    let placed = std::fs::rename(&tmp, &dir);
    let _ = std::fs::remove_dir_all(&stale);
    match placed {
        Ok(()) => Ok(dir),
        // Someone else put a good copy there between the two renames.
        Err(_) if matches(&dir, files) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(fail(&dir, e))
        }
    }
}

/// `dir` holds exactly `files`: the same names, each a regular file with
/// the same bytes (the size first, so a truncated copy costs no read).
fn matches(dir: &Path, files: &[(&str, &[u8])]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    if entries.count() != files.len() {
        return false;
    }
    files.iter().all(|(file, bytes)| {
        let path = dir.join(file);
        let same_size = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64);
        same_size && std::fs::read(&path).is_ok_and(|on_disk| on_disk == *bytes)
    })
}

fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> std::io::Result<()> {
    std::fs::create_dir(dir)?;
    for (file, bytes) in files {
        let mut f = std::fs::File::create(dir.join(file))?;
        f.write_all(bytes)?;
    }
    Ok(())
}

/// Distinct per process and call: names temporary directories.
fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILES: [(&str, &[u8]); 2] = [("a.json", b"{\"x\": 1}"), ("b.bin", &[0, 1, 2, 3])];

    #[test]
    fn writes_once_then_reuses() {
        let root = tempfile::tempdir().unwrap();
        let dir = materialize_in("m", "h1", &FILES, root.path()).unwrap();
        assert_eq!(dir, root.path().join("m-h1"));
        assert_eq!(std::fs::read(dir.join("b.bin")).unwrap(), [0, 1, 2, 3]);
        let before = std::fs::metadata(dir.join("a.json"))
            .unwrap()
            .modified()
            .unwrap();
        let again = materialize_in("m", "h1", &FILES, root.path()).unwrap();
        assert_eq!(again, dir);
        let after = std::fs::metadata(dir.join("a.json"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after, "a good copy is not rewritten");
        // Only the model directory: no temporary left behind.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_bad_copy_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dir = materialize_in("m", "h", &FILES, root.path()).unwrap();
        // truncated, same size but edited, an extra file, a missing file
        let breaks: [&dyn Fn(&Path); 4] = [
            &|d| std::fs::write(d.join("a.json"), b"{").unwrap(),
            &|d| std::fs::write(d.join("b.bin"), [9, 9, 9, 9]).unwrap(),
            &|d| std::fs::write(d.join("extra"), b"").unwrap(),
            &|d| std::fs::remove_file(d.join("a.json")).unwrap(),
        ];
        for (i, break_it) in breaks.iter().enumerate() {
            break_it(&dir);
            assert!(!matches(&dir, &FILES), "case {i}");
            materialize_in("m", "h", &FILES, root.path()).unwrap();
            assert!(matches(&dir, &FILES), "case {i} repaired");
            assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
        }
    }

    #[test]
    fn racing_writers_end_with_one_good_copy() {
        let root = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| materialize_in("m", "h", &FILES, root.path()).unwrap());
            }
        });
        assert!(matches(&root.path().join("m-h"), &FILES));
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_unwritable_cache_is_one_error_naming_the_path() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let err = materialize_in("m", "h", &FILES, &file.join("models")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not-a-dir"), "{msg}");
        assert!(msg.contains("--model"), "{msg}");
        assert_eq!(msg.lines().count(), 1);
    }

    #[test]
    fn this_build_carries_the_default_models() {
        // The repository has them, so this build embedded them; the list
        // is the directory's (build.rs), checked here against the tree.
        for name in ["glimpse-easy-vqa", "glimpse-easy-vqa-clip"] {
            let m = find(name).unwrap();
            let src = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../models")
                .join(name);
            let on_disk: Vec<String> = std::fs::read_dir(&src)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(m.files.len(), on_disk.len(), "{name}");
            assert!(matches(&src, m.files), "{name}: embedded = the tree's");
            assert!(m.files.iter().any(|(f, _)| *f == "model.safetensors"));
            assert_eq!(m.hash.len(), 12);
        }
        assert_ne!(
            find("glimpse-easy-vqa").unwrap().hash,
            find("glimpse-easy-vqa-clip").unwrap().hash
        );
    }
}
