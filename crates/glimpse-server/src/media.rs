//! The media policy: turning an OpenAI `image_url.url` (or vLLM's
//! `video_url.url`) string into image (or video) bytes without letting a
//! request read the server's files or reach its network.
//!
//! Three sources, each with its own gate:
//! - `data:image/<subtype>;base64,...` (for a video also
//!   `data:video/<subtype>;base64,...`) is always accepted (the bytes are in
//!   the request already); its decoded size is checked before decoding.
//! - `http(s)://` only with [`MediaPolicy::allow_remote`]. Every address the
//!   host resolves to must be public (no loopback, private, link-local,
//!   CGNAT, documentation, multicast, ... nor IPv6 forms that embed such an
//!   IPv4 address), and the connection goes only to the addresses that were
//!   checked, so a DNS answer that changes between check and connect
//!   (rebinding) cannot steer it elsewhere. Redirects are followed by hand,
//!   each hop checked the same way.
//! - `file://` only beneath [`MediaPolicy::media_dir`], judged after symlinks
//!   are resolved, and only for regular files (a FIFO or device could block
//!   the server or have side effects on open).
//!
//! Everything else is refused. Errors name the URL shortened to a printable
//! form (no query, no credentials, no data payload) because they go back to
//! the requester and into logs.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use tokio::io::AsyncReadExt as _;
use url::{Host, Url};

/// Default [`MediaPolicy::max_bytes`]: 20 MiB, OpenAI's own per-image limit.
pub const DEFAULT_MAX_BYTES: usize = 20 * 1024 * 1024;
/// Default [`MediaPolicy::timeout`] for a whole remote download.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most redirects one remote fetch follows; the next one is refused.
pub const MAX_REDIRECTS: usize = 5;

/// Longest printable URL name, in characters, before it is cut with `…`.
const NAME_CHARS: usize = 100;
/// Status codes whose `Location` is followed (300 and 304 are not redirects to follow).
const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];
/// Address class whose refusal [`MediaPolicy::allow_loopback_for_tests`] lifts.
const LOOPBACK: &str = "loopback";

/// Where image and video URLs may point, and how much may be read from them.
#[derive(Debug, Clone)]
pub struct MediaPolicy {
    /// http(s) URLs allowed at all (CLI flag --allow-remote-media; off by default)
    pub allow_remote: bool,
    /// file:// URLs allowed only beneath this directory (CLI --media-dir); None = file:// refused
    pub media_dir: Option<PathBuf>,
    /// most bytes one image or video may have (data URI decoded size, download size, file size); default 20 MiB
    pub max_bytes: usize,
    /// whole-download timeout for remote media; default 10 s
    pub timeout: Duration,
    /// Test-only escape hatch: treat loopback addresses as public so
    /// integration tests can fetch from a local test server. Never set from
    /// the CLI. Default false. Only loopback is relaxed: private, link-local
    /// and the rest stay refused.
    pub allow_loopback_for_tests: bool,
}

impl Default for MediaPolicy {
    fn default() -> Self {
        Self {
            allow_remote: false,
            media_dir: None,
            max_bytes: DEFAULT_MAX_BYTES,
            timeout: DEFAULT_TIMEOUT,
            allow_loopback_for_tests: false,
        }
    }
}

/// One image's or video's bytes, not yet decoded, with a name fit for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaBytes {
    /// Short printable name: the URL without query, fragment or credentials,
    /// or a data URI's header with its payload length; at most ~100 chars.
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What a URL is fetched as: the word its errors use, and the media types
/// its data URIs may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    /// A video file (GIF, WebP, MP4, WebM, MKV; the video loader sniffs
    /// which): `video/*` data URIs, and `image/*` for animated GIF / WebP.
    Video,
}

impl MediaKind {
    /// Whether a data URI's (lowercased) media type holds this kind.
    fn accepts(self, media_type: &str) -> bool {
        let subtype_ok = |sub: &str| !sub.is_empty() && sub.chars().all(is_token_char);
        match media_type.split_once('/') {
            Some(("image", sub)) => subtype_ok(sub),
            Some(("video", sub)) => self == MediaKind::Video && subtype_ok(sub),
            _ => false,
        }
    }

