//! Where the UI's profiles come from. The server knows nothing of files or
//! agents: it asks a [`ProfileSource`] for a [`Snapshot`] given the page's
//! query parameters, and caches the views it computes on that snapshot.
//!
//! - `report --http FILE [--diff-base OLD]`: [`FileSource`], one snapshot
//!   loaded (and checked) before the server starts.
//! - the agent: a source that cuts the last N seconds of a process out of
//!   its window, a new snapshot each time the page loads
//!   (`agent/ui.rs`).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;

use super::views::View;
use crate::report::model::Model;

/// A boxed future, for the object-safe [`ProfileSource`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a source could not produce a profile; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The parameters are wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// Nothing to show for them (404).
    #[error("{0}")]
    NotFound(String),
    /// Building the profile failed (500).
    #[error("{0}")]
    Failed(String),
}

/// Produces the profile a page shows.
pub trait ProfileSource: Send + Sync + 'static {
    /// A snapshot for the page's query parameters (all of them: a source
    /// reads the ones it needs, e.g. the agent's `pid` and `seconds`).
    fn snapshot<'a>(
        &'a self,
        params: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Arc<Snapshot>, SourceError>>;
}

/// A view, computed once by whoever asks first.
type ViewSlot = Arc<OnceLock<Result<Arc<View>, String>>>;

/// Builds the normalized model of a diff on first use.
type Normalizer = Box<dyn Fn() -> Result<Arc<Model>> + Send + Sync>;

/// How many computed views a snapshot keeps (each is a filtered,
/// aggregated profile; switching back and forth between a few stays
/// instant).
const VIEWS_KEPT: usize = 6;

/// One profile as the UI shows it: the loaded model, what it is called,
/// and the views computed on it so far.
pub struct Snapshot {
    pub title: String,
    pub model: Arc<Model>,
    /// A diff: `model` is new minus base.
    pub diff: bool,
    normalizer: Option<Normalizer>,
    normalized: OnceLock<Result<Arc<Model>, String>>,
    views: Mutex<Vec<(String, ViewSlot)>>,
}

impl Snapshot {
    pub fn new(title: String, model: Arc<Model>) -> Snapshot {
        Snapshot {
            title,
            model,
            diff: false,
            normalizer: None,
            normalized: OnceLock::new(),
            views: Mutex::new(Vec::new()),
        }
    }

    /// A snapshot of a profile in memory (the agent's).
    pub fn from_profile(title: String, profile: &crate::pprof::Profile) -> Result<Snapshot> {
        let model = crate::report::prepare::load_model(profile, None)?;
        Ok(Snapshot::new(title, Arc::new(model)))
    }

    /// A diff, whose normalized form `normalizer` builds when asked for.
    pub fn diff(title: String, model: Arc<Model>, normalizer: Normalizer) -> Snapshot {
        Snapshot {
            diff: true,
            normalizer: Some(normalizer),
            ..Snapshot::new(title, model)
        }
    }

    /// The model to report: the normalized diff when asked for and this is
    /// a diff, else the model.
    pub fn model(&self, normalized: bool) -> Result<Arc<Model>, String> {
        match (&self.normalizer, normalized) {
            (Some(make), true) => self
                .normalized
                .get_or_init(|| make().map_err(|e| format!("{e:#}")))
                .clone(),
            _ => Ok(self.model.clone()),
        }
    }

    /// The cached view for `key`, or the one `make` computes (kept).
    /// Requests for a view being computed wait for it rather than compute
    /// it again (the page asks for the table and the flame graph at once).
    pub fn view(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<View, String>,
    ) -> Result<Arc<View>, String> {
        let slot = {
            let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
            match views.iter().position(|(k, _)| k == key) {
                Some(i) => {
                    let hit = views.remove(i);
                    let slot = hit.1.clone();
                    views.push(hit);
                    slot
                }
                None => {
                    if views.len() >= VIEWS_KEPT {
                        views.remove(0);
                    }
                    let slot = Arc::new(OnceLock::new());
                    views.push((key.to_string(), slot.clone()));
                    slot
                }
            }
        };
        slot.get_or_init(|| make().map(Arc::new)).clone()
    }
}

/// `report --http`: a profile file and maybe a diff base, loaded once.
pub struct FileSource {
    snapshot: Arc<Snapshot>,
}

impl FileSource {
    /// Loads and checks the files now, so that a bad file stops the
    /// command before it serves anything. Errors name the file.
    pub fn open(file: PathBuf, base: Option<PathBuf>) -> Result<FileSource> {
        let model = crate::report::cli::load(&file, base.as_deref(), false)?;
        let name = |p: &PathBuf| {
            p.file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
        };
        let snapshot = match base {
            None => Snapshot::new(name(&file), model),
            Some(base) => {
                let title = format!("{} − {}", name(&file), name(&base));
                Snapshot::diff(
                    title,
                    model,
                    Box::new(move || crate::report::cli::load(&file, Some(&base), true)),
                )
            }
        };
        Ok(FileSource {
            snapshot: Arc::new(snapshot),
        })
    }
}

impl ProfileSource for FileSource {
    fn snapshot<'a>(
        &'a self,
        _params: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Arc<Snapshot>, SourceError>> {
        Box::pin(async move { Ok(self.snapshot.clone()) })
    }
}
