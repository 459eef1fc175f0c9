//! What the runner tests send to and read from the testfn function (`tests/functions/testfn`): its
//! JSON knobs as a request body, the `a..z` pattern of its sized answers, the container id its
//! debug answer reports, and fn ids for test calls.

/// The knobs (`{"echoBody": true}`, `{"responseSize": n}`, ...) as a request body.
pub fn knobs(v: serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// `n` bytes of the repeating `a..z` pattern (what testfn answers to `responseSize`).
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The container id in testfn's `isDebug` answer ("" when absent).
pub fn docker_id(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["data"]["DockerId"].as_str().unwrap_or_default().to_string()
}

/// A fn id (26 characters) for test fn number `n`; tests of one runner tell their fns apart by it.
pub fn fn_id(n: u32) -> String {
    format!("01FNTEST{n:018}")
}