    /// The data URIs accepted, for messages.
    fn data_types(self) -> &'static str {
        match self {
            MediaKind::Image => "data:image/...;base64 URIs",
            MediaKind::Video => "data:video/...;base64 and data:image/...;base64 URIs",
        }
    }

    /// The media types accepted, for messages.
    fn media_types(self) -> &'static str {
        match self {
            MediaKind::Image => "image/*",
            MediaKind::Video => "video/* or image/*",
        }
    }
}

impl std::fmt::Display for MediaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
        })
    }
}

/// Why an image or video URL gave no bytes. Each message is one line naming the URL
/// (in its printable, shortened form) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{media} URL `{url}` is refused: only {types} are accepted, and http(s):// or file:// where the server allows them", types = .media.data_types())]
    UnsupportedScheme { media: MediaKind, url: String },
    #[error("{media} URL `{url}` is not a valid URL: {reason}")]
    InvalidUrl {
        media: MediaKind,
        url: String,
        reason: String,
    },
    #[error("{media} data URI `{url}` is malformed: {reason}")]
    InvalidDataUri {
        media: MediaKind,
        url: String,
        reason: String,
    },
    #[error("{media} data URI `{url}` has media type `{media_type}`, not {types}", types = .media.media_types())]
    NotImage {
        media: MediaKind,
        url: String,
        media_type: String,
    },
    #[error("{media} `{url}` is empty")]
    Empty { media: MediaKind, url: String },
    #[error("{media} `{url}` is too large: {size}, over the limit of {limit} bytes")]
    TooLarge {
        media: MediaKind,
        url: String,
        /// What is known of the size: exact, declared, or "more than".
        size: String,
        limit: usize,
    },
    #[error("{media} URL `{url}` is remote, and remote {media} URLs are off; start the server with --allow-remote-media, or send the {media} as a data URI")]
    RemoteOff { media: MediaKind, url: String },
    #[error("{media} URL `{url}` is a file:// URL, and file:// {media} URLs are off; start the server with --media-dir DIR, or send the {media} as a data URI")]
    FileOff { media: MediaKind, url: String },
    #[error("{media} URL `{url}` is refused: {addr} is in the {class} range, and only public addresses are fetched")]
    ForbiddenAddress {
        media: MediaKind,
        url: String,
        addr: IpAddr,
        class: &'static str,
    },
    #[error("{media} URL `{url}`: host `{host}` could not be resolved: {cause}")]
    Dns {
        media: MediaKind,
        url: String,
        host: String,
        cause: String,
    },
    #[error("{media} URL `{url}`: host `{host}` resolved to no address")]
    NoAddress {
        media: MediaKind,
        url: String,
        host: String,
    },
    #[error("{media} URL `{url}` redirected more than {limit} times")]
    TooManyRedirects {
        media: MediaKind,
        url: String,
        limit: usize,
    },
    #[error("{media} URL `{url}` sent a redirect that is not followed: {reason}")]
    BadRedirect {
        media: MediaKind,
        url: String,
        reason: String,
    },
    #[error("{media} URL `{url}` answered HTTP {status}")]
    Status {
        media: MediaKind,
        url: String,
        status: u16,
    },
    #[error("{media} URL `{url}` could not be fetched: {cause}")]
    Fetch {
        media: MediaKind,
        url: String,
        cause: String,
    },
    #[error("{media} URL `{url}` did not finish downloading within {after:?}")]
    Timeout {
        media: MediaKind,
        url: String,
        after: Duration,
    },
    #[error("{media} URL `{url}` points outside the media directory")]
    OutsideMediaDir { media: MediaKind, url: String },
    #[error("{media} URL `{url}` names a {kind}, not a regular file")]
    NotRegularFile {
        media: MediaKind,
        url: String,
        kind: &'static str,
    },
    #[error("{media} URL `{url}` names a file that cannot be opened: {source}")]
    FileOpen {
        media: MediaKind,
        url: String,
        source: io::Error,
    },
    #[error("{media} URL `{url}`: reading the file failed: {source}")]
    FileRead {
        media: MediaKind,
        url: String,
        source: io::Error,
    },
    #[error("{media} URL `{url}`: the server's media directory `{dir}` is unusable: {source}", dir = .dir.display())]
    MediaDir {
        media: MediaKind,
        url: String,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("{media} URL `{url}`: the HTTP client could not be set up: {cause}")]
    HttpClient {
        media: MediaKind,
        url: String,
        cause: String,
    },
}

