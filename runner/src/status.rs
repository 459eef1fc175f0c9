//! Status / Status2 (engage-protocol.md §4.3): live counters always; with a status image, a status
//! call through the normal agent path (one at a time, result cached 1.5 s per payload). The runner's
//! capabilities ride in `customStatus` so a ferrofn LB knows it may ask for the accept ack.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrofn_common::call::CallModel;
use ferrofn_common::datetime::DateTime;
use ferrofn_common::error::FnError;
use ferrofn_proto::RunnerStatus;
use tokio::sync::Mutex;

use crate::agent::Agent;
use crate::engage::Counters;
use crate::fdk::{FdkBody, FdkError, FdkRequest};
use ferrofn_proto::ext::{CAPABILITIES_KEY, CAPABILITY_ACCEPT_ACK, CAPABILITY_FRAMES, VERSION_KEY};

/// How long a status result is served from the cache (Fn: idle 1 s + 500 ms).
pub const CACHE_DURATION: Duration = Duration::from_millis(1500);
/// Bound on one status call.
const STATUS_CALL_BOUND: Duration = Duration::from_secs(60);

struct Cached {
    payload: String,
    expiry: Instant,
    status: RunnerStatus,
    served: bool,
}

/// The Status RPCs' logic.
pub struct StatusChecker {
    agent: Agent,
    image: Option<String>,
    counters: Arc<Counters>,
    cache: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for StatusChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusChecker")
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

impl StatusChecker {
    /// A checker; `image` is the status image, if any.
    pub fn new(agent: Agent, image: Option<String>, counters: Arc<Counters>) -> Self {
        StatusChecker {
            agent,
            image,
            counters,
            cache: Mutex::new(None),
        }
    }

    fn live(&self, s: &mut RunnerStatus) {
        s.active = self.counters.inflight.load(Ordering::Relaxed) as i32;
        s.requests_received = self.counters.received.load(Ordering::Relaxed);
        s.requests_handled = self.counters.handled.load(Ordering::Relaxed);
        s.custom_status.insert(
            CAPABILITIES_KEY.into(),
            format!("{CAPABILITY_ACCEPT_ACK},{CAPABILITY_FRAMES}"),
        );
        s.custom_status
            .insert(VERSION_KEY.into(), env!("CARGO_PKG_VERSION").into());
    }

