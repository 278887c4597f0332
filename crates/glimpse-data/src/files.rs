//! Bounded reads of the files glimpse is handed: images, configs,
//! tokenizers, chat templates, datasets. A path may name anything, so a
//! read refuses what is not a regular file (a FIFO would block the open
//! forever, `/dev/zero` never ends) and a file larger than its kind's cap,
//! before a byte of it is read.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// `config.json`-sized files: `preprocessor_config.json`,
/// `processor_config.json`, `tokenizer_config.json`,
/// `special_tokens_map.json`, `generation_config.json`, chat templates. The
/// largest real ones (tokenizer configs listing every added token) are a few
/// MiB.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// `tokenizer.json`: the largest vocabularies (Gemma's 256k pieces with
/// their merges) take tens of MiB.
pub const MAX_TOKENIZER_BYTES: u64 = 512 << 20;

/// Dataset files read whole (LLaVA JSON, caption JSONL, easy-VQA
/// `questions.json`): LLaVA-1.5's 665k-conversation mix, the largest in
/// common use, is about 1 GiB.
pub const MAX_DATASET_BYTES: u64 = 2 << 30;

/// Why a bounded read failed. The message leaves out the path: the
/// caller's error (image, config, dataset...) names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not found")]
    NotFound,
    #[error("is a directory")]
    IsDirectory,
    /// A FIFO, socket or device, by its kind.
    #[error("not a regular file (a {0})")]
    NotRegular(&'static str),
    #[error("{len} bytes; {what} files over {} are refused", size_text(*cap))]
    TooLarge {
        len: u64,
        cap: u64,
        what: &'static str,
    },
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("cannot read: {0}")]
    Io(std::io::Error),
}

/// A cap as people write it: whole MiB as MiB, anything else in bytes.
fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Io(e),
        }
    }
}

/// What a path names when it is not a regular file.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "FIFO";
        }
        if ft.is_char_device() {
            return "character device";
        }
        if ft.is_block_device() {
            return "block device";
        }
        if ft.is_socket() {
            return "socket";
        }
    }
    if ft.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

/// The type and size checks, on metadata from the path or the open handle.
fn check(meta: &std::fs::Metadata, cap: u64, what: &'static str) -> Result<(), ReadError> {
    if meta.is_dir() {
        return Err(ReadError::IsDirectory);
    }
    if !meta.is_file() {
        return Err(ReadError::NotRegular(file_kind(meta)));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge {
            len: meta.len(),
            cap,
            what,
        });
    }
    Ok(())
}

/// The bytes of a regular file of at most `cap` bytes; `what` names the
/// kind of file in the size error ("image", "config", "dataset"...).
///
/// The type is checked on the path's metadata before opening (opening a
/// FIFO for reading blocks until a writer comes), then the open does not
/// block (on Unix) and the type is checked again on the open handle, and
/// the read itself stops past `cap`: a file swapped or grown meanwhile is
/// still refused or bounded.
pub fn read_bounded(path: &Path, cap: u64, what: &'static str) -> Result<Vec<u8>, ReadError> {
    let (file, meta) = open_checked(path, cap, what)?;
    // the length fits: it is at most `cap`, itself far below usize::MAX
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    let len = bytes.len() as u64;
    if len > cap {
        return Err(ReadError::TooLarge { len, cap, what });
    }
    Ok(bytes)
}

/// A regular file of at most `cap` bytes, opened for reading with the
/// checks of [`read_bounded`] (path, then handle), for readers that stream
/// it rather than read it whole (video decoders, ffmpeg's stdin). The
/// file's length was at most `cap` when checked; a reader that must not
/// follow a file growing meanwhile bounds its own reads.
pub fn open_bounded(path: &Path, cap: u64, what: &'static str) -> Result<File, ReadError> {
    open_checked(path, cap, what).map(|(file, _)| file)
}

fn open_checked(
    path: &Path,
    cap: u64,
    what: &'static str,
) -> Result<(File, std::fs::Metadata), ReadError> {
    check(&std::fs::metadata(path)?, cap, what)?;
    let file = open_no_block(path)?;
    let meta = file.metadata()?;
    check(&meta, cap, what)?;
    Ok((file, meta))
}

/// Opens for reading without waiting for a FIFO's writer; on a regular
/// file, which is all that is read, `O_NONBLOCK` changes nothing.
#[cfg(unix)]
fn open_no_block(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_no_block(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// [`read_bounded`] for text files: UTF-8 or an error.
pub fn read_bounded_text(path: &Path, cap: u64, what: &'static str) -> Result<String, ReadError> {
    String::from_utf8(read_bounded(path, cap, what)?).map_err(|_| ReadError::NotUtf8)
}

/// Whether anything is at `path` (a broken symlink counts as nothing).
/// Optional files are looked for with this rather than `is_file`, so a
/// FIFO or directory under an expected name is reported, not skipped.
pub(crate) fn exists(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// The second line of defence: a FIFO that passed the path check (put
    /// there after it) opens without blocking and is refused on the handle.
    #[test]
    fn a_fifo_opens_without_blocking_and_is_refused_on_the_handle() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("swapped.png");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let verdict = open_no_block(&path).map(|f| {
                let meta = f.metadata().expect("fstat");
                check(&meta, 1 << 20, "image").map_err(|e| e.to_string())
            });
            let _ = tx.send(verdict.map_err(|e| e.to_string()));
        });
        let verdict = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the open blocked");
        assert_eq!(verdict, Ok(Err("not a regular file (a FIFO)".to_string())));
    }
}
