//! Criterion micro-benchmarks of the per-call hot paths outside the network: the call model's JSON
//! (encoded on the LB, decoded on the runner, once per call), splitting a body into Engage data
//! frames, and the placers' runner order for an 8-runner pool. `cargo bench -p ferrofn-bench`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferrofn_common::{call::CallModel, frames};
use ferrofn_lb::placer::{Candidate, bounded, ch, naive};

/// The `models_call_json` sample of engage-protocol.md §2.2 (real Fn output), with its elided ids
/// filled in.
const SAMPLE_CALL: &str = r#"{"id":"01M8GDTSH50000000000000001","status":"running","image":"fnproject/hello:0.0.1","type":"sync","url":"http://127.0.0.1:8080/invoke/01FNID00000000000000000000","method":"POST","timeout":30,"idle_timeout":30,"memory":128,"cpus":"250m","config":{"A":"1","B":"2","FN_APP_ID":"01APPID0000000000000000000","FN_FN_ID":"01FNID00000000000000000000","FN_MEMORY":"128","FN_TYPE":"sync"},"headers":{"Content-Type":["application/json"],"Fn-Invoke-Type":["sync"]},"completed_at":"0001-01-01T00:00:00.000Z","created_at":"2026-11-28T06:35:10.245Z","started_at":"0001-01-01T00:00:00.000Z","app_id":"01APPID0000000000000000000","app_name":"myapp","trigger_id":"","fn_id":"01FNID00000000000000000000"}"#;

fn call_json(c: &mut Criterion) {
    let model = CallModel::from_json(SAMPLE_CALL).expect("the §2.2 sample decodes");
    // The encoder must reproduce Fn's bytes, or the benchmark measures the wrong thing.
    assert_eq!(
        model.to_json(),
        SAMPLE_CALL,
        "CallModel no longer round-trips the §2.2 sample"
    );
    let mut g = c.benchmark_group("call_json");
    g.throughput(Throughput::Bytes(SAMPLE_CALL.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| CallModel::from_json(black_box(SAMPLE_CALL)).expect("decodes"))
    });
    g.bench_function("encode", |b| b.iter(|| black_box(&model).to_json()));
    g.finish();
}

fn frame_chunks(c: &mut Criterion) {
    const SIZE: usize = 5 << 20;
    let body = Bytes::from(vec![b'x'; SIZE]);
    let mut g = c.benchmark_group("frames");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("chunks_5MiB", |b| {
        b.iter(|| {
            // Consume every frame as a sender would: length and ownership of each slice.
            let mut total = 0;
            for frame in frames::chunks(black_box(body.clone())) {
                total += black_box(frame).len();
            }
            assert_eq!(total, SIZE);
        })
    });
    g.finish();
}

fn placers(c: &mut Criterion) {
    const RUNNERS: usize = 8;
    let fn_id = "01FNID00000000000000000000";
    let even = vec![
        Candidate {
            eligible: true,
            load: 3,
            key: None
        };
        RUNNERS
    ];
    let mut skewed = even.clone();
    skewed[ch::home(fn_id, RUNNERS)].load = 40;
    let mut g = c.benchmark_group("placer_order_8_runners");
    g.bench_function("naive", |b| {
        let mut nanos = 0_u64;
        b.iter(|| {
            nanos = nanos.wrapping_add(7919);
            naive::naive_order(black_box(nanos), RUNNERS)
        })
    });
    g.bench_function("ch", |b| b.iter(|| ch::ch_order(black_box(fn_id), RUNNERS)));
    for (name, pool) in [("even", &even), ("home_overloaded", &skewed)] {
        g.bench_with_input(BenchmarkId::new("ch-bounded", name), pool, |b, pool| {
            b.iter(|| bounded::bounded_order(bounded::DEFAULT_LOAD_FACTOR, black_box(fn_id), black_box(pool)))
        });
    }
    g.finish();
}

criterion_group!(benches, call_json, frame_chunks, placers);
criterion_main!(benches);
