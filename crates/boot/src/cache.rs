//! The small-file cache of the boot HTTP server.
//!
//! Boot scripts, configs and small loaders are fetched by every machine,
//! often by hundreds at once. Files up to [`MAX_FILE`] are kept in memory
//! with their validators and content type, so a hit costs no system call
//! and no trip to the blocking pool. The file root is watched (inotify,
//! through `notify`): any change under it drops the entries it can
//! affect (the file itself, anything below a renamed or removed
//! directory, and every entry reached through a symlink) within
//! milliseconds. A load that overlaps a change is served but not kept.
//! While the watch is not in place, or after it reported an error, lost
//! events or saw the root itself move, nothing is cached: a stale boot file
//! is worse than a slow one.

use axum::body::Bytes;
use axum::http::HeaderValue;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// Largest file kept.
pub const MAX_FILE: u64 = 64 * 1024;
/// Total bytes kept (bodies, keys, paths and a fixed overhead per entry);
/// beyond it, entries are dropped to make room.
pub const MAX_BYTES: usize = 64 << 20;
/// Most entries kept, however small their files.
pub const MAX_ENTRIES: usize = 65_536;
/// What an entry costs besides its body, its key and its path.
const ENTRY_OVERHEAD: usize = 256;

/// The bytes an entry counts against [`MAX_BYTES`].
fn cost(key: &Path, c: &Cached) -> usize {
    c.body.len() + key.as_os_str().len() + c.canonical.as_os_str().len() + ENTRY_OVERHEAD
}

/// A file's validators, as the HTTP answer carries them.
#[derive(Debug, Clone)]
pub struct Validators {
    pub size: u64,
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
    /// The modification time truncated to whole seconds, as HTTP dates are.
    pub modified_secs: SystemTime,
    pub content_type: &'static str,
}

/// One kept file.
#[derive(Debug)]
pub struct Cached {
    /// Where the request resolved to (symlinks followed).
    pub canonical: PathBuf,
    pub validators: Validators,
    pub body: Bytes,
}

#[derive(Default)]
struct Inner {
    /// Keyed by the cleaned relative request path.
    entries: HashMap<PathBuf, Arc<Cached>>,
    bytes: usize,
    /// Bumped by every change seen; a load keeps its result only if the
    /// generation did not move while it read.
    generation: u64,
    /// The watch is in place and has lost nothing.
    watching: bool,
}

/// The cache; one per served root.
pub struct FileCache {
    root: PathBuf,
    inner: RwLock<Inner>,
    watcher: std::sync::Mutex<Option<notify::RecommendedWatcher>>,
}

impl std::fmt::Debug for FileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCache").field("root", &self.root).finish_non_exhaustive()
    }
}

impl FileCache {
    /// A cache of `root` (canonical), not yet watching: it keeps nothing
    /// until [`FileCache::watch`] succeeds.
    pub fn new(root: &Path) -> Arc<FileCache> {
        Arc::new(FileCache { root: root.to_owned(), inner: RwLock::default(), watcher: Default::default() })
    }

    /// The root it caches.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts watching the root (recursively; this walks the tree, so it is
    /// run off the async workers). On failure the cache stays off.
    pub fn watch(self: &Arc<Self>) -> notify::Result<()> {
        use notify::Watcher;
        let weak = Arc::downgrade(self);
        let handler = move |event: notify::Result<notify::Event>| {
            if let Some(cache) = weak.upgrade() {
                cache.on_event(event);
            }
        };
        // Symlinks are not followed: a link into the root shares its
        // target's watch (notify keeps one path per watch), and a link out
        // of it is never served.
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher: notify::RecommendedWatcher = notify::Watcher::new(handler, config)?;
        watcher.watch(&self.root, notify::RecursiveMode::Recursive)?;
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(watcher);
        let mut inner = self.write();
        inner.generation += 1;
        inner.watching = true;
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn on_event(&self, event: notify::Result<notify::Event>) {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode};
        match event {
            // Opens and reads (ours included) change nothing; a close after
            // writing (all an mmap write leaves) does.
            Ok(e) if matches!(e.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) => {}
            // Lost events, or the root itself moved or removed: what is no
            // longer watched may change unseen, so nothing is kept from now on.
            Ok(e) if e.need_rescan() || e.paths.is_empty() || e.paths.iter().any(|p| p == &self.root) => {
                self.stop("events were lost or the file root itself moved");
            }
            Ok(e) => {
                for path in &e.paths {
                    self.invalidate(path);
                }
            }
            // A watch that failed (say, the inotify watch limit on a new
            // directory) may miss changes from now on.
            Err(e) => self.stop(&e.to_string()),
        }
    }

