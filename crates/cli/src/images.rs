//! `plinth images import NAME SOURCE`: registers a disk image for the image
//! deploy. A local file is read once (its SHA-256, its size, and, decoding
//! it, the bytes a disk needs), copied into the file root under `images/`
//! and served by boot HTTP; a URL is read once for its SHA-256 and size and
//! registered as it is.

use crate::objects::encode_key;
use crate::{Client, ClientError};
use clap::ArgMatches;
use plinth_model::ImageFormat;
use reqwest::Method;
use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Reports how far a long read got, every few seconds, on stderr.
struct Progress {
    total: Option<u64>,
    done: u64,
    last: Instant,
    started: Instant,
}

impl Progress {
    fn new(total: Option<u64>) -> Progress {
        Progress { total, done: 0, last: Instant::now(), started: Instant::now() }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= Duration::from_secs(2) {
            self.show();
            self.last = Instant::now();
        }
    }

    fn show(&self) {
        let mib = |b: u64| b as f64 / 1048576.0;
        let rate = mib(self.done) / self.started.elapsed().as_secs_f64().max(0.001);
        match self.total {
            Some(t) if t > 0 => eprintln!(
                "read {:.1} MiB of {:.1} MiB ({}%), {rate:.1} MiB/s",
                mib(self.done),
                mib(t),
                self.done * 100 / t
            ),
            _ => eprintln!("read {:.1} MiB, {rate:.1} MiB/s", mib(self.done)),
        }
    }
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
    progress: Progress,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// A writer that only counts.
#[derive(Default)]
struct Count(u64);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The format a file shows (its first bytes), else its name says, else raw.
fn format_of(path: &Path) -> Result<ImageFormat, String> {
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = f.read(&mut head).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(ImageFormat::sniff(&head[..n])
        .or_else(|| path.file_name().and_then(|n| ImageFormat::from_name(&n.to_string_lossy())))
        .unwrap_or(ImageFormat::Raw))
}

/// Reads a local image once: (SHA-256, size, decoded size).
fn read_local(path: &Path, format: ImageFormat) -> Result<(String, u64, Option<u64>), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut reader = Hashing { inner: file, hasher: sha2::Sha256::new(), progress: Progress::new(Some(size)) };
    let raw = if format == ImageFormat::Qcow2 {
        // Registered as it is: the deploy refuses it, saying how to convert it.
        std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| e.to_string())?;
        None
    } else {
        let mut count = Count::default();
        plinth_agent::deploy::decode_into(
            format.as_str(),
            std::io::BufReader::with_capacity(1 << 20, &mut reader),
            &mut count,
        )
        .map_err(|e| format!("{} does not decode as {format}: {e}", path.display()))?;
        Some(count.0)
    };
    reader.progress.show();
    Ok((hex(reader.hasher.finalize()), size, raw))
}

