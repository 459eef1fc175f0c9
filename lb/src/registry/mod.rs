//! The function registry: apps, fns and triggers ([`models`]: Fn's JSON shapes and validation)
//! behind a [`Registry`] trait (the seam for a shared database later), an embedded SQLite
//! implementation, and a read-through cache for the invoke path.

pub mod cache;
pub mod models;
pub mod sqlite;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use models::{App, Function, Trigger};

pub use cache::CachedRegistry;
pub use sqlite::SqliteRegistry;

/// Fn's default page size for list calls.
pub const DEFAULT_PER_PAGE: usize = 30;
/// Fn's largest page size.
pub const MAX_PER_PAGE: usize = 100;

/// The three kinds of object the registry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An application.
    App,
    /// A function.
    Fn,
    /// A trigger.
    Trigger,
}

impl Kind {
    /// The SQLite table.
    pub fn table(self) -> &'static str {
        match self {
            Kind::App => "apps",
            Kind::Fn => "fns",
            Kind::Trigger => "triggers",
        }
    }
}

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Lookup of an object that does not exist.
    #[error("{0:?} not found")]
    NotFound(Kind),
    /// A uniqueness rule was broken (app name; fn name within an app; trigger name within a fn, or
    /// trigger type + source within an app).
    #[error("{message}")]
    Conflict {
        /// Fn's 409 text.
        message: &'static str,
    },
    /// A fn or trigger names an app or fn that does not exist.
    #[error("parent {0:?} not found")]
    MissingParent(Kind),
    /// Opening or migrating the database file failed.
    #[error("cannot open the registry database {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("registry database error during {op}: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored object could not be (de)serialised.
    #[error("registry object {kind:?} {id} is not valid JSON: {source}")]
    Json {
        /// Kind of object.
        kind: Kind,
        /// Its id.
        id: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The blocking database task died.
    #[error("registry database task failed: {0}")]
    Task(String),
}

/// Filters and paging of a list call (Fn's query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Opaque `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (clamped to 1..=100; 0 means 30).
    pub per_page: usize,
    /// Exact name.
    pub name: Option<String>,
    /// Owning app (fns, triggers).
    pub app_id: Option<String>,
    /// Owning fn (triggers).
    pub fn_id: Option<String>,
}

impl ListQuery {
    /// The effective page size.
    pub fn page_size(&self) -> usize {
        match self.per_page {
            0 => DEFAULT_PER_PAGE,
            n => n.min(MAX_PER_PAGE),
        }
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The objects, sorted by name then id.
    pub items: Vec<T>,
    /// Cursor of the next page, `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A registry object: its kind and the JSON keys the store indexes (Fn's JSON names).
pub trait Stored: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The kind.
    const KIND: Kind;
}

impl Stored for App {
    const KIND: Kind = Kind::App;
}
impl Stored for Function {
    const KIND: Kind = Kind::Fn;
}
impl Stored for Trigger {
    const KIND: Kind = Kind::Trigger;
}

/// Result of a registry call.
pub type RegResult<T> = Result<T, RegistryError>;

/// Apps, fns and triggers. Objects come in complete (ids, timestamps and defaults set by the
/// caller); the registry enforces uniqueness and parent existence and cascades deletes.
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Checks that the store answers (readiness), bypassing any cache.
    fn ping(&self) -> BoxFuture<'_, RegResult<()>>;
    /// Insert a new app.
    fn create_app(&self, app: App) -> BoxFuture<'_, RegResult<App>>;
    /// App by id.
    fn get_app(&self, id: String) -> BoxFuture<'_, RegResult<App>>;
    /// App by name.
    fn app_by_name(&self, name: String) -> BoxFuture<'_, RegResult<App>>;
    /// Replace an existing app.
    fn update_app(&self, app: App) -> BoxFuture<'_, RegResult<App>>;
    /// Delete an app with its fns and triggers.
    fn delete_app(&self, id: String) -> BoxFuture<'_, RegResult<()>>;
    /// List apps (filter: name).
    fn list_apps(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<App>>>;

    /// Insert a new fn (its app must exist).
    fn create_fn(&self, f: Function) -> BoxFuture<'_, RegResult<Function>>;
    /// Fn by id.
    fn get_fn(&self, id: String) -> BoxFuture<'_, RegResult<Function>>;
    /// Replace an existing fn.
    fn update_fn(&self, f: Function) -> BoxFuture<'_, RegResult<Function>>;
    /// Delete a fn and its triggers.
    fn delete_fn(&self, id: String) -> BoxFuture<'_, RegResult<()>>;
    /// List fns (filters: app_id, name).
    fn list_fns(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<Function>>>;

    /// Insert a new trigger (its app and fn must exist).
    fn create_trigger(&self, t: Trigger) -> BoxFuture<'_, RegResult<Trigger>>;
    /// Trigger by id.
    fn get_trigger(&self, id: String) -> BoxFuture<'_, RegResult<Trigger>>;
    /// Replace an existing trigger.
    fn update_trigger(&self, t: Trigger) -> BoxFuture<'_, RegResult<Trigger>>;
    /// Delete a trigger.
    fn delete_trigger(&self, id: String) -> BoxFuture<'_, RegResult<()>>;
    /// List triggers (filters: app_id, fn_id, name).
    fn list_triggers(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<Trigger>>>;
    /// The trigger of `app_id` with this type and source (the HTTP trigger route).
    fn trigger_by_source(
        &self,
        app_id: String,
        kind: String,
        source: String,
    ) -> BoxFuture<'_, RegResult<Trigger>>;
}
