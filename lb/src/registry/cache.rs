//! A read-through cache in front of a [`Registry`] for the invoke and trigger paths (fn by id, app by
//! id or name, trigger by source). Every write through this wrapper clears it, so an update or a
//! delete is visible to the next call; writes of other LBs clear it through the Postgres change feed
//! ([`CachedRegistry::invalidate_all`]). Entries also expire after a TTL, a backstop for a writer
//! nothing tells us about; an expired entry is still served while the store is unavailable, so that
//! calls to known fns survive a database outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;

use ferrofn_common::lock::LockExt;

use super::models::{App, Function, Trigger};
use super::{ListQuery, Page, RegResult, Registry};

/// Default entry lifetime (Fn's LB caches its lookups for 5 s).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Entry lifetime over Postgres, whose change feed clears the cache on every write: only a backstop.
pub const FEED_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    App(String),
    AppName(String),
    Fn(String),
    Source(String, String, String),
}

#[derive(Debug, Clone)]
enum Entry {
    App(App),
    Fn(Function),
    Trigger(Trigger),
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Key, (Instant, Entry)>,
    /// Bumped on every write, so a read that raced a write does not re-insert stale data.
    generation: u64,
}

/// The caching wrapper.
#[derive(Debug, Clone)]
pub struct CachedRegistry {
    inner: Arc<dyn Registry>,
    ttl: Duration,
    state: Arc<Mutex<State>>,
}

impl CachedRegistry {
    /// Wraps `inner` with entries living `ttl`.
    pub fn new(inner: Arc<dyn Registry>, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock_unpoisoned()
    }

    /// The entry of `key`: fresh (within the TTL) or expired, and the generation it was read at.
    fn lookup(&self, key: &Key) -> (Option<(bool, Entry)>, u64) {
        let st = self.lock();
        let found = st
            .entries
            .get(key)
            .map(|(at, e)| (at.elapsed() < self.ttl, e.clone()));
        (found, st.generation)
    }

    fn store(&self, key: Key, generation: u64, entry: Entry) {
        let mut st = self.lock();
        if st.generation == generation {
            st.entries.insert(key, (Instant::now(), entry));
        }
    }

    /// Drops every entry (a write here or, through the change feed, on another LB); `why` is the
    /// metric label: `write`, `notify`, `poll` or `reconnect`.
    pub fn invalidate_all(&self, why: &'static str) {
        let mut st = self.lock();
        st.generation += 1;
        let dropped = st.entries.len();
        st.entries.clear();
        drop(st);
        metrics::counter!("lb_registry_cache_invalidations_total", "why" => why).increment(1);
        if why != "write" {
            tracing::debug!(why, dropped, "registry cache cleared by another writer");
        }
    }

    /// Read-through: a fresh entry, else the store's answer (cached), else, when the store is
    /// unavailable, the expired entry if there is one.
    async fn cached<T, F>(
        &self,
        key: Key,
        fetch: F,
        wrap: fn(T) -> Entry,
        unwrap: fn(Entry) -> Option<T>,
    ) -> RegResult<T>
    where
        T: Clone,
        F: std::future::Future<Output = RegResult<T>>,
    {
        let (found, generation) = self.lookup(&key);
        let result =
            |r: &'static str| metrics::counter!("lb_registry_cache_total", "result" => r).increment(1);
        let stale = match found {
            Some((true, e)) => {
                if let Some(v) = unwrap(e) {
                    result("hit");
                    return Ok(v);
                }
                None
            }
            Some((false, e)) => unwrap(e),
            None => None,
        };
        match fetch.await {
            Ok(v) => {
                result("miss");
                self.store(key, generation, wrap(v.clone()));
                Ok(v)
            }
            Err(e) if e.is_unavailable() && stale.is_some() => {
                result("stale");
                tracing::debug!(error = %e, "registry unavailable: serving an expired cache entry");
                Ok(stale.unwrap_or_else(|| unreachable!("checked above")))
            }
            Err(e) => {
                result("miss");
                Err(e)
            }
        }
    }

    fn written<'a, T: Send + 'a>(&'a self, fut: BoxFuture<'a, RegResult<T>>) -> BoxFuture<'a, RegResult<T>> {
        async move {
            let r = fut.await;
            self.invalidate_all("write");
            r
        }
        .boxed()
    }
}

fn app_entry(a: App) -> Entry {
    Entry::App(a)
}
fn app_of(e: Entry) -> Option<App> {
    match e {
        Entry::App(a) => Some(a),
        _ => None,
    }
}
fn fn_entry(f: Function) -> Entry {
    Entry::Fn(f)
}
fn fn_of(e: Entry) -> Option<Function> {
    match e {
        Entry::Fn(f) => Some(f),
        _ => None,
    }
}
fn trigger_entry(t: Trigger) -> Entry {
    Entry::Trigger(t)
}
fn trigger_of(e: Entry) -> Option<Trigger> {
    match e {
        Entry::Trigger(t) => Some(t),
        _ => None,
    }
}