    /// Status with `payload` (a JSON object) as the status call's body.
    pub async fn status(&self, payload: String) -> RunnerStatus {
        let Some(image) = self.image.clone() else {
            let mut s = RunnerStatus::default();
            self.live(&mut s);
            return s;
        };
        // One status call at a time; waiters get its result. The cache is keyed by payload, so
        // Status2 never returns the answer to a different payload (a Fn quirk not kept).
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_mut()
            && c.payload == payload
            && Instant::now() < c.expiry
        {
            let mut s = c.status.clone();
            s.cached = c.served;
            c.served = true;
            self.live(&mut s);
            return s;
        }
        let agent = self.agent.clone();
        let p = payload.clone();
        // Run detached from this RPC so a caller going away does not cut the status call short.
        let run = tokio::spawn(async move { run_status_call(&agent, &image, p).await });
        let status = run.await.unwrap_or_else(|e| RunnerStatus {
            failed: true,
            error_code: 500,
            error_str: format!("status call task failed: {e}"),
            ..Default::default()
        });
        *cache = Some(Cached {
            payload,
            expiry: Instant::now() + CACHE_DURATION,
            status: status.clone(),
            served: true,
        });
        let mut s = status;
        s.cached = false;
        self.live(&mut s);
        s
    }
}

fn fdk_err(e: &FdkError) -> FnError {
    match e {
        FdkError::HeaderTooBig { .. } => FnError::header_too_big(),
        FdkError::FunctionFailed => FnError::function_failed(),
        FdkError::FunctionTimeout => FnError::call_timeout(),
        FdkError::InvalidStatus(_) => FnError::invalid_response(),
        FdkError::BodyTooBig { .. } => FnError::response_too_big(),
        _ => FnError::receive_failed(),
    }
}

/// Submits the status call: the status image, `GET /`, no config, zero resources, 5 s timeout, 1 s idle.
async fn run_status_call(agent: &Agent, image: &str, payload: String) -> RunnerStatus {
    let id = ferrofn_common::id::new_id();
    let json = serde_json::json!({
        "id": id, "image": image, "type": "sync", "url": "/", "method": "GET",
        "timeout": 5, "idle_timeout": 1,
    });
    let mut model = CallModel::from_json(&json.to_string()).expect("status call model is valid");
    model.created_at = DateTime::now();
    let created = model.created_at;
    let mut st = RunnerStatus {
        id: id.clone(),
        ..Default::default()
    };
    let mut started = DateTime::ZERO;
    let result: Result<Vec<u8>, FnError> = async {
        let call = agent.prepare(model, "")?;
        let mut slot = tokio::time::timeout(STATUS_CALL_BOUND, agent.get_slot(&call))
            .await
            .map_err(|_| FnError::server_busy())??;
        started = DateTime::now();
        if slot.launched_for_this_call() {
            let c = slot.container();
            st.image_pull_wait_duration = c.timings.image_pull_wait_ns;
            st.ctr_prep_duration = c.timings.ctr_prep_ns;
            st.ctr_create_duration = c.timings.ctr_create_ns;
            st.init_start_time = c.init_ns;
        }
        slot.container().begin_call(&id);
        let deadline = DateTime::from_offset(time::OffsetDateTime::now_utc() + time::Duration::seconds(5));
        let req = FdkRequest {
            call_id: id.clone(),
            deadline: deadline.to_string(),
            headers: vec![],
            body: FdkBody::Full(Bytes::from(payload)),
        };
        let exchange = async {
            let mut resp = slot.fdk().call(req).await?;
            let mut body = Vec::new();
            while let Some(c) = resp.next_chunk().await? {
                body.extend_from_slice(&c);
            }
            Ok::<_, FdkError>(body)
        };
        match tokio::time::timeout(Duration::from_secs(5), exchange).await {
            Ok(Ok(body)) => {
                slot.release(true);
                Ok(body)
            }
            Ok(Err(e)) => {
                let keep = !e.kills_container();
                slot.fdk().reset();
                slot.release(keep);
                Err(fdk_err(&e))
            }
            Err(_) => {
                slot.release(false);
                Err(FnError::call_timeout())
            }
        }
    }
    .await;
    let completed = DateTime::now();
    match result {
        Ok(body) => st.details = String::from_utf8_lossy(&body).into_owned(),
        Err(e) => {
            st.failed = true;
            st.error_code = i32::from(e.code());
            st.error_str = e.message().to_string();
        }
    }
    st.created_at = created.to_string();
    if !started.is_zero() {
        st.started_at = started.to_string();
        st.completed_at = completed.to_string();
        st.scheduler_duration = started.nanos_since(created);
        st.execution_duration = completed.nanos_since(started);
    }
    st
}

/// `google.protobuf.Struct` as JSON text (what Fn's jsonpb produces for Status2's payload).
pub fn struct_to_json(s: &prost_types::Struct) -> String {
    fn value(v: &prost_types::Value) -> serde_json::Value {
        use prost_types::value::Kind;
        match &v.kind {
            None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
            Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
            Some(Kind::StructValue(s)) => object(s),
            Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value).collect()),
        }
    }
    fn object(s: &prost_types::Struct) -> serde_json::Value {
        let m: serde_json::Map<String, serde_json::Value> =
            s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect();
        serde_json::Value::Object(m)
    }
    object(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::value::Kind;

    #[test]
    fn struct_json() {
        let mut s = prost_types::Struct::default();
        s.fields.insert(
            "a".into(),
            prost_types::Value {
                kind: Some(Kind::StringValue("x".into())),
            },
        );
        s.fields.insert(
            "n".into(),
            prost_types::Value {
                kind: Some(Kind::NumberValue(2.5)),
            },
        );
        let v: serde_json::Value = serde_json::from_str(&struct_to_json(&s)).unwrap();
        assert_eq!(v, serde_json::json!({"a":"x","n":2.5}));
    }
}
