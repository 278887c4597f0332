//! The media policy end to end: data URIs, file:// under a media directory,
//! and http:// against a small server on 127.0.0.1 (the only address these
//! tests ever connect to; every other address is refused before connecting,
//! which is what they check).
// Symlinks and FIFOs are made with Unix calls; the server targets Linux.
#![cfg(unix)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use glimpse_server::media::{fetch_image, fetch_video, MediaError, MediaPolicy, MAX_REDIRECTS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A valid 1×1 PNG.
const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg==";

fn png() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(PNG_B64)
        .expect("test PNG is valid base64")
}

/// Every message must be one line and name what was asked for.
fn check_message(err: &MediaError) -> String {
    let msg = err.to_string();
    // Shown with --nocapture, to read the messages as a user would.
    eprintln!("{msg}");
    assert!(!msg.contains('\n'), "message spans lines: {msg:?}");
    assert!(msg.contains('`'), "message names no URL: {msg}");
    msg
}

async fn fetch_err(url: &str, policy: &MediaPolicy) -> MediaError {
    match fetch_image(url, policy).await {
        Ok(got) => panic!(
            "{url} was fetched ({} bytes), expected a refusal",
            got.bytes.len()
        ),
        Err(e) => {
            check_message(&e);
            e
        }
    }
}

// ---------------------------------------------------------------------------
// data: URIs

#[tokio::test]
async fn data_uri_decodes() {
    let policy = MediaPolicy::default();
    let got = fetch_image(&format!("data:image/png;base64,{PNG_B64}"), &policy)
        .await
        .expect("valid data URI");
    assert_eq!(got.bytes, png());
    assert!(
        got.name.starts_with("data:image/png;base64,"),
        "{}",
        got.name
    );
    assert!(got.name.len() < 120, "{}", got.name);

    // Case-insensitive scheme, type and encoding; padding optional.
    let unpadded = PNG_B64.trim_end_matches('=');
    let got = fetch_image(&format!("DATA:IMAGE/PNG;BASE64,{unpadded}"), &policy)
        .await
        .expect("upper-case, unpadded data URI");
    assert_eq!(got.bytes, png());
}

#[tokio::test]
async fn video_data_uris_take_video_and_image_types() {
    let policy = MediaPolicy::default();
    for uri in [
        format!("data:video/mp4;base64,{PNG_B64}"),
        format!("data:image/gif;base64,{PNG_B64}"),
    ] {
        let got = fetch_video(&uri, &policy).await.expect("a video data URI");
        assert_eq!(got.bytes, png());
    }
    // an image part takes no video/*; a video's errors name a video
    let err = fetch_err(&format!("data:video/mp4;base64,{PNG_B64}"), &policy).await;
    assert!(matches!(err, MediaError::NotImage { .. }), "{err}");
    let err = match fetch_video("data:text/plain;base64,aGVsbG8=", &policy).await {
        Ok(_) => panic!("text/plain fetched as a video"),
        Err(e) => e,
    };
    let msg = check_message(&err);
    assert!(
        msg.starts_with("video data URI") && msg.contains("not video/* or image/*"),
        "{msg}"
    );
    let err = match fetch_video("file:///etc/hosts", &policy).await {
        Ok(_) => panic!("file:// fetched without a media directory"),
        Err(e) => e,
    };
    assert!(
        check_message(&err).contains("file:// video URLs are off"),
        "{err}"
    );
}

#[tokio::test]
async fn data_uri_refusals() {
    let policy = MediaPolicy::default();
    let err = fetch_err("data:text/plain;base64,aGVsbG8=", &policy).await;
    assert!(
        matches!(&err, MediaError::NotImage { media_type, .. } if media_type == "text/plain"),
        "{err}"
    );
    let err = fetch_err("data:,hello", &policy).await;
    assert!(matches!(err, MediaError::NotImage { .. }), "{err}");
    let err = fetch_err("data:image/png,rawbytes", &policy).await;
    assert!(matches!(err, MediaError::InvalidDataUri { .. }), "{err}");
    let err = fetch_err("data:image/png;base64,!!!not-base64!!!", &policy).await;
    assert!(matches!(err, MediaError::InvalidDataUri { .. }), "{err}");
    let err = fetch_err("data:image/png;base64", &policy).await;
    assert!(matches!(err, MediaError::InvalidDataUri { .. }), "{err}");
    let err = fetch_err("data:image/png;base64,", &policy).await;
    assert!(matches!(err, MediaError::Empty { .. }), "{err}");
    assert!(err.is_client_error());
}

