//! What both stores share, so that SQLite and Postgres answer alike: the indexed keys of an object,
//! the uniqueness and parent rules in Fn's order (and so with Fn's error for the first one broken),
//! the list query with its cursor, and the JSON encoding of a stored object. SQL is written with
//! `?` placeholders; each store numbers them its own way ([`numbered`]).

use serde_json::Value;

use super::{Kind, ListQuery, RegResult, RegistryError, Stored};

/// Fn's 409 texts.
pub const APP_EXISTS: &str = "App already exists";
/// A fn of that name exists in the app.
pub const FN_EXISTS: &str = "Fn with specified name already exists";
/// A trigger of that name exists on the fn.
pub const TRIGGER_EXISTS: &str = "Trigger with specified name already exists";
/// A trigger with that type and source exists in the app.
pub const TRIGGER_SOURCE_EXISTS: &str = "Trigger with specified type and source already exists";

/// The indexed keys of an object, read from its Fn JSON.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `id`.
    pub id: String,
    /// `name`.
    pub name: String,
    /// `app_id` (fns, triggers).
    pub app_id: String,
    /// `fn_id` (triggers).
    pub fn_id: String,
    /// `type` (triggers).
    pub kind: String,
    /// `source` (triggers).
    pub source: String,
}

/// The keys of an object's JSON.
pub fn keys_of(v: &Value) -> Keys {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    Keys {
        id: s("id"),
        name: s("name"),
        app_id: s("app_id"),
        fn_id: s("fn_id"),
        kind: s("type"),
        source: s("source"),
    }
}

/// Whether a rule's query must find a row (a parent) or must not (a duplicate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The row must exist.
    Present,
    /// No such row may exist.
    Absent,
}

/// One rule: a `SELECT 1 ...` with its arguments, and the error when it is broken.
#[derive(Debug)]
pub struct Rule {
    /// The query (`?` placeholders).
    pub sql: &'static str,
    /// Its arguments, in order.
    pub args: Vec<String>,
    /// What the query must find.
    pub expect: Expect,
    /// The error when it does not.
    pub broken: fn() -> RegistryError,
}

fn conflict(message: &'static str) -> RegistryError {
    RegistryError::Conflict { message }
}

/// The rules an object of `kind` with keys `k` must satisfy, in the order they are checked. The row
/// `k.id` itself is ignored, so that an update can keep its own keys.
pub fn rules(kind: Kind, k: &Keys) -> Vec<Rule> {
    let rule = |sql, args: &[&String], expect, broken| Rule {
        sql,
        args: args.iter().map(|a| (*a).clone()).collect(),
        expect,
        broken,
    };
    match kind {
        Kind::App => vec![rule(
            "SELECT 1 FROM apps WHERE name = ? AND id <> ?",
            &[&k.name, &k.id],
            Expect::Absent,
            || conflict(APP_EXISTS),
        )],
        Kind::Fn => vec![
            rule(
                "SELECT 1 FROM apps WHERE id = ?",
                &[&k.app_id],
                Expect::Present,
                || RegistryError::MissingParent(Kind::App),
            ),
            rule(
                "SELECT 1 FROM fns WHERE app_id = ? AND name = ? AND id <> ?",
                &[&k.app_id, &k.name, &k.id],
                Expect::Absent,
                || conflict(FN_EXISTS),
            ),
        ],
        Kind::Trigger => vec![
            rule(
                "SELECT 1 FROM apps WHERE id = ?",
                &[&k.app_id],
                Expect::Present,
                || RegistryError::MissingParent(Kind::App),
            ),
            rule(
                "SELECT 1 FROM fns WHERE id = ? AND app_id = ?",
                &[&k.fn_id, &k.app_id],
                Expect::Present,
                || RegistryError::MissingParent(Kind::Fn),
            ),
            rule(
                "SELECT 1 FROM triggers WHERE app_id = ? AND fn_id = ? AND name = ? AND id <> ?",
                &[&k.app_id, &k.fn_id, &k.name, &k.id],
                Expect::Absent,
                || conflict(TRIGGER_EXISTS),
            ),
            rule(
                "SELECT 1 FROM triggers WHERE app_id = ? AND type = ? AND source = ? AND id <> ?",
                &[&k.app_id, &k.kind, &k.source, &k.id],
                Expect::Absent,
                || conflict(TRIGGER_SOURCE_EXISTS),
            ),
        ],
    }
}

/// Fn's 409 for a duplicate id of `kind` (only a client-chosen duplicate id can get past the rules).
pub fn duplicate(kind: Kind) -> RegistryError {
    conflict(match kind {
        Kind::App => APP_EXISTS,
        Kind::Fn => FN_EXISTS,
        Kind::Trigger => TRIGGER_EXISTS,
    })
}

/// `sql` with its `?` placeholders numbered from 1 with `prefix` (`?1` for SQLite, `$1` for
/// Postgres). The queries here have no `?` inside literals.
pub fn numbered(sql: &str, prefix: char) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push(prefix);
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// The opaque cursor after the row (`name`, `id`).
pub fn encode_cursor(name: &str, id: &str) -> String {
    hex::encode(format!("{name}\u{0}{id}"))
}