impl MediaError {
    /// True when the requester is at fault (answer 400); false for the
    /// server's own failures: an unusable media directory, an HTTP client
    /// that cannot be built, a file that opened but could not be read.
    /// An unreachable, slow or failing remote host counts as the requester's,
    /// as it is their URL.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            MediaError::MediaDir { .. }
                | MediaError::HttpClient { .. }
                | MediaError::FileRead { .. }
        )
    }
}

/// Fetch the bytes of the image `url` names, under `policy`. The bytes are
/// not decoded or sniffed here; the image decoder does that.
pub async fn fetch_image(url: &str, policy: &MediaPolicy) -> Result<MediaBytes, MediaError> {
    fetch_media(url, MediaKind::Image, policy).await
}

/// Fetch the bytes of the video `url` names, under `policy`: what
/// [`fetch_image`] does, with `video/*` data URIs accepted beside `image/*`
/// (animated GIF and WebP) and errors naming a video.
pub async fn fetch_video(url: &str, policy: &MediaPolicy) -> Result<MediaBytes, MediaError> {
    fetch_media(url, MediaKind::Video, policy).await
}

/// Fetch the bytes `url` names for a `media` part, under `policy`.
pub async fn fetch_media(
    url: &str,
    media: MediaKind,
    policy: &MediaPolicy,
) -> Result<MediaBytes, MediaError> {
    let name = printable_name(url);
    let bytes = match scheme_of(url).as_deref() {
        Some("data") => decode_data_uri(url, &name, media, policy.max_bytes)?,
        Some("http" | "https") => {
            if !policy.allow_remote {
                return Err(MediaError::RemoteOff { media, url: name });
            }
            // One deadline over DNS, every hop and the whole body, so a
            // server that trickles bytes cannot hold a request open.
            match tokio::time::timeout(policy.timeout, fetch_remote(url, &name, media, policy))
                .await
            {
                Ok(result) => result?,
                Err(_) => {
                    return Err(MediaError::Timeout {
                        media,
                        url: name,
                        after: policy.timeout,
                    })
                }
            }
        }
        Some("file") => read_media_file(url, &name, media, policy).await?,
        _ => return Err(MediaError::UnsupportedScheme { media, url: name }),
    };
    if bytes.is_empty() {
        return Err(MediaError::Empty { media, url: name });
    }
    Ok(MediaBytes { name, bytes })
}

/// The URL's scheme, lowercased, when it has a syntactically valid one
/// (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`).
fn scheme_of(url: &str) -> Option<String> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then(|| scheme.to_ascii_lowercase())
}

/// A short, single-line, credential-free name for `url`, for messages and logs.
pub fn printable_name(url: &str) -> String {
    if url.is_empty() {
        return "(empty)".to_string();
    }
    let name = if scheme_of(url).as_deref() == Some("data") {
        // The payload can be megabytes and says nothing to a reader; the
        // header (media type, encoding) and the length do.
        match url.split_once(',') {
            Some((header, payload)) => {
                format!("{},... ({} chars)", truncate(header, 60), payload.len())
            }
            None => truncate(url, 60),
        }
    } else {
        match Url::parse(url) {
            Ok(mut parsed) if parsed.has_host() => {
                // Queries often carry signatures or tokens, and userinfo is a
                // password: neither belongs in a log line.
                parsed.set_query(None);
                parsed.set_fragment(None);
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
                parsed.to_string()
            }
            _ => url.split(['?', '#']).next().unwrap_or(url).to_string(),
        }
    };
    truncate(&name, NAME_CHARS)
}

