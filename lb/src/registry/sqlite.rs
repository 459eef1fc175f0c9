//! The embedded registry: one SQLite file, created on first start. Each object is stored as its Fn
//! JSON plus the indexed keys (name, app_id, fn_id, type, source). SQLite calls are blocking, so they
//! run on tokio's blocking pool under one connection mutex (writes are serial anyway).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use futures::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};

use ferrofn_common::lock::LockExt;

use super::models::{App, Function, Trigger};
use super::rules::{self, Expect, Keys, from_json, keys_of, to_json};
use super::{Kind, ListQuery, Page, RegResult, Registry, RegistryError, Stored};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS apps (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fns (
    id TEXT PRIMARY KEY NOT NULL,
    app_id TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (app_id, name)
);
CREATE TABLE IF NOT EXISTS triggers (
    id TEXT PRIMARY KEY NOT NULL,
    app_id TEXT NOT NULL,
    fn_id TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (app_id, fn_id, name),
    UNIQUE (app_id, type, source)
);
CREATE INDEX IF NOT EXISTS fns_by_name ON fns (name, id);
CREATE INDEX IF NOT EXISTS triggers_by_name ON triggers (name, id);
";

/// The SQLite registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteRegistry {
    conn: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

/// Parses a `sqlite3:///path`, `sqlite:///path` or plain path setting into a file path.
pub fn db_path(setting: &str) -> PathBuf {
    let s = setting.trim();
    for prefix in ["sqlite3://", "sqlite://"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return PathBuf::from(rest.split('?').next().unwrap_or(rest));
        }
    }
    PathBuf::from(s)
}

fn db(op: &'static str) -> impl FnOnce(rusqlite::Error) -> RegistryError {
    move |source| RegistryError::Db { op, source }
}

impl SqliteRegistry {
    /// Opens (creating if needed, with its parent directory) the database file.
    pub fn open(path: impl AsRef<Path>) -> RegResult<Self> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| RegistryError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                open_err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                    "{}: {e}",
                    dir.display()
                ))))
            })?;
        }
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection in the blocking pool.
    fn run<T, F>(&self, f: F) -> BoxFuture<'static, RegResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> RegResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut guard: MutexGuard<'_, Connection> = conn.lock_unpoisoned();
                f(&mut guard)
            })
            .await
            .map_err(|e| RegistryError::Task(e.to_string()))?
        }
        .boxed()
    }
}