#[tokio::test]
async fn data_uri_size_is_checked_before_decoding() {
    let policy = MediaPolicy {
        max_bytes: 10,
        ..MediaPolicy::default()
    };
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![1u8; n]);
    let got = fetch_image(&format!("data:image/png;base64,{}", b64(10)), &policy)
        .await
        .expect("exactly at the limit");
    assert_eq!(got.bytes.len(), 10);
    let err = fetch_err(&format!("data:image/png;base64,{}", b64(11)), &policy).await;
    assert!(
        matches!(err, MediaError::TooLarge { limit: 10, .. }),
        "{err}"
    );
    // Invalid base64 that is too long is refused for its size, not decoded.
    let huge = format!("data:image/png;base64,{}", "!".repeat(1000));
    let err = fetch_err(&huge, &policy).await;
    assert!(matches!(err, MediaError::TooLarge { .. }), "{err}");
    assert!(err.is_client_error());
    assert!(err.to_string().len() < 400, "{err}");
}

#[tokio::test]
async fn other_schemes_are_refused() {
    let policy = MediaPolicy {
        allow_remote: true,
        media_dir: Some(std::env::temp_dir()),
        ..MediaPolicy::default()
    };
    for url in [
        "ftp://127.0.0.1/x.png",
        "gopher://127.0.0.1:70/x",
        "javascript:alert(1)",
        "/etc/passwd",
        "image.png",
        "",
        " http://127.0.0.1/x.png",
    ] {
        let err = fetch_err(url, &policy).await;
        assert!(
            matches!(err, MediaError::UnsupportedScheme { .. }),
            "{url}: {err}"
        );
        assert!(err.is_client_error());
    }
}

// ---------------------------------------------------------------------------
// file://

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn file_policy(dir: &Path) -> MediaPolicy {
    MediaPolicy {
        media_dir: Some(dir.to_path_buf()),
        ..MediaPolicy::default()
    }
}

/// tempdir/media (the media directory) and tempdir/secret.png beside it.
fn media_tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let media = tmp.path().join("media");
    std::fs::create_dir_all(media.join("sub")).expect("mkdir");
    std::fs::write(media.join("a.png"), png()).expect("write");
    std::fs::write(media.join("sub/b.png"), png()).expect("write");
    std::fs::write(tmp.path().join("secret.png"), b"secret").expect("write");
    (tmp, media)
}

#[tokio::test]
async fn file_inside_media_dir_is_read() {
    let (_tmp, media) = media_tree();
    let policy = file_policy(&media);
    let got = fetch_image(&file_url(&media.join("a.png")), &policy)
        .await
        .expect("file inside");
    assert_eq!(got.bytes, png());
    let got = fetch_image(&file_url(&media.join("sub/b.png")), &policy)
        .await
        .expect("file in a subdirectory");
    assert_eq!(got.bytes, png());
    // A symlink whose target stays inside is fine.
    std::os::unix::fs::symlink(media.join("a.png"), media.join("alias.png")).expect("symlink");
    let got = fetch_image(&file_url(&media.join("alias.png")), &policy)
        .await
        .expect("symlink inside");
    assert_eq!(got.bytes, png());
}

#[tokio::test]
async fn file_escapes_are_refused() {
    let (tmp, media) = media_tree();
    let policy = file_policy(&media);
    let media_s = media.display().to_string();
    for url in [
        format!("file://{media_s}/../secret.png"),
        format!("file://{media_s}/sub/../../secret.png"),
        format!("file://{media_s}/%2e%2e/secret.png"),
        format!("file://{media_s}/..%2Fsecret.png"),
        format!("file://{media_s}/sub/..%2F..%2Fsecret.png"),
        file_url(&tmp.path().join("secret.png")),
        "file:///etc/passwd".to_string(),
        // Outside and missing: the same answer, so nothing can be probed.
        "file:///no/such/file.png".to_string(),
    ] {
        let err = fetch_err(&url, &policy).await;
        assert!(
            matches!(err, MediaError::OutsideMediaDir { .. }),
            "{url}: {err}"
        );
        assert!(err.is_client_error());
    }
    std::os::unix::fs::symlink(tmp.path().join("secret.png"), media.join("link.png"))
        .expect("symlink");
    let err = fetch_err(&file_url(&media.join("link.png")), &policy).await;
    assert!(matches!(err, MediaError::OutsideMediaDir { .. }), "{err}");
    // A symlinked directory leading out is refused the same way.
    std::os::unix::fs::symlink(tmp.path(), media.join("up")).expect("symlink");
    let err = fetch_err(&file_url(&media.join("up/secret.png")), &policy).await;
    assert!(matches!(err, MediaError::OutsideMediaDir { .. }), "{err}");
}