/// `s` cut to `max` characters (with `…` when cut) and control characters
/// replaced, so a name never breaks a log line.
fn truncate(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------
// data: URIs

fn decode_data_uri(
    uri: &str,
    name: &str,
    media: MediaKind,
    max_bytes: usize,
) -> Result<Vec<u8>, MediaError> {
    let invalid = |reason: &str| MediaError::InvalidDataUri {
        media,
        url: name.to_string(),
        reason: reason.to_string(),
    };
    // scheme_of said the scheme is "data" (any case), so 5 bytes of ASCII.
    let rest = uri.get("data:".len()..).unwrap_or("");
    let (header, payload) = rest
        .split_once(',')
        .ok_or_else(|| invalid("no `,` between the header and the payload"))?;
    let mut params = header.split(';');
    let media_type = params.next().unwrap_or("").trim().to_ascii_lowercase();
    if !media.accepts(&media_type) {
        return Err(MediaError::NotImage {
            media,
            url: name.to_string(),
            media_type: if media_type.is_empty() {
                // RFC 2397's default when the type is left out.
                "text/plain".to_string()
            } else {
                truncate(&media_type, 40)
            },
        });
    }
    // RFC 2397: `;base64` is the last parameter when present.
    let is_base64 = params
        .next_back()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("base64"));
    if !is_base64 {
        return Err(invalid("not base64-encoded (expected `;base64,`)"));
    }
    if payload.is_empty() {
        return Err(MediaError::Empty {
            media,
            url: name.to_string(),
        });
    }
    // Refuse before decoding so an oversized payload costs no allocation.
    let decoded = base64_decoded_len(payload);
    if decoded > max_bytes {
        return Err(MediaError::TooLarge {
            media,
            url: name.to_string(),
            size: format!("{decoded} bytes decoded"),
            limit: max_bytes,
        });
    }
    let bytes = BASE64
        .decode(payload)
        .map_err(|e| invalid(&format!("the payload is not valid base64: {e}")))?;
    // The length arithmetic is exact for valid base64; this only guards it.
    if bytes.len() > max_bytes {
        return Err(MediaError::TooLarge {
            media,
            url: name.to_string(),
            size: format!("{} bytes decoded", bytes.len()),
            limit: max_bytes,
        });
    }
    Ok(bytes)
}

/// Standard alphabet, padding optional: clients that strip `=` are common,
/// and the padding carries no information.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decoded size of a base64 payload, from its length and padding alone
/// (exact when the payload is valid).
fn base64_decoded_len(payload: &str) -> usize {
    let pad = payload
        .bytes()
        .rev()
        .take(2)
        .take_while(|&b| b == b'=')
        .count();
    let n = payload.len() - pad;
    // Written per 4-char group so that nothing overflows on 32-bit targets.
    n / 4 * 3 + n % 4 * 3 / 4
}

/// RFC 7230 `tchar`, what a media subtype may be made of.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

// ---------------------------------------------------------------------------
// Address classification

/// The reason `ip` may not be fetched from, or `None` when it is public.
/// `allow_loopback` lifts only the loopback refusal (for tests).
pub fn address_refusal(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    let class = match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    };
    match class {
        Some(LOOPBACK) if allow_loopback => None,
        other => other,
    }
}

/// The special-purpose range `ip` lies in (IANA's IPv4 special-purpose
/// registry, plus multicast and the reserved 240/4), or `None` for public.
fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let class = match a {
        0 => "unspecified (0.0.0.0/8)",
        10 => "private",
        100 if (64..128).contains(&b) => "shared CGNAT (100.64.0.0/10)",
        127 => LOOPBACK,
        // 169.254.169.254, the cloud metadata service, lives here.
        169 if b == 254 => "link-local",
        172 if (16..32).contains(&b) => "private",
        192 if b == 0 && c == 0 => "IETF protocol assignment (192.0.0.0/24)",
        192 if b == 0 && c == 2 => "documentation",
        192 if b == 88 && c == 99 => "6to4 relay anycast",
        192 if b == 168 => "private",
        198 if b == 18 || b == 19 => "benchmarking",
        198 if b == 51 && c == 100 => "documentation",
        203 if b == 0 && c == 113 => "documentation",
        224..=239 => "multicast",
        255 if ip == Ipv4Addr::BROADCAST => "broadcast",
        240..=255 => "reserved (240.0.0.0/4)",
        _ => return None,
    };
    Some(class)
}