/// The row a cursor points after; `None` for a cursor this LB did not make.
pub fn decode_cursor(cursor: &str) -> Option<(String, String)> {
    let raw = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    let (name, id) = raw.split_once('\u{0}')?;
    Some((name.to_owned(), id.to_owned()))
}

/// A list query: `SELECT id, name, body ... ORDER BY name, id LIMIT page + 1` (one more row than
/// the page tells whether there is a next page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSql {
    /// The query (`?` placeholders).
    pub sql: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The page size.
    pub per_page: usize,
}

/// The list query of `kind` for `q`.
pub fn list_sql(kind: Kind, q: &ListQuery) -> ListSql {
    let per_page = q.page_size();
    let mut sql = format!("SELECT id, name, body FROM {} WHERE 1=1", kind.table());
    let mut args: Vec<String> = Vec::new();
    if let Some(n) = q.name.as_deref() {
        sql.push_str(" AND name = ?");
        args.push(n.to_owned());
    }
    if let Some(a) = q.app_id.as_deref().filter(|_| kind != Kind::App) {
        sql.push_str(" AND app_id = ?");
        args.push(a.to_owned());
    }
    if let Some(f) = q.fn_id.as_deref().filter(|_| kind == Kind::Trigger) {
        sql.push_str(" AND fn_id = ?");
        args.push(f.to_owned());
    }
    if let Some((name, id)) = q.cursor.as_deref().and_then(decode_cursor) {
        sql.push_str(" AND (name > ? OR (name = ? AND id > ?))");
        args.extend([name.clone(), name, id]);
    }
    sql.push_str(&format!(" ORDER BY name, id LIMIT {}", per_page + 1));
    ListSql { sql, args, per_page }
}

/// Rows `(id, name, body)` of a list query (up to `per_page + 1`) as a page.
pub fn page_of<T: Stored>(
    mut rows: Vec<(String, String, String)>,
    per_page: usize,
) -> RegResult<super::Page<T>> {
    let next_cursor = if rows.len() > per_page {
        rows.truncate(per_page);
        rows.last().map(|(id, name, _)| encode_cursor(name, id))
    } else {
        None
    };
    let items = rows
        .iter()
        .map(|(id, _, body)| from_json(id, body))
        .collect::<RegResult<Vec<T>>>()?;
    Ok(super::Page { items, next_cursor })
}

/// An object as stored: its JSON value (for the keys) and text.
pub fn to_json<T: Stored>(obj: &T) -> RegResult<(Value, String)> {
    let v = serde_json::to_value(obj).map_err(|source| RegistryError::Json {
        kind: T::KIND,
        id: String::new(),
        source,
    })?;
    let text = v.to_string();
    Ok((v, text))
}

/// A stored object back from its JSON text.
pub fn from_json<T: Stored>(id: &str, body: &str) -> RegResult<T> {
    serde_json::from_str(body).map_err(|source| RegistryError::Json {
        kind: T::KIND,
        id: id.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        let c = encode_cursor("app name", "01ID");
        assert_eq!(decode_cursor(&c), Some(("app name".into(), "01ID".into())));
        assert_eq!(decode_cursor("zz"), None);
    }

    #[test]
    fn placeholders_are_numbered_per_store() {
        let sql = "SELECT 1 FROM t WHERE a = ? AND b = ?";
        assert_eq!(numbered(sql, '?'), "SELECT 1 FROM t WHERE a = ?1 AND b = ?2");
        assert_eq!(numbered(sql, '$'), "SELECT 1 FROM t WHERE a = $1 AND b = $2");
    }

    #[test]
    fn list_queries_filter_page_and_resume() {
        let q = ListQuery {
            cursor: Some(encode_cursor("b", "02")),
            per_page: 2,
            name: None,
            app_id: Some("A".into()),
            fn_id: Some("F".into()),
        };
        let l = list_sql(Kind::Fn, &q);
        assert_eq!(
            l.sql,
            "SELECT id, name, body FROM fns WHERE 1=1 AND app_id = ? AND (name > ? OR (name = ? AND id > ?)) \
             ORDER BY name, id LIMIT 3"
        );
        assert_eq!(l.args, ["A", "b", "b", "02"]);
        // fn_id filters triggers only; app_id does not filter apps.
        assert!(!list_sql(Kind::App, &q).sql.contains("app_id"));
        assert!(list_sql(Kind::Trigger, &q).sql.contains("fn_id = ?"));
    }

    #[test]
    fn rules_come_in_fns_order() {
        let k = Keys {
            id: "T".into(),
            app_id: "A".into(),
            fn_id: "F".into(),
            ..Keys::default()
        };
        let r = rules(Kind::Trigger, &k);
        let expects: Vec<Expect> = r.iter().map(|r| r.expect).collect();
        assert_eq!(
            expects,
            [Expect::Present, Expect::Present, Expect::Absent, Expect::Absent]
        );
        assert!(matches!((r[0].broken)(), RegistryError::MissingParent(Kind::App)));
        assert!(matches!((r[1].broken)(), RegistryError::MissingParent(Kind::Fn)));
        assert_eq!(r[1].args, ["F", "A"]);
    }
}