impl Registry for CachedRegistry {
    fn ping(&self) -> BoxFuture<'_, RegResult<()>> {
        self.inner.ping()
    }
    fn create_app(&self, app: App) -> BoxFuture<'_, RegResult<App>> {
        self.written(self.inner.create_app(app))
    }
    fn get_app(&self, id: String) -> BoxFuture<'_, RegResult<App>> {
        let fetch = self.inner.get_app(id.clone());
        self.cached(Key::App(id), fetch, app_entry, app_of).boxed()
    }
    fn app_by_name(&self, name: String) -> BoxFuture<'_, RegResult<App>> {
        let fetch = self.inner.app_by_name(name.clone());
        self.cached(Key::AppName(name), fetch, app_entry, app_of).boxed()
    }
    fn update_app(&self, app: App) -> BoxFuture<'_, RegResult<App>> {
        self.written(self.inner.update_app(app))
    }
    fn delete_app(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
        self.written(self.inner.delete_app(id))
    }
    fn list_apps(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<App>>> {
        self.inner.list_apps(query)
    }

    fn create_fn(&self, f: Function) -> BoxFuture<'_, RegResult<Function>> {
        self.written(self.inner.create_fn(f))
    }
    fn get_fn(&self, id: String) -> BoxFuture<'_, RegResult<Function>> {
        let fetch = self.inner.get_fn(id.clone());
        self.cached(Key::Fn(id), fetch, fn_entry, fn_of).boxed()
    }
    fn update_fn(&self, f: Function) -> BoxFuture<'_, RegResult<Function>> {
        self.written(self.inner.update_fn(f))
    }
    fn delete_fn(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
        self.written(self.inner.delete_fn(id))
    }
    fn list_fns(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<Function>>> {
        self.inner.list_fns(query)
    }

    fn create_trigger(&self, t: Trigger) -> BoxFuture<'_, RegResult<Trigger>> {
        self.written(self.inner.create_trigger(t))
    }
    fn get_trigger(&self, id: String) -> BoxFuture<'_, RegResult<Trigger>> {
        self.inner.get_trigger(id)
    }
    fn update_trigger(&self, t: Trigger) -> BoxFuture<'_, RegResult<Trigger>> {
        self.written(self.inner.update_trigger(t))
    }
    fn delete_trigger(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
        self.written(self.inner.delete_trigger(id))
    }
    fn list_triggers(&self, query: ListQuery) -> BoxFuture<'_, RegResult<Page<Trigger>>> {
        self.inner.list_triggers(query)
    }
    fn trigger_by_source(
        &self,
        app_id: String,
        kind: String,
        source: String,
    ) -> BoxFuture<'_, RegResult<Trigger>> {
        let key = Key::Source(app_id.clone(), kind.clone(), source.clone());
        let fetch = self.inner.trigger_by_source(app_id, kind, source);
        self.cached(key, fetch, trigger_entry, trigger_of).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SqliteRegistry;

    #[tokio::test]
    async fn reads_are_cached_and_writes_invalidate() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteRegistry::open(dir.path().join("r.db")).unwrap();
        let cached = CachedRegistry::new(Arc::new(sqlite.clone()), Duration::from_secs(60));
        let app = App {
            id: "01APP".into(),
            name: "a".into(),
            ..App::default()
        };
        cached.create_app(app.clone()).await.unwrap();
        assert_eq!(cached.app_by_name("a".into()).await.unwrap().id, "01APP");
        // A write behind the cache's back is not seen until the entry expires...
        let mut changed = app.clone();
        changed.config.insert("K".into(), "v".into());
        sqlite.update_app(changed.clone()).await.unwrap();
        assert!(
            cached.app_by_name("a".into()).await.unwrap().config.is_empty(),
            "served from cache"
        );
        // ...while a write through the cache is visible at once.
        changed.config.insert("K".into(), "w".into());
        cached.update_app(changed).await.unwrap();
        assert_eq!(cached.app_by_name("a".into()).await.unwrap().config["K"], "w");
        cached.delete_app("01APP".into()).await.unwrap();
        assert!(matches!(
            cached.app_by_name("a".into()).await,
            Err(crate::registry::RegistryError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteRegistry::open(dir.path().join("r.db")).unwrap();
        let cached = CachedRegistry::new(Arc::new(sqlite.clone()), Duration::from_millis(50));
        let app = App {
            id: "01APP".into(),
            name: "a".into(),
            ..App::default()
        };
        cached.create_app(app.clone()).await.unwrap();
        assert_eq!(cached.get_app("01APP".into()).await.unwrap().name, "a");
        sqlite.delete_app("01APP".into()).await.unwrap();
        assert!(cached.get_app("01APP".into()).await.is_ok(), "still cached");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(cached.get_app("01APP".into()).await.is_err(), "expired");
    }

    /// SQLite behind a switch that makes every call fail as an unreachable database would.
    #[derive(Debug)]
    struct Switchable {
        inner: SqliteRegistry,
        down: std::sync::atomic::AtomicBool,
    }

    impl Switchable {
        fn gate<'a, T: Send + 'a>(&'a self, f: BoxFuture<'a, RegResult<T>>) -> BoxFuture<'a, RegResult<T>> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                futures::future::ready(Err(crate::registry::RegistryError::Unavailable {
                    op: "test",
                    cause: "switched off".into(),
                }))
                .boxed()
            } else {
                f
            }
        }
    }

    impl Registry for Switchable {
        fn ping(&self) -> BoxFuture<'_, RegResult<()>> {
            self.gate(self.inner.ping())
        }
        fn create_app(&self, a: App) -> BoxFuture<'_, RegResult<App>> {
            self.gate(self.inner.create_app(a))
        }
        fn get_app(&self, id: String) -> BoxFuture<'_, RegResult<App>> {
            self.gate(self.inner.get_app(id))
        }
        fn app_by_name(&self, n: String) -> BoxFuture<'_, RegResult<App>> {
            self.gate(self.inner.app_by_name(n))
        }
        fn update_app(&self, a: App) -> BoxFuture<'_, RegResult<App>> {
            self.gate(self.inner.update_app(a))
        }
        fn delete_app(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
            self.gate(self.inner.delete_app(id))
        }
        fn list_apps(&self, q: ListQuery) -> BoxFuture<'_, RegResult<Page<App>>> {
            self.gate(self.inner.list_apps(q))
        }
        fn create_fn(&self, f: Function) -> BoxFuture<'_, RegResult<Function>> {
            self.gate(self.inner.create_fn(f))
        }
        fn get_fn(&self, id: String) -> BoxFuture<'_, RegResult<Function>> {
            self.gate(self.inner.get_fn(id))
        }
        fn update_fn(&self, f: Function) -> BoxFuture<'_, RegResult<Function>> {
            self.gate(self.inner.update_fn(f))
        }
        fn delete_fn(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
            self.gate(self.inner.delete_fn(id))
        }
        fn list_fns(&self, q: ListQuery) -> BoxFuture<'_, RegResult<Page<Function>>> {
            self.gate(self.inner.list_fns(q))
        }
        fn create_trigger(&self, t: Trigger) -> BoxFuture<'_, RegResult<Trigger>> {
            self.gate(self.inner.create_trigger(t))
        }
        fn get_trigger(&self, id: String) -> BoxFuture<'_, RegResult<Trigger>> {
            self.gate(self.inner.get_trigger(id))
        }
        fn update_trigger(&self, t: Trigger) -> BoxFuture<'_, RegResult<Trigger>> {
            self.gate(self.inner.update_trigger(t))
        }
        fn delete_trigger(&self, id: String) -> BoxFuture<'_, RegResult<()>> {
            self.gate(self.inner.delete_trigger(id))
        }
        fn list_triggers(&self, q: ListQuery) -> BoxFuture<'_, RegResult<Page<Trigger>>> {
            self.gate(self.inner.list_triggers(q))
        }
        fn trigger_by_source(&self, a: String, k: String, s: String) -> BoxFuture<'_, RegResult<Trigger>> {
            self.gate(self.inner.trigger_by_source(a, k, s))
        }
    }

    #[tokio::test]
    async fn expired_entries_are_served_while_the_store_is_unavailable_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Switchable {
            inner: SqliteRegistry::open(dir.path().join("r.db")).unwrap(),
            down: false.into(),
        });
        let cached = CachedRegistry::new(store.clone(), Duration::from_millis(30));
        let app = App {
            id: "01APP".into(),
            name: "a".into(),
            ..App::default()
        };
        cached.create_app(app).await.unwrap();
        assert_eq!(cached.app_by_name("a".into()).await.unwrap().id, "01APP");
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        // Expired, but the store cannot answer: the last known app is served.
        assert_eq!(cached.app_by_name("a".into()).await.unwrap().id, "01APP");
        // Never cached: the store's error.
        assert!(cached.get_app("01APP".into()).await.unwrap_err().is_unavailable());
        // An invalidation (a write on another LB) leaves nothing to fall back on.
        cached.invalidate_all("notify");
        assert!(cached.app_by_name("a".into()).await.unwrap_err().is_unavailable());
        // Back up: the store answers again, and a deleted app is not resurrected from the cache.
        store.down.store(false, std::sync::atomic::Ordering::SeqCst);
        store.inner.delete_app("01APP".into()).await.unwrap();
        assert!(matches!(
            cached.app_by_name("a".into()).await,
            Err(crate::registry::RegistryError::NotFound(_))
        ));
    }
}