/// As [`v4_class`] for IPv6. Forms that carry an IPv4 address the network
/// may route to (mapped, SIIT-translated, NAT64, 6to4) are judged by that
/// address; anything outside global unicast 2000::/3 is refused outright.
fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some(LOOPBACK);
    }
    // ::ffff:a.b.c.d — the kernel connects to a.b.c.d itself.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    // ::ffff:0:a.b.c.d (SIIT-translated, RFC 6145).
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return v4_class(embedded(s[6], s[7]));
    }
    // ::a.b.c.d (IPv4-compatible): deprecated since 2006, never a real host.
    if s[..6] == [0; 6] {
        return Some("IPv4-compatible (deprecated)");
    }
    // 64:ff9b::/96, the well-known NAT64 prefix: the translator connects to
    // the embedded IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return v4_class(embedded(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return Some("local-use NAT64 (64:ff9b:1::/48)");
    }
    // 2002::/16, 6to4: the relay tunnels to the IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return v4_class(embedded(s[1], s[2]));
    }
    let class = match s[0] {
        0x2001 if s[1] == 0 => "Teredo (2001::/32)",
        0x2001 if s[1] == 0x0db8 => "documentation",
        // The rest of 2001::/23: benchmarking, ORCHID and other protocol
        // assignments; no image server lives there.
        0x2001 if s[1] < 0x0200 => "IETF protocol assignment (2001::/23)",
        0x3fff if s[1] < 0x1000 => "documentation",
        0x2000..=0x3fff => return None,
        0xfc00..=0xfdff => "private (unique local fc00::/7)",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local (deprecated)",
        0xff00..=0xffff => "multicast",
        // 100::/64 discard-only and the unallocated rest of ::/0.
        _ => "reserved (outside 2000::/3)",
    };
    Some(class)
}

// ---------------------------------------------------------------------------
// http(s)://

async fn fetch_remote(
    raw: &str,
    name: &str,
    media: MediaKind,
    policy: &MediaPolicy,
) -> Result<Vec<u8>, MediaError> {
    let mut url = Url::parse(raw).map_err(|e| MediaError::InvalidUrl {
        media,
        url: name.to_string(),
        reason: e.to_string(),
    })?;
    let mut hop_name = name.to_string();
    let mut redirects = 0;
    loop {
        let response = get_checked(&url, &hop_name, media, policy).await?;
        let status = response.status().as_u16();
        if REDIRECT_CODES.contains(&status) {
            if redirects == MAX_REDIRECTS {
                return Err(MediaError::TooManyRedirects {
                    media,
                    url: name.to_string(),
                    limit: MAX_REDIRECTS,
                });
            }
            url = redirect_target(&url, &response, &hop_name, media)?;
            redirects += 1;
            // Name both ends so a refused hop can be traced to the request.
            hop_name = format!("{name} -> {}", printable_name(url.as_str()));
            continue;
        }
        if !response.status().is_success() {
            return Err(MediaError::Status {
                media,
                url: hop_name,
                status,
            });
        }
        return read_body(response, &hop_name, media, policy.max_bytes).await;
    }
}

/// The URL a redirect response points to, refusing anything but http(s)
/// (a redirect to file:// must not read the server's disk).
fn redirect_target(
    from: &Url,
    response: &reqwest::Response,
    name: &str,
    media: MediaKind,
) -> Result<Url, MediaError> {
    let bad = |reason: String| MediaError::BadRedirect {
        media,
        url: name.to_string(),
        reason,
    };
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .ok_or_else(|| bad("no Location header".to_string()))?
        .to_str()
        .map_err(|_| bad("Location is not ASCII".to_string()))?;
    let next = from.join(location).map_err(|e| {
        bad(format!(
            "Location `{}` is not a URL: {e}",
            truncate(location, 60)
        ))
    })?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(bad(format!(
            "Location `{}` is not http(s)",
            printable_name(next.as_str())
        )));
    }
    Ok(next)
}

/// GET `url` after checking every address its host has, connecting only to
/// those addresses. Redirects are not followed here.
async fn get_checked(
    url: &Url,
    name: &str,
    media: MediaKind,
    policy: &MediaPolicy,
) -> Result<reqwest::Response, MediaError> {
    let (host, addrs) = checked_addresses(url, name, media, policy).await?;
    let client = reqwest::Client::builder()
        // Redirects are followed by fetch_remote so each hop is checked.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would do its own resolving and connecting, unchecked.
        .no_proxy()
        .dns_resolver(Arc::new(PinnedResolver { host, addrs }))
        .user_agent(concat!("glimpse-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| MediaError::HttpClient {
            media,
            url: name.to_string(),
            cause: error_chain(&e),
        })?;
    client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| MediaError::Fetch {
            media,
            url: name.to_string(),
            cause: error_chain(&e.without_url()),
        })
}

