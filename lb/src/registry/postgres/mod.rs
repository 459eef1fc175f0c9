//! The shared registry: one Postgres database for several LBs. A deadpool pool of tokio-postgres
//! connections (plain TCP or a unix socket), versioned migrations applied at start under an advisory
//! lock ([`migrate`]), every operation bounded by one timeout and retried on transient failures, and
//! every write bumping a version counter and sending a `NOTIFY` in its transaction, which the other
//! LBs' change feeds ([`changes`]) turn into cache invalidations.
//!
//! Same semantics as the SQLite store (the rules of [`super::rules`], in the same order); on top,
//! the writers are serialised by the version row's lock, so two LBs cannot both pass a uniqueness
//! rule, and foreign keys cascade the deletes.

pub mod changes;
pub mod migrate;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_postgres::GenericClient;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::models::{App, Function, Trigger};
use super::rules::{self, Expect, Keys, from_json, keys_of, to_json};
use super::{Kind, ListQuery, Page, RegResult, Registry, RegistryError, Stored};

/// How many times one operation is tried at most (within its timeout).
const MAX_ATTEMPTS: u32 = 4;
/// First pause between two attempts (doubled each time).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// How long the start waits for the database (connect and migrate) before giving up.
pub const START_WAIT: Duration = Duration::from_secs(15);

/// Pool and timeout settings.
#[derive(Debug, Clone, Copy)]
pub struct PgOptions {
    /// Connections in the pool.
    pub max_connections: usize,
    /// Bound of one registry operation: waiting for a connection, connecting, the statements and
    /// the retries. Also the server-side `statement_timeout`.
    pub timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A parsed `postgres://` URL: the driver's settings and the TLS it asks for.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// tokio-postgres' settings (`sslmode` among them: disable, prefer or require).
    pub config: tokio_postgres::Config,
    /// The certificate check when TLS is used ([`tls`]).
    pub tls: tls::PgTls,
}

/// Parses and checks a `postgres://` URL, with libpq's `sslmode` (`disable`, `prefer`, `require`,
/// `verify-ca`, `verify-full`) and `sslrootcert`. The message never repeats the URL (it may hold a
/// password).
pub fn parse_url(url: &str) -> Result<PgTarget, String> {
    const FORM: &str = "the form is postgres://user:password@host:port/database?sslmode=disable \
                        (a unix socket: the directory percent-encoded as the host, e.g. %2Frun%2Fpostgresql; \
                        TLS: sslmode=verify-full&sslrootcert=/path/ca.pem)";
    let (url, tls) = tls::split_url(url)?;
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("not a valid Postgres URL ({e}); {FORM}"))?;
    if config.get_user().is_none_or(str::is_empty) {
        return Err(format!("no user in the Postgres URL; {FORM}"));
    }
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(format!("no host in the Postgres URL; {FORM}"));
    }
    if config.get_ssl_mode() == SslMode::Disable && tls.root.is_some() {
        return Err("sslrootcert is given but sslmode=disable turns TLS off".into());
    }
    Ok(PgTarget { config, tls })
}

/// The connection settings the LB adds to the URL's: its application name, the connect timeout,
/// TCP keepalives and the server-side statement timeout.
pub fn session_config(mut config: tokio_postgres::Config, timeout: Duration) -> tokio_postgres::Config {
    if config.get_application_name().is_none() {
        config.application_name("ferrofn-lb");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(timeout);
    }
    config.keepalives(true).keepalives_idle(Duration::from_secs(30));
    let limits = format!(
        "-c statement_timeout={ms} -c lock_timeout={ms}",
        ms = timeout.as_millis()
    );
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {limits}"),
        _ => limits,
    };
    config.options(options);
    config
}

/// Why one attempt failed.
#[derive(Debug)]
enum Fail {
    /// An answer (not found, conflict, ...): returned as is.
    Registry(RegistryError),
    /// No connection could be had: nothing was sent, a retry is always safe.
    Pool(PoolError),
    /// A statement failed.
    Db(tokio_postgres::Error),
}

impl From<RegistryError> for Fail {
    fn from(e: RegistryError) -> Self {
        Fail::Registry(e)
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Db(e)
    }
}

/// What a failed statement says about retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The transaction was rolled back by the server (serialisation failure, deadlock): retry.
    RolledBack,
    /// The connection broke or the server is going away: the statement may or may not have taken
    /// effect. Retry reads; a write answers "unavailable".
    Lost,
    /// The server gave up on time (statement or lock timeout): unavailable, no retry.
    TooSlow,
    /// Anything else: a bug or a schema problem; not retried.
    Fatal,
}