    fn stop(&self, why: &str) {
        tracing::warn!(root = %self.root.display(), why, "http cache: the file watch cannot be trusted; small-file cache off");
        let mut inner = self.write();
        inner.watching = false;
        inner.generation += 1;
        inner.entries.clear();
        inner.bytes = 0;
    }

    /// Drops every entry a change at `path` can affect: the file, anything
    /// below a changed directory, and every entry reached through a
    /// symlink (a link on its way may be the one that changed; links are
    /// few and changes rare, so they are simply read again).
    fn invalidate(&self, path: &Path) {
        let mut inner = self.write();
        inner.generation += 1;
        let root = &self.root;
        let mut freed = 0;
        inner.entries.retain(|key, c| {
            let joined = root.join(key);
            let hit = joined != c.canonical || c.canonical.starts_with(path) || joined.starts_with(path);
            if hit {
                freed += cost(key, c);
            }
            !hit
        });
        inner.bytes -= freed;
    }

    /// The kept file for the cleaned request path `key`.
    pub fn get(&self, key: &Path) -> Option<Arc<Cached>> {
        self.read().entries.get(key).cloned()
    }

    /// The generation to pass to [`FileCache::insert`]; read it before
    /// resolving and reading the file.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Keeps a file read while the cache was at `generation`, unless
    /// something changed since, the watch is off, or it is too big.
    pub fn insert(&self, key: PathBuf, generation: u64, cached: Cached) {
        if cached.body.len() as u64 > MAX_FILE {
            return;
        }
        let len = cost(&key, &cached);
        let mut inner = self.write();
        if !inner.watching || inner.generation != generation {
            return;
        }
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= cost(&key, &old);
        }
        while inner.bytes + len > MAX_BYTES || inner.entries.len() >= MAX_ENTRIES {
            // Any entry: the set is bounded, the order does not matter.
            let Some(k) = inner.entries.keys().next().cloned() else { break };
            if let Some(old) = inner.entries.remove(&k) {
                inner.bytes -= cost(&k, &old);
            }
        }
        inner.bytes += len;
        inner.entries.insert(key, Arc::new(cached));
    }

    /// Entries kept (for tests and logs).
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(root: &Path, name: &str, body: &'static [u8]) -> Cached {
        Cached {
            canonical: root.join(name).canonicalize().unwrap(),
            validators: Validators {
                size: body.len() as u64,
                etag: HeaderValue::from_static("\"x\""),
                last_modified: HeaderValue::from_static("x"),
                modified_secs: SystemTime::UNIX_EPOCH,
                content_type: "application/octet-stream",
            },
            body: Bytes::from_static(body),
        }
    }

    /// Waits (bounded) until `f` holds.
    fn eventually(f: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn keeps_nothing_until_watching_and_nothing_read_across_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("a"), "1").unwrap();
        let cache = FileCache::new(&root);
        let g = cache.generation();
        cache.insert("a".into(), g, entry(&root, "a", b"1"));
        assert!(cache.is_empty(), "no watch, no cache");
        cache.watch().unwrap();
        let g = cache.generation();
        cache.insert("a".into(), g, entry(&root, "a", b"1"));
        assert!(cache.get(Path::new("a")).is_some());
        // A load that began before a change is not kept.
        let g = cache.generation();
        std::fs::write(root.join("a"), "2").unwrap();
        assert!(eventually(|| cache.get(Path::new("a")).is_none()), "the write drops the entry");
        cache.insert("a".into(), g, entry(&root, "a", b"1"));
        assert!(cache.get(Path::new("a")).is_none(), "a load across a change is not kept");
    }

    #[test]
    fn changes_drop_what_they_can_affect() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/f"), "f").unwrap();
        std::fs::write(root.join("g"), "g").unwrap();
        std::fs::write(root.join("target"), "t").unwrap();
        std::os::unix::fs::symlink("target", root.join("link")).unwrap();
        let cache = FileCache::new(&root);
        cache.watch().unwrap();
        // Filled again until no late event of an earlier change interferes.
        let fill = |cache: &FileCache| {
            assert!(eventually(|| {
                let g = cache.generation();
                cache.insert("d/e/f".into(), g, entry(&root, "d/e/f", b"f"));
                cache.insert("g".into(), g, entry(&root, "g", b"g"));
                cache.insert("link".into(), g, entry(&root, "link", b"t"));
                cache.len() == 3
            }));
        };
        fill(&cache);
        // The symlink's target changes: the entry reached through it goes.
        std::fs::write(root.join("target"), "t2").unwrap();
        assert!(eventually(|| cache.get(Path::new("link")).is_none()));
        assert!(cache.get(Path::new("g")).is_some(), "an unrelated file stays");
        fill(&cache);
        // A directory above a file is renamed.
        std::fs::rename(root.join("d/e"), root.join("d/x")).unwrap();
        assert!(eventually(|| cache.get(Path::new("d/e/f")).is_none()));
        assert!(cache.get(Path::new("g")).is_some());
        // The symlink itself is replaced.
        assert!(eventually(|| {
            cache.insert("link".into(), cache.generation(), entry(&root, "link", b"t"));
            cache.get(Path::new("link")).is_some()
        }));
        std::fs::remove_file(root.join("link")).unwrap();
        std::os::unix::fs::symlink("g", root.join("link")).unwrap();
        assert!(eventually(|| cache.get(Path::new("link")).is_none()));
    }

    #[test]
    fn a_moved_root_turns_the_cache_off() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("files");
        std::fs::create_dir(&root).unwrap();
        let root = root.canonicalize().unwrap();
        std::fs::write(root.join("a"), "a").unwrap();
        let cache = FileCache::new(&root);
        cache.watch().unwrap();
        cache.insert("a".into(), cache.generation(), entry(&root, "a", b"a"));
        assert_eq!(cache.len(), 1);
        std::fs::rename(&root, dir.path().join("old")).unwrap();
        std::fs::create_dir(&root).unwrap();
        assert!(eventually(|| cache.is_empty() && !cache.read().watching), "off once the root moved");
        std::fs::write(root.join("a"), "b").unwrap();
        cache.insert("a".into(), cache.generation(), entry(&root, "a", b"b"));
        assert!(cache.is_empty(), "nothing kept without a watch");
    }

    #[test]
    fn stays_within_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("a"), "a").unwrap();
        let cache = FileCache::new(&root);
        cache.watch().unwrap();
        let big: &'static [u8] = Box::leak(vec![0u8; MAX_FILE as usize + 1].into_boxed_slice());
        cache.insert("a".into(), cache.generation(), entry(&root, "a", big));
        assert!(cache.is_empty(), "a file over the limit is not kept");
        let full: &'static [u8] = Box::leak(vec![0u8; MAX_FILE as usize].into_boxed_slice());
        let n = MAX_BYTES / MAX_FILE as usize;
        for i in 0..n + 10 {
            cache.insert(format!("k{i}").into(), cache.generation(), entry(&root, "a", full));
        }
        assert!(cache.len() < n && cache.len() > n - 10, "the byte budget bounds the entries: {}", cache.len());
        assert!(cache.read().bytes <= MAX_BYTES);
        // Many empty files: each still counts its key, path and overhead.
        for i in 0..MAX_ENTRIES + 10 {
            cache.insert(format!("t{i}").into(), cache.generation(), entry(&root, "a", b""));
        }
        assert!(cache.len() <= MAX_ENTRIES && cache.read().bytes <= MAX_BYTES, "{}", cache.len());
        assert!(cache.read().bytes <= MAX_BYTES);
    }
}
