//! A read-through cache in front of a [`Registry`] for the invoke and trigger paths (fn by id, app by
//! id or name, trigger by source). Every write through this wrapper clears it, so an update or a
//! delete is visible to the next call; entries also expire after a TTL in case another writer exists.

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

    fn lookup(&self, key: &Key) -> (Option<Entry>, u64) {
        let st = self.lock();
        let hit = st
            .entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, e)| e.clone());
        metrics::counter!("lb_registry_cache_total", "result" => if hit.is_some() { "hit" } else { "miss" })
            .increment(1);
        (hit, st.generation)
    }

    fn store(&self, key: Key, generation: u64, entry: Entry) {
        let mut st = self.lock();
        if st.generation == generation {
            st.entries.insert(key, (Instant::now(), entry));
        }
    }

    fn invalidate(&self) {
        let mut st = self.lock();
        st.generation += 1;
        st.entries.clear();
    }

    async fn cached_app(&self, key: Key) -> RegResult<App> {
        let (hit, generation) = self.lookup(&key);
        if let Some(Entry::App(a)) = hit {
            return Ok(a);
        }
        let app = match &key {
            Key::AppName(n) => self.inner.app_by_name(n.clone()).await?,
            Key::App(id) => self.inner.get_app(id.clone()).await?,
            _ => unreachable!("cached_app takes app keys only"),
        };
        self.store(key, generation, Entry::App(app.clone()));
        Ok(app)
    }

    fn written<'a, T: Send + 'a>(&'a self, fut: BoxFuture<'a, RegResult<T>>) -> BoxFuture<'a, RegResult<T>> {
        async move {
            let r = fut.await;
            self.invalidate();
            r
        }
        .boxed()
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
        self.cached_app(Key::App(id)).boxed()
    }
    fn app_by_name(&self, name: String) -> BoxFuture<'_, RegResult<App>> {
        self.cached_app(Key::AppName(name)).boxed()
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
        async move {
            let key = Key::Fn(id.clone());
            let (hit, generation) = self.lookup(&key);
            if let Some(Entry::Fn(f)) = hit {
                return Ok(f);
            }
            let f = self.inner.get_fn(id).await?;
            self.store(key, generation, Entry::Fn(f.clone()));
            Ok(f)
        }
        .boxed()
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
        async move {
            let key = Key::Source(app_id.clone(), kind.clone(), source.clone());
            let (hit, generation) = self.lookup(&key);
            if let Some(Entry::Trigger(t)) = hit {
                return Ok(t);
            }
            let t = self.inner.trigger_by_source(app_id, kind, source).await?;
            self.store(key, generation, Entry::Trigger(t.clone()));
            Ok(t)
        }
        .boxed()
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
}