fn classify(e: &tokio_postgres::Error) -> Class {
    let Some(code) = e.code() else {
        // No SQLSTATE: an I/O error, a closed connection, a connect timeout (our statements only
        // bind strings, so no encoding error gets here).
        return Class::Lost;
    };
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        Class::RolledBack
    } else if code.code().starts_with("08")
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::TOO_MANY_CONNECTIONS
    {
        Class::Lost
    } else if *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE {
        Class::TooSlow
    } else {
        Class::Fatal
    }
}

/// One line for a log or a 503's cause: the error and its causes.
fn cause_of(e: &(dyn std::error::Error + 'static)) -> String {
    ferrofn_common::exit::one_line(e)
}

/// Whether an operation may be sent again after its connection broke mid-way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// A read: yes.
    Safe,
    /// A write: it may have committed; answer "unavailable" instead.
    Unsafe,
}

/// The Postgres registry. Cheap to clone.
#[derive(Clone)]
pub struct PostgresRegistry {
    pool: Pool,
    /// This process's mark on its notifications: its own writes cleared its cache already, so its
    /// change feed skips them.
    writer: Arc<str>,
    config: Arc<tokio_postgres::Config>,
    tls: MakeRustlsConnect,
    options: PgOptions,
    url: Arc<String>,
}

impl std::fmt::Debug for PostgresRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRegistry")
            .field("url", &self.url)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

type Tx<'a> = tokio_postgres::Transaction<'a>;