/// The host of `url` and every address it resolves to, each one checked.
/// A single non-public address refuses the URL: which one the connection
/// would pick is not ours to predict.
async fn checked_addresses(
    url: &Url,
    name: &str,
    media: MediaKind,
    policy: &MediaPolicy,
) -> Result<(String, Vec<SocketAddr>), MediaError> {
    let invalid = |reason: &str| MediaError::InvalidUrl {
        media,
        url: name.to_string(),
        reason: reason.to_string(),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| invalid("no port"))?;
    let (host, addrs) = match url.host() {
        None => return Err(invalid("no host")),
        Some(Host::Ipv4(ip)) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
        Some(Host::Ipv6(ip)) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
        Some(Host::Domain(domain)) => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((domain, port))
                .await
                .map_err(|e| MediaError::Dns {
                    media,
                    url: name.to_string(),
                    host: truncate(domain, 60),
                    cause: e.to_string(),
                })?
                .collect();
            (domain.to_string(), addrs)
        }
    };
    if addrs.is_empty() {
        return Err(MediaError::NoAddress {
            media,
            url: name.to_string(),
            host: truncate(&host, 60),
        });
    }
    for addr in &addrs {
        if let Some(class) = address_refusal(addr.ip(), policy.allow_loopback_for_tests) {
            return Err(MediaError::ForbiddenAddress {
                media,
                url: name.to_string(),
                addr: addr.ip(),
                class,
            });
        }
    }
    Ok((host, addrs))
}

/// A resolver that knows one host, answering with the addresses already
/// checked, and refuses every other name: the client never asks the system
/// resolver, so a second, different DNS answer cannot be used.
struct PinnedResolver {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl reqwest::dns::Resolve for PinnedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let result: Result<reqwest::dns::Addrs, Box<dyn std::error::Error + Send + Sync>> =
            if name.as_str().eq_ignore_ascii_case(&self.host) {
                Ok(Box::new(self.addrs.clone().into_iter()))
            } else {
                Err(format!(
                    "host `{}` was not checked by the media policy",
                    name.as_str()
                )
                .into())
            };
        Box::pin(std::future::ready(result))
    }
}

