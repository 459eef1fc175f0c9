//! Header-level rules of the contract: `Fn-Deadline` parsing, the handler's view of an
//! HTTP-trigger request (un-prefixed `Fn-Http-H-*`) and the encoding of a response for one.

use crate::HttpContext;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header::CONTENT_TYPE};
use std::time::SystemTime;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Prefix of client headers encapsulated by the runner for HTTP-trigger calls.
pub(crate) const HTTP_HEADER_PREFIX: &str = "fn-http-h-";

/// Parses an RFC 3339 timestamp (`Fn-Deadline`); `None` if it is not one.
pub fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(value.trim(), &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Go's canonical MIME header form (`fn-call-id` → `Fn-Call-Id`), which is how Fn's Go code and
/// fn-test-utils present header names.
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// Reads `Fn-Intent`/`Fn-Http-Method`/`Fn-Http-Request-Url`; `Some` only for HTTP-trigger calls.
pub(crate) fn http_context(headers: &HeaderMap) -> Option<HttpContext> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (text("fn-intent") == "httprequest").then(|| HttpContext {
        method: text("fn-http-method"),
        request_url: text("fn-http-request-url"),
    })
}

/// The headers a handler sees for an HTTP-trigger call: `Content-Type`, every `Fn-Http-H-*` header
/// and an un-prefixed copy of each of them (the prefixed originals stay, as in fdk-go).
pub(crate) fn handler_view(headers: &HeaderMap) -> HeaderMap {
    let mut view = HeaderMap::new();
    for (name, value) in headers {
        if name == CONTENT_TYPE {
            view.append(name.clone(), value.clone());
        } else if let Some(stripped) = name.as_str().strip_prefix(HTTP_HEADER_PREFIX) {
            view.append(name.clone(), value.clone());
            if let Ok(plain) = HeaderName::from_bytes(stripped.as_bytes()) {
                view.append(plain, value.clone());
            }
        }
    }
    view
}

/// Encodes a handler's user headers and status for the runner. For HTTP-trigger calls every user
/// header except `Content-Type` travels as `Fn-Http-H-<name>` and the status as `Fn-Http-Status`;
/// for plain invokes headers pass as they are and the user status is dropped.
pub(crate) fn encode_response_headers(user: HeaderMap, status: StatusCode, http: bool) -> HeaderMap {
    if !http {
        return user;
    }
    let mut out = HeaderMap::new();
    let mut last_name: Option<HeaderName> = None;
    for (name, value) in user {
        // HeaderMap's owning iterator yields the name only for the first of several values.
        let name = match name {
            Some(name) => {
                last_name = Some(name.clone());
                name
            }
            None => match &last_name {
                Some(name) => name.clone(),
                None => continue,
            },
        };
        if name == CONTENT_TYPE {
            out.append(name, value);
        } else if let Ok(prefixed) = HeaderName::from_bytes(format!("{HTTP_HEADER_PREFIX}{name}").as_bytes())
        {
            out.append(prefixed, value);
        }
    }
    out.insert("fn-http-status", HeaderValue::from(status.as_u16()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn parses_rfc3339_with_offsets_and_rejects_garbage() {
        let utc = parse_rfc3339("2026-11-28T08:00:00Z").expect("utc");
        let offset = parse_rfc3339("2026-11-28T09:00:00+01:00").expect("offset");
        assert_eq!(utc, offset);
        assert_eq!(
            utc.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_secs(1_795_852_800)
        );
        assert!(parse_rfc3339("2026-11-28T08:00:00.250Z").is_some());
        assert!(parse_rfc3339("tomorrow").is_none());
        assert!(parse_rfc3339("").is_none());
    }

    #[test]
    fn canonicalises_like_go() {
        assert_eq!(canonical_header_name("fn-call-id"), "Fn-Call-Id");
        assert_eq!(canonical_header_name("CONTENT-TYPE"), "Content-Type");
        assert_eq!(canonical_header_name("x"), "X");
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, HeaderValue::from_static(v));
        }
        headers
    }

    #[test]
    fn http_trigger_view_unprefixes_and_strips_the_rest() {
        let headers = map(&[
            ("content-type", "text/plain"),
            ("fn-http-h-x-custom", "a"),
            ("fn-http-h-x-custom", "b"),
            ("fn-call-id", "01ABC"),
            ("fn-intent", "httprequest"),
            ("fn-http-method", "PUT"),
            ("fn-http-request-url", "http://h/t/app/p?q=1"),
        ]);
        let ctx = http_context(&headers).expect("http intent");
        assert_eq!(ctx.method, "PUT");
        assert_eq!(ctx.request_url, "http://h/t/app/p?q=1");
        let view = handler_view(&headers);
        assert_eq!(view.get_all("x-custom").iter().count(), 2);
        assert_eq!(view.get_all("fn-http-h-x-custom").iter().count(), 2);
        assert_eq!(view["content-type"], "text/plain");
        assert!(view.get("fn-call-id").is_none());
        assert!(http_context(&map(&[("fn-call-id", "x")])).is_none());
    }

    #[test]
    fn http_trigger_response_is_prefixed_with_status() {
        let user = map(&[("content-type", "a/b"), ("x-one", "1"), ("x-one", "2")]);
        let out = encode_response_headers(user.clone(), StatusCode::ACCEPTED, true);
        assert_eq!(out["content-type"], "a/b");
        assert_eq!(out.get_all("fn-http-h-x-one").iter().count(), 2);
        assert!(out.get("x-one").is_none());
        assert_eq!(out["fn-http-status"], "202");
        let plain = encode_response_headers(user, StatusCode::ACCEPTED, false);
        assert_eq!(plain.get_all("x-one").iter().count(), 2);
        assert!(plain.get("fn-http-status").is_none());
    }
}