impl PostgresRegistry {
    /// Connects, applies the migrations (waiting up to [`START_WAIT`] for the database to answer),
    /// and returns the registry. `url` is the redacted URL for messages.
    pub async fn connect(target: PgTarget, options: PgOptions, url: String) -> RegResult<Self> {
        let config = session_config(target.config, options.timeout);
        let open_err = |cause: String| RegistryError::PostgresOpen {
            url: url.clone(),
            cause,
        };
        let tls = target.tls.connector().map_err(&open_err)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .build()
            .map_err(|e| open_err(e.to_string()))?;
        let me = Self {
            pool,
            writer: format!("{:016x}", rand::random::<u64>()).into(),
            config: Arc::new(config),
            tls,
            options,
            url: Arc::new(url.clone()),
        };
        let deadline = Instant::now() + START_WAIT;
        let mut delay = FIRST_BACKOFF;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = tokio::time::timeout(left, me.migrate_once())
                .await
                .unwrap_or_else(|_| Err((format!("no answer within {START_WAIT:?}"), false)));
            match attempt {
                Ok(report) => {
                    tracing::info!(
                        db = %url,
                        schema_version = report.version,
                        applied = ?report.applied,
                        "registry: Postgres ready"
                    );
                    return Ok(me);
                }
                Err((cause, transient)) => {
                    if !transient || Instant::now() + delay > deadline {
                        return Err(open_err(cause));
                    }
                    tracing::warn!(db = %url, %cause, "registry: Postgres not ready, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// One migration run; on failure the cause and whether another try may succeed (the server
    /// is starting or unreachable, not refusing our password or our SQL).
    async fn migrate_once(&self) -> Result<migrate::Report, (String, bool)> {
        let mut obj = self.pool.get().await.map_err(|e| {
            let transient = match &e {
                PoolError::Backend(db) => classify(db) != Class::Fatal,
                _ => true,
            };
            (cause_of(&e), transient)
        })?;
        let client: &mut tokio_postgres::Client = &mut obj;
        migrate::run(client)
            .await
            .map_err(|e| (cause_of(&e), classify(&e) != Class::Fatal))
    }

    /// The connection settings (with the LB's session settings), for the change feed's own
    /// connection.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS connector (for the change feed's own connection).
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// The operation timeout.
    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// The mark this LB puts on its notifications (`<version> <writer>`).
    pub fn writer(&self) -> Arc<str> {
        self.writer.clone()
    }

    /// Runs `f` on a pooled connection, retrying transient failures while the timeout allows.
    async fn run<T, F>(&self, op: &'static str, replay: Replay, f: F) -> RegResult<T>
    where
        T: Send,
        F: for<'c> Fn(&'c mut ClientWrapper) -> BoxFuture<'c, Result<T, Fail>> + Send + Sync,
    {
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let unavailable = |cause: String| RegistryError::Unavailable { op, cause };
        let mut delay = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match tokio::time::timeout_at(deadline, self.pool.get()).await {
                Err(_) => Err(Fail::Pool(PoolError::Timeout(
                    deadpool_postgres::TimeoutType::Wait,
                ))),
                Ok(Err(e)) => Err(Fail::Pool(e)),
                Ok(Ok(mut obj)) => match tokio::time::timeout_at(deadline, f(&mut obj)).await {
                    Ok(r) => r,
                    Err(_) => {
                        // The connection may be wedged (or mid-transaction): close it rather than
                        // give it to the next caller.
                        drop(deadpool_postgres::Object::take(obj));
                        return Err(unavailable(format!(
                            "no answer within {:?}",
                            self.options.timeout
                        )));
                    }
                },
            };
            let (cause, retry) = match outcome {
                Ok(v) => return Ok(v),
                Err(Fail::Registry(e)) => return Err(e),
                Err(Fail::Pool(e)) => (cause_of(&e), true),
                Err(Fail::Db(e)) => match classify(&e) {
                    Class::RolledBack => (cause_of(&e), true),
                    Class::Lost => (cause_of(&e), replay == Replay::Safe),
                    Class::TooSlow => (cause_of(&e), false),
                    Class::Fatal => return Err(RegistryError::Postgres { op, source: e }),
                },
            };
            let now = tokio::time::Instant::now();
            if !retry || attempt >= MAX_ATTEMPTS || now + delay >= deadline {
                metrics::counter!("lb_registry_unavailable_total", "op" => op).increment(1);
                return Err(unavailable(cause));
            }
            tracing::debug!(op, attempt, %cause, "registry: transient Postgres failure, retrying");
            metrics::counter!("lb_registry_retries_total", "op" => op).increment(1);
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    fn read<T, F>(&self, op: &'static str, f: F) -> BoxFuture<'_, RegResult<T>>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut ClientWrapper) -> BoxFuture<'c, Result<T, Fail>> + Send + Sync + 'static,
    {
        self.run(op, Replay::Safe, f).boxed()
    }

    fn write<T, F>(&self, op: &'static str, f: F) -> BoxFuture<'_, RegResult<T>>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut ClientWrapper) -> BoxFuture<'c, Result<T, Fail>> + Send + Sync + 'static,
    {
        self.run(op, Replay::Unsafe, f).boxed()
    }

    fn put<T: Stored>(&self, obj: T, insert: bool) -> BoxFuture<'_, RegResult<T>> {
        let op = if insert { "create" } else { "update" };
        let writer = self.writer.clone();
        self.write(op, move |c| {
            let (obj, writer) = (obj.clone(), writer.clone());
            async move {
                put(c, &obj, insert, &writer).await?;
                Ok(obj)
            }
            .boxed()
        })
    }

    fn remove(&self, kind: Kind, id: String) -> BoxFuture<'_, RegResult<()>> {
        let writer = self.writer.clone();
        self.write("delete", move |c| {
            let (id, writer) = (id.clone(), writer.clone());
            async move { remove(c, kind, &id, &writer).await }.boxed()
        })
    }

    fn get<T: Stored>(&self, id: String) -> BoxFuture<'_, RegResult<T>> {
        self.read("get by id", move |c| {
            let id = id.clone();
            async move { get_one(&**c, &id).await }.boxed()
        })
    }

    fn list<T: Stored>(&self, q: ListQuery) -> BoxFuture<'_, RegResult<Page<T>>> {
        self.read("list", move |c| {
            let q = q.clone();
            async move { list(&**c, &q).await }.boxed()
        })
    }
}

fn as_params(args: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

async fn exists(c: &impl GenericClient, sql: &str, args: &[String]) -> Result<bool, Fail> {
    Ok(c.query_opt(sql, &as_params(args)).await?.is_some())
}

async fn get_one<T: Stored>(c: &impl GenericClient, id: &str) -> Result<T, Fail> {
    let sql = format!("SELECT body FROM {} WHERE id = $1", T::KIND.table());
    match c.query_opt(&sql, &[&id]).await? {
        Some(row) => Ok(from_json(id, row.try_get::<_, &str>(0)?)?),
        None => Err(RegistryError::NotFound(T::KIND).into()),
    }
}

/// Takes the writers' lock (the version row) and returns the new version.
async fn bump(tx: &Tx<'_>) -> Result<i64, Fail> {
    let row = tx
        .query_one(
            "UPDATE registry_version SET version = version + 1 RETURNING version",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Tells the LBs' change feeds that `version` is committed (delivered at commit, in commit order).
async fn notify(tx: &Tx<'_>, version: i64, writer: &str) -> Result<(), Fail> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&changes::CHANNEL, &changes::payload(version, writer)],
    )
    .await?;
    Ok(())
}

/// A constraint violation the rules did not catch (they run under the writers' lock, so only a
/// duplicate id should get here) as Fn's answer.
fn constraint_error(kind: Kind, e: &tokio_postgres::Error) -> Option<RegistryError> {
    let db = e.as_db_error()?;
    if *db.code() == SqlState::UNIQUE_VIOLATION {
        return Some(match db.constraint() {
            Some("triggers_source") => RegistryError::Conflict {
                message: rules::TRIGGER_SOURCE_EXISTS,
            },
            _ => rules::duplicate(kind),
        });
    }
    if *db.code() == SqlState::FOREIGN_KEY_VIOLATION {
        return Some(match db.constraint() {
            Some("triggers_fn") => RegistryError::MissingParent(Kind::Fn),
            _ => RegistryError::MissingParent(Kind::App),
        });
    }
    None
}

/// Inserts or replaces `obj`.
async fn put<T: Stored>(c: &mut ClientWrapper, obj: &T, insert: bool, writer: &str) -> Result<(), Fail> {
    let (v, body) = to_json(obj)?;
    let k: Keys = keys_of(&v);
    let kind = T::KIND;
    let tx = tokio_postgres::Client::transaction(c).await?;
    let version = bump(&tx).await?;
    if !insert {
        let sql = format!("SELECT 1 FROM {} WHERE id = $1", kind.table());
        if !exists(&tx, &sql, std::slice::from_ref(&k.id)).await? {
            return Err(RegistryError::NotFound(kind).into());
        }
    }
    for rule in rules::rules(kind, &k) {
        let found = exists(&tx, &rules::numbered(rule.sql, '$'), &rule.args).await?;
        if found != (rule.expect == Expect::Present) {
            return Err((rule.broken)().into());
        }
    }
    let (sql, args): (&str, Vec<&String>) = match (kind, insert) {
        (Kind::App, true) => (
            "INSERT INTO apps (id, name, body) VALUES ($1, $2, $3)",
            vec![&k.id, &k.name, &body],
        ),
        (Kind::App, false) => (
            "UPDATE apps SET name = $2, body = $3 WHERE id = $1",
            vec![&k.id, &k.name, &body],
        ),
        (Kind::Fn, true) => (
            "INSERT INTO fns (id, app_id, name, body) VALUES ($1, $2, $3, $4)",
            vec![&k.id, &k.app_id, &k.name, &body],
        ),
        (Kind::Fn, false) => (
            "UPDATE fns SET app_id = $2, name = $3, body = $4 WHERE id = $1",
            vec![&k.id, &k.app_id, &k.name, &body],
        ),
        (Kind::Trigger, true) => (
            "INSERT INTO triggers (id, app_id, fn_id, name, type, source, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            vec![&k.id, &k.app_id, &k.fn_id, &k.name, &k.kind, &k.source, &body],
        ),
        (Kind::Trigger, false) => (
            "UPDATE triggers SET app_id = $2, fn_id = $3, name = $4, type = $5, source = $6, body = $7 \
             WHERE id = $1",
            vec![&k.id, &k.app_id, &k.fn_id, &k.name, &k.kind, &k.source, &body],
        ),
    };
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| *a as &(dyn ToSql + Sync)).collect();
    if let Err(e) = tx.execute(sql, &params).await {
        return Err(match constraint_error(kind, &e) {
            Some(answer) => answer.into(),
            None => e.into(),
        });
    }
    notify(&tx, version, writer).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes the object `id` of `kind`.
async fn remove(c: &mut ClientWrapper, kind: Kind, id: &str, writer: &str) -> Result<(), Fail> {
    let tx = tokio_postgres::Client::transaction(c).await?;
    let version = bump(&tx).await?;
    // The foreign keys cascade: an app takes its fns and triggers, a fn its triggers.
    let sql = format!("DELETE FROM {} WHERE id = $1", kind.table());
    if tx.execute(&sql, &[&id]).await? == 0 {
        return Err(RegistryError::NotFound(kind).into());
    }
    notify(&tx, version, writer).await?;
    tx.commit().await?;
    Ok(())
}

async fn list<T: Stored>(c: &impl GenericClient, q: &ListQuery) -> Result<Page<T>, Fail> {
    let l = rules::list_sql(T::KIND, q);
    let rows = c
        .query(&rules::numbered(&l.sql, '$'), &as_params(&l.args))
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Vec<(String, String, String)>, tokio_postgres::Error>>()?;
    Ok(rules::page_of(rows, l.per_page)?)
}

impl Registry for PostgresRegistry {
    fn ping(&self) -> BoxFuture<'_, RegResult<()>> {
        self.read("ping", |c| {
            async move {
                c.simple_query("SELECT 1").await?;
                Ok(())
            }
            .boxed()
        })
    }
    fn create_app(&self, app: App) -> BoxFuture<'_, RegResult<App>> {
        self.put(app, true)
    }
    fn get_app(&self, id: String) -> BoxFuture<'_, RegResult<App>> {
        self.get(id)
    }
    fn app_by_name(&self, name: String) -> BoxFuture<'_, RegResult<App>> {
        self.read("app by name", move |c| {
            let name = name.clone();
            async move {
                match c
                    .query_opt("SELECT id, body FROM apps WHERE name = $1", &[&name])
                    .await?
                {
                    Some(row) => Ok(from_json(row.try_get(0)?, row.try_get(1)?)?),
                    None => Err(RegistryError::NotFound(Kind::App).into()),
                }
            }
            .boxed()
        })
    }
    fn update_app(&self, app: App) -> BoxFuture<'_, RegResult<App>> {
        self.put(app, false)
    }
    fn delete_app(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
        self.remove(Kind::App, id)
    }
    fn list_apps(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<App>>> {
        self.list(query)
    }

    fn create_fn(&self, f: Function) -> BoxFuture<'_, RegResult<Function>> {
        self.put(f, true)
    }
    fn get_fn(&self, id: String) -> BoxFuture<'_, RegResult<Function>> {
        self.get(id)
    }
    fn update_fn(&self, f: Function) -> BoxFuture<'_, RegResult<Function>> {
        self.put(f, false)
    }
    fn delete_fn(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
        self.remove(Kind::Fn, id)
    }
    fn list_fns(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<Function>>> {
        self.list(query)
    }

    fn create_trigger(&self, t: Trigger) -> BoxFuture<'_, RegResult<Trigger>> {
        self.put(t, true)
    }
    fn get_trigger(&self, id: String) -> BoxFuture<'_, RegResult<Trigger>> {
        self.get(id)
    }
    fn update_trigger(&self, t: Trigger) -> BoxFuture<'_, RegResult<Trigger>> {
        self.put(t, false)
    }
    fn delete_trigger(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
        self.remove(Kind::Trigger, id)
    }
    fn list_triggers(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<Trigger>>> {
        self.list(query)
    }
    fn trigger_by_source(
        &self,
        app_id: String,
        kind: String,
        source: String,
    ) -> BoxFuture<'_, RegResult<Trigger>> {
        self.read("trigger by source", move |c| {
            let (app_id, kind, source) = (app_id.clone(), kind.clone(), source.clone());
            async move {
                match c
                    .query_opt(
                        "SELECT id, body FROM triggers WHERE app_id = $1 AND type = $2 AND source = $3",
                        &[&app_id, &kind, &source],
                    )
                    .await?
                {
                    Some(row) => Ok(from_json(row.try_get(0)?, row.try_get(1)?)?),
                    None => Err(RegistryError::NotFound(Kind::Trigger).into()),
                }
            }
            .boxed()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_settings_keep_the_users_and_add_the_limits() {
        let c = session_config(
            parse_url("postgres://fn:pw@db/fnreg?options=-c%20search_path%3Dfn&application_name=mine")
                .unwrap()
                .config,
            Duration::from_millis(1500),
        );
        assert_eq!(c.get_application_name(), Some("mine"));
        assert_eq!(
            c.get_options(),
            Some("-c search_path=fn -c statement_timeout=1500 -c lock_timeout=1500")
        );
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_millis(1500)));
        let c = session_config(
            parse_url("postgres://fn@db/fnreg").unwrap().config,
            Duration::from_secs(5),
        );
        assert_eq!(c.get_application_name(), Some("ferrofn-lb"));
        assert_eq!(
            c.get_options(),
            Some("-c statement_timeout=5000 -c lock_timeout=5000")
        );
    }

    #[test]
    fn unix_socket_urls_parse() {
        let c = parse_url("postgres://fn@%2Ftmp%2Fpg:5433/fnreg").unwrap().config;
        assert!(matches!(
            c.get_hosts(),
            [tokio_postgres::config::Host::Unix(p)] if p == std::path::Path::new("/tmp/pg")
        ));
    }
}