/// `plinth images import NAME SOURCE`.
pub(crate) async fn import(c: &Client, m: &ArgMatches) -> Result<String, ClientError> {
    let name = m.get_one::<String>("key").cloned().unwrap_or_default();
    // The name becomes a file name in the file root: it must be a valid one first.
    let name = name
        .parse::<plinth_model::Name>()
        .map_err(|e| ClientError::Input(format!("image name `{name}`: {e}")))?
        .to_string();
    let source = m.get_one::<String>("source").cloned().unwrap_or_default();
    let given_format = match m.get_one::<String>("format") {
        Some(f) => Some(ImageFormat::from_name(f).filter(|x| x.as_str() == f).ok_or_else(|| {
            let all: Vec<&str> = ImageFormat::ALL.iter().map(|f| f.as_str()).collect();
            ClientError::Input(format!("--format `{f}`: expected one of {}", all.join(", ")))
        })?),
        None => None,
    };
    let expected = m.get_one::<String>("sha256").map(|s| s.to_ascii_lowercase());
    let mut body = serde_json::json!({"name": name,
        "description": m.get_one::<String>("description").cloned().unwrap_or_default()});
    let (sha256, format) = if source.starts_with("http://") || source.starts_with("https://") {
        let format = given_format
            .or_else(|| ImageFormat::from_name(source.rsplit('/').next().unwrap_or_default()))
            .unwrap_or(ImageFormat::Raw);
        let (sha256, size) = read_url(&source).await?;
        body["url"] = serde_json::json!(source);
        body["size"] = serde_json::json!(size);
        if format == ImageFormat::Raw {
            body["raw_size"] = serde_json::json!(size);
        }
        (sha256, format)
    } else {
        let file = PathBuf::from(&source);
        if !file.is_file() {
            return Err(ClientError::Input(format!("{source} is neither a file nor an http(s) URL")));
        }
        let format = match given_format {
            Some(f) => f,
            None => format_of(&file).map_err(ClientError::Input)?,
        };
        let root = crate::args::file_root(m);
        let relative = format!("images/{name}.{}", format.as_str());
        let dest = root.join(&relative);
        let (src, d, want) = (file.clone(), dest.clone(), expected.clone());
        let (sha256, size, raw) = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let read = read_local(&src, format)?;
            if let Some(want) = want
                && want != read.0
            {
                return Err(format!("the image's SHA-256 is {}, not {want} as given: not imported", read.0));
            }
            let same = std::fs::canonicalize(&src).ok().is_some_and(|s| std::fs::canonicalize(&d).ok() == Some(s));
            if !same {
                std::fs::create_dir_all(d.parent().unwrap_or(Path::new("."))).map_err(|e| e.to_string())?;
                let tmp = d.with_extension("plinth-tmp");
                std::fs::copy(&src, &tmp).map_err(|e| format!("cannot copy into {}: {e}", d.display()))?;
                std::fs::rename(&tmp, &d).map_err(|e| format!("cannot put the image at {}: {e}", d.display()))?;
            }
            Ok(read)
        })
        .await
        .map_err(|e| ClientError::Local(e.to_string()))?
        .map_err(ClientError::Local)?;
        body["path"] = serde_json::json!(relative);
        body["size"] = serde_json::json!(size);
        if let Some(raw) = raw {
            body["raw_size"] = serde_json::json!(raw);
        }
        (sha256, format)
    };
    if let Some(want) = expected
        && want != sha256
    {
        return Err(ClientError::Local(format!("the image's SHA-256 is {sha256}, not {want} as given: not imported")));
    }
    body["sha256"] = serde_json::json!(sha256);
    body["format"] = serde_json::json!(format.as_str());
    let path = format!("/api/v1/images/{}", encode_key(&name));
    let reply = match c.call(Method::GET, &path, None, None).await {
        Ok(existing) => {
            let revision = existing.body.get("revision").and_then(serde_json::Value::as_u64);
            c.call(Method::PUT, &path, Some(&body), revision).await?
        }
        Err(ClientError::Api { status: 404, .. }) => c.call(Method::POST, "/api/v1/images", Some(&body), None).await?,
        Err(e) => return Err(e),
    };
    let note =
        if format == ImageFormat::Qcow2 { format!("\nnote: {}", plinth_agent::deploy::QCOW2) } else { String::new() };
    Ok(format!(
        "image `{name}`: {format}, {} bytes, SHA-256 {sha256}{}{note}",
        reply.body["size"],
        reply.body.get("raw_size").filter(|v| !v.is_null()).map(|r| format!(", {r} bytes on disk")).unwrap_or_default()
    ))
}

/// Reads an image at a URL once: (SHA-256, size).
async fn read_url(url: &str) -> Result<(String, u64), ClientError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| ClientError::Local(e.to_string()))?;
    let mut resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| ClientError::Connect { endpoint: url.to_owned(), message: e.to_string() })?;
    if !resp.status().is_success() {
        return Err(ClientError::Local(format!("{url} answered {}", resp.status())));
    }
    let mut progress = Progress::new(resp.content_length());
    let mut hasher = sha2::Sha256::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ClientError::Local(format!("{url}: {e}")))? {
        hasher.update(&chunk);
        progress.add(chunk.len() as u64);
    }
    progress.show();
    if let Some(len) = progress.total
        && len != progress.done
    {
        return Err(ClientError::Local(format!("{url} sent {} of {len} bytes", progress.done)));
    }
    Ok((hex(hasher.finalize()), progress.done))
}