#[tokio::test]
async fn fifo_is_refused_without_blocking() {
    let (_tmp, media) = media_tree();
    let fifo = media.join("pipe.png");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
    let policy = file_policy(&media);
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        fetch_image(&file_url(&fifo), &policy),
    )
    .await;
    let Ok(result) = outcome else {
        // Release a reader stuck in open() so the runtime can shut down.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        panic!("fetching a FIFO blocked");
    };
    let err = result.expect_err("a FIFO is not an image file");
    check_message(&err);
    assert!(
        matches!(err, MediaError::NotRegularFile { kind: "FIFO", .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn directories_large_and_missing_files_are_refused() {
    let (_tmp, media) = media_tree();
    let err = fetch_err(&file_url(&media.join("sub")), &file_policy(&media)).await;
    assert!(
        matches!(
            err,
            MediaError::NotRegularFile {
                kind: "directory",
                ..
            }
        ),
        "{err}"
    );

    let small = MediaPolicy {
        max_bytes: 10,
        ..file_policy(&media)
    };
    let err = fetch_err(&file_url(&media.join("a.png")), &small).await;
    assert!(
        matches!(err, MediaError::TooLarge { limit: 10, .. }),
        "{err}"
    );

    let err = fetch_err(&file_url(&media.join("nope.png")), &file_policy(&media)).await;
    assert!(matches!(err, MediaError::FileOpen { .. }), "{err}");
    assert!(err.is_client_error());

    std::fs::write(media.join("empty.png"), b"").expect("write");
    let err = fetch_err(&file_url(&media.join("empty.png")), &file_policy(&media)).await;
    assert!(matches!(err, MediaError::Empty { .. }), "{err}");

    let url = format!("file://otherhost{}", media.join("a.png").display());
    let err = fetch_err(&url, &file_policy(&media)).await;
    assert!(matches!(err, MediaError::InvalidUrl { .. }), "{err}");
}

#[tokio::test]
async fn file_urls_need_a_media_dir() {
    let (_tmp, media) = media_tree();
    let err = fetch_err(&file_url(&media.join("a.png")), &MediaPolicy::default()).await;
    assert!(matches!(err, MediaError::FileOff { .. }), "{err}");
    assert!(err.to_string().contains("--media-dir"), "{err}");
    assert!(err.is_client_error());

    // A media directory that does not exist is the server's fault.
    let policy = file_policy(&media.join("missing"));
    let err = fetch_err(&file_url(&media.join("missing/a.png")), &policy).await;
    assert!(matches!(err, MediaError::MediaDir { .. }), "{err}");
    assert!(!err.is_client_error());
}

// ---------------------------------------------------------------------------
// http:// — refusals before any connection

fn remote_policy() -> MediaPolicy {
    MediaPolicy {
        allow_remote: true,
        timeout: Duration::from_secs(5),
        ..MediaPolicy::default()
    }
}

#[tokio::test]
async fn remote_urls_are_off_by_default() {
    let err = fetch_err(
        "https://example.com/cat.png?token=abc",
        &MediaPolicy::default(),
    )
    .await;
    assert!(matches!(err, MediaError::RemoteOff { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("--allow-remote-media"), "{msg}");
    assert!(msg.contains("data URI"), "{msg}");
    assert!(!msg.contains("token"), "the query leaked: {msg}");
    assert!(err.is_client_error());
}

#[tokio::test]
async fn non_public_ip_literals_are_refused_before_connecting() {
    for allow_loopback_for_tests in [false, true] {
        let policy = MediaPolicy {
            allow_loopback_for_tests,
            ..remote_policy()
        };
        for (url, class) in [
            ("http://10.0.0.1/x.png", "private"),
            ("http://192.168.1.10:8080/x.png", "private"),
            ("http://172.20.0.5/x.png", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("http://0.0.0.0/", "unspecified (0.0.0.0/8)"),
            ("http://100.64.1.1/", "shared CGNAT (100.64.0.0/10)"),
            ("http://[fd00::1]/x.png", "private (unique local fc00::/7)"),
            ("http://[fe80::1]/x.png", "link-local"),
            ("http://[::ffff:10.0.0.1]/", "private"),
            ("http://[::ffff:169.254.169.254]/", "link-local"),
            ("http://[64:ff9b::a00:1]/", "private"),
            ("http://[2002:a9fe:a9fe::]/", "link-local"),
            ("http://224.0.0.1/", "multicast"),
            ("http://255.255.255.255/", "broadcast"),
            ("http://192.0.2.1/", "documentation"),
            ("http://[::]/", "unspecified"),
            // Obfuscated forms that URL parsing turns back into 10.0.0.1.
            ("http://167772161/", "private"),
            ("http://0x0a.0.0.1/", "private"),
        ] {
            let err = fetch_err(url, &policy).await;
            match &err {
                MediaError::ForbiddenAddress { class: got, .. } => {
                    assert_eq!(*got, class, "{url}: {err}")
                }
                other => panic!("{url}: expected an address refusal, got {other}"),
            }
            assert!(err.is_client_error());
        }
    }
}

#[tokio::test]
async fn loopback_is_refused_without_the_test_flag() {
    let server = TestServer::start().await;
    let policy = remote_policy();
    for url in [
        server.url("/img.png"),
        format!("http://localhost:{}/img.png", server.addr.port()),
        format!("http://[::ffff:127.0.0.1]:{}/img.png", server.addr.port()),
        format!("http://[::1]:{}/img.png", server.addr.port()),
        format!("http://2130706433:{}/img.png", server.addr.port()),
        format!("http://127.1:{}/img.png", server.addr.port()),
    ] {
        let err = fetch_err(&url, &policy).await;
        assert!(
            matches!(
                err,
                MediaError::ForbiddenAddress {
                    class: "loopback",
                    ..
                }
            ),
            "{url}: {err}"
        );
    }
    assert_eq!(server.hits(), 0, "a refused URL reached the server");
}

// ---------------------------------------------------------------------------
// http:// — against a local server, loopback allowed for the test

fn loopback_policy() -> MediaPolicy {
    MediaPolicy {
        allow_loopback_for_tests: true,
        ..remote_policy()
    }
}

#[tokio::test]
async fn remote_image_and_redirects_are_fetched() {
    let server = TestServer::start().await;
    let policy = loopback_policy();
    let got = fetch_image(&server.url("/img.png?sig=secret"), &policy)
        .await
        .expect("plain fetch");
    assert_eq!(got.bytes, png());
    assert_eq!(got.name, server.url("/img.png"));

    let got = fetch_image(&server.url("/redirect"), &policy)
        .await
        .expect("relative redirect");
    assert_eq!(got.bytes, png());
    let got = fetch_image(&server.url("/abs-redirect"), &policy)
        .await
        .expect("absolute redirect");
    assert_eq!(got.bytes, png());

    // A name is resolved, checked and pinned the same way.
    let url = format!("http://localhost:{}/redirect", server.addr.port());
    let got = fetch_image(&url, &policy).await.expect("by name");
    assert_eq!(got.bytes, png());
}

#[tokio::test]
async fn redirect_chains_are_capped() {
    let server = TestServer::start().await;
    let policy = loopback_policy();
    // /chain/N answers with N + 1 redirects before the image.
    let at_limit = server.url(&format!("/chain/{}", MAX_REDIRECTS - 1));
    let got = fetch_image(&at_limit, &policy)
        .await
        .expect("five redirects are followed");
    assert_eq!(got.bytes, png());

    let before = server.hits();
    let err = fetch_err(&server.url(&format!("/chain/{MAX_REDIRECTS}")), &policy).await;
    assert!(
        matches!(
            err,
            MediaError::TooManyRedirects {
                limit: MAX_REDIRECTS,
                ..
            }
        ),
        "{err}"
    );
    // The sixth redirect is not followed: six requests, no seventh.
    assert_eq!(server.hits() - before, MAX_REDIRECTS + 1);
}

#[tokio::test]
async fn redirects_are_checked_per_hop() {
    let server = TestServer::start().await;
    let policy = loopback_policy();
    for (path, class) in [
        ("/to-private", "private"),
        ("/to-metadata", "link-local"),
        ("/to-mapped", "private"),
    ] {
        let before = server.hits();
        let err = fetch_err(&server.url(path), &policy).await;
        match &err {
            MediaError::ForbiddenAddress {
                class: got, url, ..
            } => {
                assert_eq!(*got, class, "{err}");
                assert!(url.contains(path) && url.contains("->"), "{err}");
            }
            other => panic!("{path}: expected an address refusal, got {other}"),
        }
        assert_eq!(server.hits() - before, 1);
    }
    // A redirect may not leave http(s): file:// would read the server's disk.
    for path in ["/to-file", "/to-data", "/no-location"] {
        let err = fetch_err(&server.url(path), &policy).await;
        assert!(
            matches!(err, MediaError::BadRedirect { .. }),
            "{path}: {err}"
        );
    }
}

#[tokio::test]
async fn remote_size_cap_is_enforced() {
    let server = TestServer::start().await;
    let policy = MediaPolicy {
        max_bytes: 10_000,
        ..loopback_policy()
    };
    let started = Instant::now();
    let err = fetch_err(&server.url("/big"), &policy).await;
    assert!(
        matches!(&err, MediaError::TooLarge { size, .. } if size.starts_with("more than")),
        "{err}"
    );
    let err = fetch_err(&server.url("/big-declared"), &policy).await;
    assert!(
        matches!(&err, MediaError::TooLarge { size, .. } if size.starts_with("Content-Length")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let got = fetch_image(&server.url("/img.png"), &policy)
        .await
        .expect("small image under the cap");
    assert_eq!(got.bytes, png());
}

#[tokio::test]
async fn remote_timeout_covers_headers_and_body() {
    let server = TestServer::start().await;
    let policy = MediaPolicy {
        timeout: Duration::from_millis(300),
        ..loopback_policy()
    };
    for path in ["/slow", "/trickle"] {
        let started = Instant::now();
        let err = fetch_err(&server.url(path), &policy).await;
        assert!(matches!(err, MediaError::Timeout { .. }), "{path}: {err}");
        assert!(started.elapsed() < Duration::from_secs(2), "{path}");
        assert!(err.is_client_error());
    }
}

#[tokio::test]
async fn remote_status_and_empty_bodies_are_errors() {
    let server = TestServer::start().await;
    let policy = loopback_policy();
    let err = fetch_err(&server.url("/missing"), &policy).await;
    assert!(
        matches!(err, MediaError::Status { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("404"), "{err}");
    let err = fetch_err(&server.url("/empty"), &policy).await;
    assert!(matches!(err, MediaError::Empty { .. }), "{err}");
    // Nothing listens on a freshly closed port: a connection error, one line.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let err = fetch_err(&format!("http://{closed}/x.png"), &policy).await;
    assert!(matches!(err, MediaError::Fetch { .. }), "{err}");
}

// ---------------------------------------------------------------------------
// The test server: one response per connection, on 127.0.0.1 only.

struct TestServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl TestServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        // Lives as long as the test's runtime, which drops it at the end.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(respond(stream, addr));
            }
        });
        Self { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn respond(mut stream: TcpStream, addr: SocketAddr) {
    let Some(path) = read_request_path(&mut stream).await else {
        return;
    };
    let path = path.split('?').next().unwrap_or("").to_string();
    let redirect = |location: String| (302, vec![("Location", location)], Vec::new());
    let (status, headers, body): (u16, Vec<(&str, String)>, Vec<u8>) = match path.as_str() {
        "/img.png" => (200, vec![("Content-Type", "image/png".into())], png()),
        "/redirect" => redirect("/img.png".into()),
        "/abs-redirect" => (
            301,
            vec![("Location", format!("http://{addr}/img.png"))],
            Vec::new(),
        ),
        "/to-private" => redirect("http://10.1.2.3/x.png".into()),
        "/to-metadata" => (
            307,
            vec![("Location", "http://169.254.169.254/latest/meta-data".into())],
            Vec::new(),
        ),
        "/to-mapped" => redirect("http://[::ffff:192.168.0.1]/".into()),
        "/to-file" => redirect("file:///etc/passwd".into()),
        "/to-data" => redirect(format!("data:image/png;base64,{PNG_B64}")),
        "/no-location" => (302, Vec::new(), Vec::new()),
        "/empty" => (200, Vec::new(), Vec::new()),
        "/big" => {
            // No Content-Length: the body ends when the connection closes.
            let head = "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![0u8; 4096];
            for _ in 0..64 {
                if stream.write_all(&chunk).await.is_err() {
                    return; // the client hung up at its cap
                }
            }
            return;
        }
        "/big-declared" => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&[0u8; 100]).await;
            return;
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (200, Vec::new(), png())
        }
        "/trickle" => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 30\r\nConnection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
            }
            return;
        }
        p if p.starts_with("/chain/") => match p["/chain/".len()..].parse::<usize>() {
            Ok(0) => redirect("/img.png".into()),
            Ok(n) => redirect(format!("/chain/{}", n - 1)),
            Err(_) => (400, Vec::new(), Vec::new()),
        },
        _ => (404, Vec::new(), b"not found".to_vec()),
    };
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// The request target of a GET, reading at most 8 KiB for at most 5 s.
async fn read_request_path(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 8192 {
            return None;
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next()?;
    line.split_whitespace().nth(1).map(str::to_string)
}
