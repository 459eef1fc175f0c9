//! The function registry: apps, fns and triggers ([`models`]: Fn's JSON shapes and validation)
//! behind a [`Registry`] trait, with two stores chosen by `FN_DB_URL` ([`DbUrl`]): an embedded
//! SQLite file (one LB) and a shared Postgres database (several LBs, [`postgres`]), and a
//! read-through cache for the invoke path that the Postgres change feed invalidates.

pub mod cache;
pub mod models;
pub mod postgres;
pub mod rules;
pub mod sqlite;

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use models::{App, Function, Trigger};

pub use cache::CachedRegistry;
pub use postgres::PostgresRegistry;
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
    /// The table (the same name in both stores).
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
    /// The database cannot be reached or did not answer in time (Postgres down, restarting, a
    /// connection lost, the pool exhausted). Transient: the API answers 503.
    #[error("the registry database is unavailable during {op}: {cause}")]
    Unavailable {
        /// What was being done.
        op: &'static str,
        /// Why (one line, no secrets).
        cause: String,
    },
    /// A Postgres statement failed for a reason a retry would not fix.
    #[error("registry database error during {op}: {source}")]
    Postgres {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connecting to or migrating the Postgres database at start failed.
    #[error("cannot open the registry database {url}: {cause}")]
    PostgresOpen {
        /// The database URL, password redacted.
        url: String,
        /// Why.
        cause: String,
    },
}

impl RegistryError {
    /// A failure of the store itself that a later attempt may not meet (503 rather than 500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// Where the registry lives, parsed from Fn's `FN_DB_URL`.
#[derive(Debug, Clone)]
pub enum DbUrl {
    /// `sqlite3:///path`, `sqlite:///path` or a plain path: an embedded file.
    Sqlite(PathBuf),
    /// `postgres://user:password@host:port/db?sslmode=disable` (or `postgresql://`): a shared
    /// database.
    Postgres(Box<postgres::PgTarget>),
}

impl DbUrl {
    /// Parses the setting; the error says what is wrong without repeating the value (it may hold a
    /// password).
    pub fn parse(setting: &str) -> Result<Self, String> {
        let s = setting.trim();
        if s.is_empty() {
            return Err(
                "empty: give sqlite3:///path/to/fn.db, a path, or postgres://user:password@host:port/db"
                    .into(),
            );
        }
        match s.split_once("://") {
            Some(("sqlite3" | "sqlite", "")) => {
                Err("no path after sqlite3://: give sqlite3:///path/to/fn.db".into())
            }
            Some(("sqlite3" | "sqlite", _)) => Ok(DbUrl::Sqlite(sqlite::db_path(s))),
            Some(("postgres" | "postgresql", _)) => {
                postgres::parse_url(s).map(|c| DbUrl::Postgres(Box::new(c)))
            }
            Some((scheme, _)) => Err(format!(
                "{scheme}:// databases are not supported: use sqlite3:///path/to/fn.db or \
                 postgres://user:password@host:port/db"
            )),
            None => Ok(DbUrl::Sqlite(PathBuf::from(s))),
        }
    }
}

/// `FN_DB_URL` for logs and `print-config`: the password (in the user part or a `password=`
/// parameter) replaced by `<redacted>`.
pub fn redact_db_url(setting: &str) -> String {
    const HIDDEN: &str = "<redacted>";
    let Some((scheme, rest)) = setting.split_once("://") else {
        return setting.to_owned();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    // The user info ends at the last '@' of the authority (a raw '@' in a password is common).
    let authority_end = before_query
        .rfind('@')
        .map(|at| at + before_query[at..].find('/').unwrap_or(before_query.len() - at))
        .unwrap_or_else(|| before_query.find('/').unwrap_or(before_query.len()));
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{HIDDEN}@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={HIDDEN}"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_urls_pick_the_store() {
        assert!(
            matches!(DbUrl::parse("sqlite3:///data/fn.db"), Ok(DbUrl::Sqlite(p)) if p == std::path::Path::new("/data/fn.db"))
        );
        assert!(matches!(DbUrl::parse("./data/fn.db"), Ok(DbUrl::Sqlite(_))));
        match DbUrl::parse("postgres://fn:secret@db.internal:5433/fnreg?sslmode=disable") {
            Ok(DbUrl::Postgres(c)) => {
                assert_eq!(c.config.get_user(), Some("fn"));
                assert_eq!(c.config.get_dbname(), Some("fnreg"));
                assert_eq!(c.config.get_ports(), [5433]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            DbUrl::parse("postgresql://fn@db/fnreg"),
            Ok(DbUrl::Postgres(_))
        ));
        for (bad, why) in [
            ("", "empty"),
            ("mysql://u:p@h/db", "mysql:// databases are not supported"),
            ("sqlite3://", "no path"),
        ] {
            let e = DbUrl::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_postgres_urls_say_why_without_the_password() {
        for (url, why) in [
            (
                "postgres://fn:hunter2@db/fnreg?sslmode=verify-full",
                "sslrootcert",
            ),
            ("postgres://fn:hunter2@db/fnreg?sslmode=bogus", "sslmode"),
            ("postgres://:hunter2@db/fnreg", "user"),
            ("postgres://fn:hunter2@/fnreg", "host"),
            (
                "postgres://fn:hunter2@db:notaport/fnreg",
                "not a valid Postgres URL",
            ),
        ] {
            let e = DbUrl::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_db_url("postgres://fn:s3cr@t@db:5432/fnreg?sslmode=disable"),
            "postgres://fn:<redacted>@db:5432/fnreg?sslmode=disable"
        );
        assert_eq!(
            redact_db_url("postgres://fn@db/fnreg?password=x&sslmode=prefer"),
            "postgres://fn@db/fnreg?password=<redacted>&sslmode=prefer"
        );
        assert_eq!(redact_db_url("postgres://db/fnreg"), "postgres://db/fnreg");
        assert_eq!(
            redact_db_url("postgresql://fn:pw@%2Frun%2Fpg:5432/db"),
            "postgresql://fn:<redacted>@%2Frun%2Fpg:5432/db"
        );
        assert_eq!(redact_db_url("sqlite3:///data/fn.db"), "sqlite3:///data/fn.db");
        assert_eq!(redact_db_url("./data/fn.db"), "./data/fn.db");
    }
}