/// The body, refused up front when Content-Length is over the cap and
/// aborted as soon as the streamed bytes pass it (a missing or lying
/// Content-Length must not let a body grow without bound).
async fn read_body(
    mut response: reqwest::Response,
    name: &str,
    media: MediaKind,
    max_bytes: usize,
) -> Result<Vec<u8>, MediaError> {
    let too_large = |size: String| MediaError::TooLarge {
        media,
        url: name.to_string(),
        size,
        limit: max_bytes,
    };
    let declared = response.content_length();
    if let Some(len) = declared {
        if len > max_bytes as u64 {
            return Err(too_large(format!("Content-Length {len}")));
        }
    }
    let capacity = declared.map_or(0, |len| len as usize).min(max_bytes);
    let mut bytes = Vec::with_capacity(capacity);
    while let Some(chunk) = response.chunk().await.map_err(|e| MediaError::Fetch {
        media,
        url: name.to_string(),
        cause: error_chain(&e.without_url()),
    })? {
        if bytes.len() + chunk.len() > max_bytes {
            return Err(too_large(format!("more than {max_bytes} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `err` and its sources joined on one line: reqwest's own message is
/// generic ("error sending request"), the cause is in the chain.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    truncate(&out, 300)
}

// ---------------------------------------------------------------------------
// file://

async fn read_media_file(
    raw: &str,
    name: &str,
    media: MediaKind,
    policy: &MediaPolicy,
) -> Result<Vec<u8>, MediaError> {
    let Some(dir) = &policy.media_dir else {
        return Err(MediaError::FileOff {
            media,
            url: name.to_string(),
        });
    };
    let outside = || MediaError::OutsideMediaDir {
        media,
        url: name.to_string(),
    };
    let url = Url::parse(raw).map_err(|e| MediaError::InvalidUrl {
        media,
        url: name.to_string(),
        reason: e.to_string(),
    })?;
    let path = url.to_file_path().map_err(|()| MediaError::InvalidUrl {
        media,
        url: name.to_string(),
        reason: "not a local absolute path (file:// URLs may name no host but localhost)"
            .to_string(),
    })?;
    let root = tokio::fs::canonicalize(dir)
        .await
        .map_err(|source| MediaError::MediaDir {
            media,
            url: name.to_string(),
            dir: dir.clone(),
            source,
        })?;
    // Decide on the path as written before touching the disk, so a request
    // cannot probe which files exist outside the directory. The URL parser
    // removes `.`/`..` segments; one can survive only percent-encoded with a
    // `/` (`..%2F`), and no legitimate path needs that.
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(outside());
    }
    let written_inside = path.starts_with(&root) || path.starts_with(absolute(dir));
    if !written_inside {
        return Err(outside());
    }
    let real = tokio::fs::canonicalize(&path)
        .await
        .map_err(|source| MediaError::FileOpen {
            media,
            url: name.to_string(),
            source,
        })?;
    // Symlinks resolved: a link inside pointing outside is refused here.
    if !real.starts_with(&root) {
        return Err(outside());
    }
    // Look before opening: opening a FIFO blocks until a writer appears,
    // and opening some devices acts on them.
    let meta = tokio::fs::symlink_metadata(&real)
        .await
        .map_err(|source| MediaError::FileOpen {
            media,
            url: name.to_string(),
            source,
        })?;
    check_regular(&meta, name, media, policy.max_bytes)?;
    let file = open_no_block(&real)
        .await
        .map_err(|source| MediaError::FileOpen {
            media,
            url: name.to_string(),
            source,
        })?;
    // The path may have been swapped since the look; judge what was opened.
    let meta = file
        .metadata()
        .await
        .map_err(|source| MediaError::FileRead {
            media,
            url: name.to_string(),
            source,
        })?;
    check_regular(&meta, name, media, policy.max_bytes)?;
    // Capped again while reading: the file may grow after the look.
    let cap = policy.max_bytes as u64 + 1;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| MediaError::FileRead {
            media,
            url: name.to_string(),
            source,
        })?;
    if bytes.len() > policy.max_bytes {
        return Err(MediaError::TooLarge {
            media,
            url: name.to_string(),
            size: format!("more than {} bytes", policy.max_bytes),
            limit: policy.max_bytes,
        });
    }
    Ok(bytes)
}

/// `dir` made absolute against the working directory, lexically (the
/// directory as configured, which may itself be reached through a symlink).
fn absolute(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(dir))
            .unwrap_or_else(|_| dir.to_path_buf())
    }
}

fn check_regular(
    meta: &std::fs::Metadata,
    name: &str,
    media: MediaKind,
    max_bytes: usize,
) -> Result<(), MediaError> {
    if !meta.is_file() {
        return Err(MediaError::NotRegularFile {
            media,
            url: name.to_string(),
            kind: file_kind(&meta.file_type()),
        });
    }
    if meta.len() > max_bytes as u64 {
        return Err(MediaError::TooLarge {
            media,
            url: name.to_string(),
            size: format!("{} bytes", meta.len()),
            limit: max_bytes,
        });
    }
    Ok(())
}

fn file_kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        return "directory";
    }
    if ft.is_symlink() {
        return "symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if ft.is_fifo() {
            return "FIFO";
        }
        if ft.is_socket() {
            return "socket";
        }
        if ft.is_char_device() || ft.is_block_device() {
            return "device";
        }
    }
    "special file"
}

/// Open for reading without following a final symlink and without blocking:
/// should a FIFO be swapped in after the look, the open returns at once and
/// the second look refuses it.
#[cfg(unix)]
async fn open_no_block(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .await
}