fn exists(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> RegResult<bool> {
    conn.query_row(sql, args, |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
        .map_err(db("uniqueness check"))
}

fn get_one<T: Stored>(conn: &Connection, id: &str) -> RegResult<T> {
    let sql = format!("SELECT body FROM {} WHERE id = ?1", T::KIND.table());
    let body: Option<String> = conn
        .query_row(&sql, params![id], |r| r.get(0))
        .optional()
        .map_err(db("get by id"))?;
    match body {
        Some(b) => from_json(id, &b),
        None => Err(RegistryError::NotFound(T::KIND)),
    }
}

/// Checks the rules for `k` (an object of `kind`) in Fn's order.
fn check_rules(conn: &Connection, kind: Kind, k: &Keys) -> RegResult<()> {
    for rule in rules::rules(kind, k) {
        let found = exists(
            conn,
            &rules::numbered(rule.sql, '?'),
            rusqlite::params_from_iter(rule.args.iter()),
        )?;
        if found != (rule.expect == Expect::Present) {
            return Err((rule.broken)());
        }
    }
    Ok(())
}

fn write<T: Stored>(conn: &mut Connection, obj: T, insert: bool) -> RegResult<T> {
    let (v, body) = to_json(&obj)?;
    let k = keys_of(&v);
    let tx = conn.transaction().map_err(db("begin"))?;
    if !insert
        && !exists(
            &tx,
            &format!("SELECT 1 FROM {} WHERE id = ?1", T::KIND.table()),
            params![k.id],
        )?
    {
        return Err(RegistryError::NotFound(T::KIND));
    }
    check_rules(&tx, T::KIND, &k)?;
    let verb = if insert { "INSERT" } else { "REPLACE" };
    let res = match T::KIND {
        Kind::App => tx.execute(
            &format!("{verb} INTO apps (id, name, body) VALUES (?1, ?2, ?3)"),
            params![k.id, k.name, body],
        ),
        Kind::Fn => tx.execute(
            &format!("{verb} INTO fns (id, app_id, name, body) VALUES (?1, ?2, ?3, ?4)"),
            params![k.id, k.app_id, k.name, body],
        ),
        Kind::Trigger => tx.execute(
            &format!(
                "{verb} INTO triggers (id, app_id, fn_id, name, type, source, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            params![k.id, k.app_id, k.fn_id, k.name, k.kind, k.source, body],
        ),
    };
    match res {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            // Only a duplicate id can get here (the rules above cover the other keys).
            return Err(rules::duplicate(T::KIND));
        }
        Err(e) => return Err(db("write")(e)),
    }
    tx.commit().map_err(db("commit"))?;
    Ok(obj)
}

fn delete(conn: &mut Connection, kind: Kind, id: &str) -> RegResult<()> {
    let tx = conn.transaction().map_err(db("begin"))?;
    let n = tx
        .execute(
            &format!("DELETE FROM {} WHERE id = ?1", kind.table()),
            params![id],
        )
        .map_err(db("delete"))?;
    if n == 0 {
        return Err(RegistryError::NotFound(kind));
    }
    match kind {
        Kind::App => {
            tx.execute("DELETE FROM triggers WHERE app_id = ?1", params![id])
                .map_err(db("cascade"))?;
            tx.execute("DELETE FROM fns WHERE app_id = ?1", params![id])
                .map_err(db("cascade"))?;
        }
        Kind::Fn => {
            tx.execute("DELETE FROM triggers WHERE fn_id = ?1", params![id])
                .map_err(db("cascade"))?;
        }
        Kind::Trigger => {}
    }
    tx.commit().map_err(db("commit"))
}

fn list<T: Stored>(conn: &Connection, q: &ListQuery) -> RegResult<Page<T>> {
    let l = rules::list_sql(T::KIND, q);
    let mut stmt = conn.prepare(&rules::numbered(&l.sql, '?')).map_err(db("list"))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(l.args.iter()), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(db("list"))?;
    let mut raw = Vec::new();
    for row in rows {
        raw.push(row.map_err(db("list row"))?);
    }
    rules::page_of(raw, l.per_page)
}

impl Registry for SqliteRegistry {
    fn ping(&self) -> BoxFuture<'_, RegResult<()>> {
        self.run(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db("ping")))
    }
    fn create_app(&self, app: App) -> BoxFuture<'_, RegResult<App>> {
        self.run(move |c| write(c, app, true))
    }
    fn get_app(&self, id: String) -> BoxFuture<'_, RegResult<App>> {
        self.run(move |c| get_one(c, &id))
    }
    fn app_by_name(&self, name: String) -> BoxFuture<'_, RegResult<App>> {
        self.run(move |c| {
            let id: Option<String> = c
                .query_row("SELECT id FROM apps WHERE name = ?1", params![name], |r| r.get(0))
                .optional()
                .map_err(db("app by name"))?;
            match id {
                Some(id) => get_one(c, &id),
                None => Err(RegistryError::NotFound(Kind::App)),
            }
        })
    }
    fn update_app(&self, app: App) -> BoxFuture<'_, RegResult<App>> {
        self.run(move |c| write(c, app, false))
    }
    fn delete_app(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
        self.run(move |c| delete(c, Kind::App, &id))
    }
    fn list_apps(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<App>>> {
        self.run(move |c| list(c, &query))
    }

    fn create_fn(&self, f: Function) -> BoxFuture<'_, RegResult<Function>> {
        self.run(move |c| write(c, f, true))
    }
    fn get_fn(&self, id: String) -> BoxFuture<'_, RegResult<Function>> {
        self.run(move |c| get_one(c, &id))
    }
    fn update_fn(&self, f: Function) -> BoxFuture<'_, RegResult<Function>> {
        self.run(move |c| write(c, f, false))
    }
    fn delete_fn(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
        self.run(move |c| delete(c, Kind::Fn, &id))
    }
    fn list_fns(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<Function>>> {
        self.run(move |c| list(c, &query))
    }

    fn create_trigger(&self, t: Trigger) -> BoxFuture<'_, RegResult<Trigger>> {
        self.run(move |c| write(c, t, true))
    }
    fn get_trigger(&self, id: String) -> BoxFuture<'_, RegResult<Trigger>> {
        self.run(move |c| get_one(c, &id))
    }
    fn update_trigger(&self, t: Trigger) -> BoxFuture<'_, RegResult<Trigger>> {
        self.run(move |c| write(c, t, false))
    }
    fn delete_trigger(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
        self.run(move |c| delete(c, Kind::Trigger, &id))
    }
    fn list_triggers(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<Trigger>>> {
        self.run(move |c| list(c, &query))
    }
    fn trigger_by_source(
        &self,
        app_id: String,
        kind: String,
        source: String,
    ) -> BoxFuture<'_, RegResult<Trigger>> {
        self.run(move |c| {
            let row: Option<(String, String)> = c
                .query_row(
                    "SELECT id, body FROM triggers WHERE app_id = ?1 AND type = ?2 AND source = ?3",
                    params![app_id, kind, source],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db("trigger by source"))?;
            match row {
                Some((id, body)) => from_json(&id, &body),
                None => Err(RegistryError::NotFound(Kind::Trigger)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_url_forms() {
        assert_eq!(db_path("sqlite3:///data/fn.db"), PathBuf::from("/data/fn.db"));
        assert_eq!(db_path("sqlite:///tmp/x.db?mode=rwc"), PathBuf::from("/tmp/x.db"));
        assert_eq!(db_path("data/fn.db"), PathBuf::from("data/fn.db"));
    }
}
