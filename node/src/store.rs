//! The edge's current config, swapped atomically, and where it comes from.
//!
//! A new config is parsed, validated and compiled completely before it replaces the old one, so
//! a broken file changes nothing: the previous revision keeps serving and the error is kept for
//! `/status` and the logs. One request reads one `Arc<EdgeConfig>` from start to end.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use portico_proto::{Document, DocumentError, Format, parse_document};
use tokio::sync::mpsc;

use crate::compile::{EdgeConfig, compile};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid { path: String, source: DocumentError },
    #[error("{source_name}: {errors}")]
    Compile {
        source_name: String,
        errors: portico_proto::ValidationErrors,
    },
}

/// What `/status` reports about the config.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadStatus {
    pub revision: u64,
    pub source: String,
    pub loaded_at: Option<String>,
    pub apis: usize,
    /// The last rejected config's error; cleared by the next successful load.
    pub last_error: Option<String>,
}

/// A validated, compiled config waiting to be swapped in ([`ConfigStore::install`]).
pub struct Prepared {
    config: EdgeConfig,
    apis: usize,
    source: String,
}

impl Prepared {
    pub fn revision(&self) -> u64 {
        self.config.revision
    }
}

pub struct ConfigStore {
    current: ArcSwap<EdgeConfig>,
    metrics: Arc<Metrics>,
    status: Mutex<LoadStatus>,
    /// Hash of the last file content applied, so an unchanged file is not reloaded.
    applied_hash: Mutex<Option<u64>>,
    loaded: AtomicBool,
    /// The serving revision, for those who wait for one (`/status?wait_revision=R`).
    serving: tokio::sync::watch::Sender<u64>,
}

impl ConfigStore {
    pub fn new(metrics: Arc<Metrics>) -> ConfigStore {
        ConfigStore {
            current: ArcSwap::from_pointee(EdgeConfig::default()),
            metrics,
            status: Mutex::new(LoadStatus::default()),
            applied_hash: Mutex::new(None),
            loaded: AtomicBool::new(false),
            serving: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn current(&self) -> Arc<EdgeConfig> {
        self.current.load_full()
    }

    /// The serving revision, updated on every swap.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.serving.subscribe()
    }

    /// True once any config has been applied.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Relaxed)
    }

    pub fn status(&self) -> LoadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Compiles and swaps in `doc` as the next revision.
    pub fn apply(&self, doc: &Document, source: &str) -> Result<u64, LoadError> {
        let revision = self.current.load().revision + 1;
        self.apply_at(doc, revision, source)
    }

    /// Compiles and swaps in `doc` as `revision` (the control plane's revision when it is the
    /// source). An older or equal revision than the one serving is ignored: revisions never go
    /// backwards at an edge.
    pub fn apply_at(&self, doc: &Document, revision: u64, source: &str) -> Result<u64, LoadError> {
        let serving = self.current.load().revision;
        if self.is_loaded() && revision <= serving {
            return Ok(serving);
        }
        let prepared = self.prepare(doc, revision, source)?;
        Ok(self.install(prepared))
    }

    /// Validates and compiles `doc` as `revision` without serving it yet (the sync client
    /// persists it first). A rejection is recorded like any other.
    pub fn prepare(
        &self,
        doc: &Document,
        revision: u64,
        source: &str,
    ) -> Result<Prepared, LoadError> {
        match compile(doc, revision, &self.metrics) {
            Ok(config) => Ok(Prepared {
                config,
                apis: doc.apis.len(),
                source: source.to_string(),
            }),
            Err(errors) => Err(self.rejected(LoadError::Compile {
                source_name: source.to_string(),
                errors,
            })),
        }
    }

    /// Swaps in a prepared config unless a newer revision already serves; returns the revision
    /// serving afterwards. A config of the serving revision replaces it: the sync client's view
    /// of one revision changes when the edge's listeners do (a private listener added), and the
    /// fresh snapshot it then gets carries the revision it already serves.
    pub fn install(&self, prepared: Prepared) -> u64 {
        let revision = prepared.config.revision;
        let serving = self.current.load().revision;
        if self.is_loaded() && revision < serving {
            return serving;
        }
        self.current.store(Arc::new(prepared.config));
        self.loaded.store(true, Relaxed);
        self.metrics.config_revision.store(revision, Relaxed);
        self.metrics.reloads_ok.fetch_add(1, Relaxed);
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = LoadStatus {
            revision,
            source: prepared.source,
            loaded_at: Some(crate::access_log::rfc3339_millis(SystemTime::now())),
            apis: prepared.apis,
            last_error: None,
        };
        self.serving.send_replace(revision);
        revision
    }

    /// Records an error about the config that did not come from compiling it (a corrupt
    /// last-known-good file, a refused update), for `/status`.
    pub fn report_error(&self, message: String) {
        self.metrics.reloads_failed.fetch_add(1, Relaxed);
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(message);
    }

    /// Reads, parses, validates, compiles and swaps in a file. `Ok(None)` when its content is
    /// what is already applied.
    pub fn load_file(&self, path: &Path) -> Result<Option<u64>, LoadError> {
        let name = path.display().to_string();
        let text = match read_bounded(path) {
            Ok(t) => t,
            Err(source) => return Err(self.rejected(LoadError::Read { path: name, source })),
        };
        let hash = {
            let mut h = DefaultHasher::new();
            text.hash(&mut h);
            h.finish()
        };
        if *self.applied_hash.lock().unwrap_or_else(|p| p.into_inner()) == Some(hash) {
            // The file is back to what is serving: whatever was rejected meanwhile is moot.
            self.status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_error = None;
            return Ok(None);
        }
        let doc = parse_document(&text, Format::from_path(path)).map_err(|source| {
            self.rejected(LoadError::Invalid {
                path: name.clone(),
                source,
            })
        })?;
        let revision = self.apply(&doc, &name)?;
        *self.applied_hash.lock().unwrap_or_else(|p| p.into_inner()) = Some(hash);
        Ok(Some(revision))
    }

    fn rejected(&self, e: LoadError) -> LoadError {
        self.metrics.reloads_failed.fetch_add(1, Relaxed);
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(e.to_string());
        e
    }
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > portico_proto::document::MAX_DOCUMENT_BYTES as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the file has {len} bytes; at most {} are accepted",
                portico_proto::document::MAX_DOCUMENT_BYTES
            ),
        ));
    }
    std::fs::read_to_string(path)
}

/// Reloads `path` when it changes (polled every `interval`; editors that replace the file are
/// covered too) and whenever `reload` receives (SIGHUP). Rejected files are logged with every
/// field error; the running config stays.
pub async fn watch_file(
    store: Arc<ConfigStore>,
    path: PathBuf,
    interval: Option<Duration>,
    mut reload: mpsc::Receiver<()>,
) {
    let mut last_seen = fingerprint(&path);
    let mut tick = interval.map(tokio::time::interval);
    loop {
        let forced = tokio::select! {
            _ = async { tick.as_mut().expect("guarded").tick().await }, if tick.is_some() => false,
            signal = reload.recv() => match signal {
                Some(()) => true,
                None => return,
            },
        };
        let seen = fingerprint(&path);
        if !forced && seen == last_seen {
            continue;
        }
        last_seen = seen;
        match store.load_file(&path) {
            Ok(Some(revision)) => {
                tracing::info!(path = %path.display(), revision, "config reloaded")
            }
            Ok(None) => tracing::debug!(path = %path.display(), "config file unchanged"),
            Err(e) => tracing::error!(
                error = %e,
                serving_revision = store.current().revision,
                "config rejected; the previous config keeps serving"
            ),
        }
    }
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