#[cfg(not(unix))]
async fn open_no_block(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::File::open(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(s: &str) -> Option<&'static str> {
        let ip: IpAddr = s.parse().expect("test address parses");
        address_refusal(ip, false)
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.1.1",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(refusal(ip), None, "{ip} should be public");
        }
    }

    #[test]
    fn special_ipv4_ranges_are_refused() {
        for (ip, class) in [
            ("0.0.0.0", "unspecified (0.0.0.0/8)"),
            ("0.1.2.3", "unspecified (0.0.0.0/8)"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("100.64.0.1", "shared CGNAT (100.64.0.0/10)"),
            ("100.127.255.255", "shared CGNAT (100.64.0.0/10)"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.1", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("192.0.0.8", "IETF protocol assignment (192.0.0.0/24)"),
            ("192.0.2.5", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved (240.0.0.0/4)"),
            ("255.255.255.255", "broadcast"),
        ] {
            assert_eq!(refusal(ip), Some(class), "{ip}");
        }
    }

    #[test]
    fn special_ipv6_ranges_are_refused() {
        for (ip, class) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "private (unique local fc00::/7)"),
            ("fd12:3456::1", "private (unique local fc00::/7)"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001::1", "Teredo (2001::/32)"),
            ("2001:2::1", "IETF protocol assignment (2001::/23)"),
            ("100::1", "reserved (outside 2000::/3)"),
            ("64:ff9b:1::1", "local-use NAT64 (64:ff9b:1::/48)"),
            ("::7f00:1", "IPv4-compatible (deprecated)"),
            ("::a00:1", "IPv4-compatible (deprecated)"),
        ] {
            assert_eq!(refusal(ip), Some(class), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_embedding_ipv4_are_judged_by_the_ipv4_address() {
        for (ip, class) in [
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:0.0.0.0", "unspecified (0.0.0.0/8)"),
            ("::ffff:0:192.168.0.1", "private"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a00:1::1", "private"),
            ("2002:a9fe:a9fe::1", "link-local"),
        ] {
            assert_eq!(refusal(ip), Some(class), "{ip}");
        }
    }

    #[test]
    fn the_test_flag_lifts_only_loopback() {
        let lifted = |s: &str| address_refusal(s.parse().expect("parses"), true);
        assert_eq!(lifted("127.0.0.1"), None);
        assert_eq!(lifted("::1"), None);
        assert_eq!(lifted("::ffff:127.0.0.1"), None);
        assert_eq!(lifted("10.0.0.1"), Some("private"));
        assert_eq!(lifted("169.254.169.254"), Some("link-local"));
        assert_eq!(lifted("0.0.0.0"), Some("unspecified (0.0.0.0/8)"));
        assert_eq!(lifted("fe80::1"), Some("link-local"));
    }

    #[test]
    fn decoded_length_is_exact_for_every_padding() {
        for n in 0..40usize {
            let data = vec![7u8; n];
            let padded = base64::engine::general_purpose::STANDARD.encode(&data);
            let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&data);
            assert_eq!(base64_decoded_len(&padded), n, "padded, {n} bytes");
            assert_eq!(base64_decoded_len(&unpadded), n, "unpadded, {n} bytes");
        }
    }

    #[test]
    fn names_are_short_single_line_and_credential_free() {
        assert_eq!(
            printable_name("https://user:secret@example.com/a.png?sig=abc#frag"),
            "https://example.com/a.png"
        );
        assert_eq!(
            printable_name("data:image/png;base64,iVBORw0KGgo="),
            "data:image/png;base64,... (12 chars)"
        );
        assert_eq!(printable_name(""), "(empty)");
        assert_eq!(printable_name("ftp://h/x\ny?q"), "ftp://h/xy");
        assert_eq!(printable_name("not a url\n?x"), "not a url?");
        let long = format!("https://example.com/{}", "a".repeat(500));
        let name = printable_name(&long);
        assert_eq!(name.chars().count(), NAME_CHARS + 1);
        assert!(name.ends_with('…'));
    }

    #[test]
    fn schemes_are_recognised_case_insensitively() {
        assert_eq!(scheme_of("HTTPS://x").as_deref(), Some("https"));
        assert_eq!(
            scheme_of("Data:image/png;base64,AA").as_deref(),
            Some("data")
        );
        assert_eq!(scheme_of("/etc/passwd"), None);
        assert_eq!(scheme_of("C:\\x").as_deref(), Some("c"));
        assert_eq!(scheme_of(" http://x"), None);
        assert_eq!(scheme_of(""), None);
    }
}
