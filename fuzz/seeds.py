#!/usr/bin/env python3
"""Writes the seed corpora under corpus/<target>/ from inputs of the unit tests (named beside each).
Run from fuzz/: python3 seeds.py. The fuzzers add what they find to the same folders when run."""
import os
import struct

def put(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def short(b):
    b = b if isinstance(b, bytes) else b.encode()
    assert len(b) < 256
    return bytes([len(b)]) + b

# call_json: common/src/call.rs tests and the LB's models_call_json (lb/src/call.rs).
put("call_json", "full", '{"id":"01J0000000000000000000000A","status":"queued","image":"img:1","type":"sync",'
    '"url":"http://lb/invoke/F","method":"POST","timeout":30,"idle_timeout":30,"tmpfs_size":0,"memory":128,'
    '"cpus":"250m","config":{"FN_APP_ID":"A","K":"V"},"annotations":{"a":{"b":[1,2.5,"c"]}},'
    '"headers":{"Content-Type":["text/plain"],"X":["1","2"]},"syslog_url":"tcp://h:1",'
    '"completed_at":"0001-01-01T00:00:00.000Z","created_at":"2024-05-01T10:11:12.345Z",'
    '"started_at":"0001-01-01T00:00:00.000Z","execution_duration":1500000,"stats":[{"x":1}],'
    '"app_id":"A","app_name":"app","trigger_id":"","fn_id":"F"}')
put("call_json", "nulls", '{"id":null,"config":null,"headers":null,"stats":null,"timeout":null,"created_at":null}')
put("call_json", "cpus_number", '{"cpus":250}')
put("call_json", "cpus_bad", '{"cpus":"lots"}')
put("call_json", "cpus_float", '{"cpus":"0.25"}')
put("call_json", "memory_bad", '{"memory":"big"}')
put("call_json", "array", '[1,2]')
put("call_json", "cpus_text", '1.5')
put("call_json", "detached", '{"type":"detached","created_at":"2024-05-01T10:11:12Z"}')

# frames: [limit][ncuts][cuts...][body] (common/src/frames.rs tests: 1 byte, exact, one over).
put("frames", "one_byte", b"\x00\x00x")
put("frames", "exact", b"\x04\x00abcd")
put("frames", "one_over_cut", b"\x04\x02\x00\x03\x00\x09abcde")
put("frames", "many", b"\x03\x03\x00\x01\x00\x07\x00\x11" + b"hello world, frames!")

# fdk_response: [max_header/16][max_body][raw answer] (runner/src/fdk.rs tests: statuses, caps, early answer).
put("fdk_response", "ok_len", b"\x00\x00HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nearly")
put("fdk_response", "ok_chunked", b"\x00\x08HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nFn-Http-Status: 201\r\n"
    b"Connection: keep-alive\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
put("fdk_response", "502", b"\x00\x00HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
put("fdk_response", "504", b"\x00\x00HTTP/1.1 504 Gateway Timeout\r\n\r\n")
put("fdk_response", "418", b"\x00\x00HTTP/1.1 418 I'm a teapot\r\n\r\n")
put("fdk_response", "header_cap", b"\x02\x00HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 60 + b"\r\n\r\n")
put("fdk_response", "continue", b"\x00\x00HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
put("fdk_response", "eof_only", b"\x00\x00HTTP/1.1 200 OK\r\n\r\nbody until close")

# config: [which][nvars]([name idx][short value])*[TOML] (common/src/config.rs, lb/ and runner/ config tests).
put("config", "lb_file", b"\x02\x00" + b'port = 1000\nplacer = "ch"\nrunner_addresses = ["r1:9190"]\nmax_request_size = 5\n[tls]\ncert = "file.pem"\n')
put("config", "lb_env", b"\x00\x03\x00" + short("8080") + b"\x02" + short("r1:9190, r2:9190") + b"\x03" + short("consistent_hash"))
put("config", "lb_bad_key", b"\x02\x00" + b'port = 1\nplacr = "ch"\n')
put("config", "runner_file", b"\x03\x01\x05" + short("true") + b'grpc_port = 9190\nplaintext = true\n[tls]\ncertt = "x"\n')
put("config", "runner_env", b"\x01\x02\x00" + short("9191") + b"\x20" + short("4000"))

# api_bodies: [kind][split u16][base][patch] (lb/src/registry/models.rs cli_create_bodies_decode and PUT tests).
app = b'{"name":"cliapp","config":{"K":"V"},"annotations":{"k":"v"},"syslog_url":"tcp://h:1","created_at":"0001-01-01T00:00:00.000Z","updated_at":"0001-01-01T00:00:00.000Z"}'
app_patch = b'{"config":{"K":"","L":"W"},"annotations":{"k":null,"n":1},"syslog_url":""}'
fn = b'{"app_id":"A","name":"hello","image":"img:1","memory":256,"timeout":60,"idle_timeout":10,"config":{},"annotations":{},"created_at":"0001-01-01T00:00:00.000Z","updated_at":"0001-01-01T00:00:00.000Z"}'
fn_patch = b'{"image":"img:2","memory":512,"annotations":{"fnproject.io/fn/invokeEndpoint":"x","a/b":"c"}}'
tr = b'{"app_id":"A","fn_id":"F","name":"hello-trigger","type":"http","source":"/hello","created_at":"0001-01-01T00:00:00.000Z","updated_at":"0001-01-01T00:00:00.000Z"}'
tr_patch = b'{"source":"/hi","annotations":{"k":"v"}}'
for i, (base, patch) in enumerate([(app, app_patch), (fn, fn_patch), (tr, tr_patch)]):
    put("api_bodies", f"kind{i}", bytes([i]) + struct.pack(">H", len(base)) + base + patch)

# api_paths: [nreq-1]([method][prefix][short suffix][len u16][body])* (lb http tests; fn CLI calls).
GET, POST, PUT, DELETE = 0, 1, 2, 3
APPS, FNS, TRIGGERS, APP_ID, FN_ID, TR_ID, T, INVOKE, ROOT = range(9)
def req(method, prefix, suffix, body=b""):
    return bytes([method, prefix]) + short(suffix) + struct.pack(">H", len(body)) + body
put("api_paths", "create_app", b"\x01" + req(POST, APPS, "", b'{"name":"myapp"}') + req(GET, APPS, "?per_page=1&name=myapp"))
put("api_paths", "create_fn", b"\x01" + req(POST, FNS, "", b'{"app_id":"x","name":"f","image":"img:1"}') + req(GET, FNS, "?app_id=x&cursor=abc"))
put("api_paths", "trigger", b"\x01" + req(GET, T, "myapp/hello/world?x=1") + req(POST, INVOKE, "01J0000000000000000000000F", b"body"))
put("api_paths", "put_delete", b"\x02" + req(PUT, APP_ID, "nope", b'{"config":{"a":"b"}}') + req(DELETE, FN_ID, "nope") + req(GET, ROOT, "health/ready"))
put("api_paths", "triggers_list", b"\x00" + req(GET, TRIGGERS, "?app_id=a&fn_id=f&per_page=30"))

# engage: [flags][nmsgs]([op] ...)* [ncuts][cuts] (runner/src/engage.rs; the LB's Engage client).
TRY_T, TRY_RAW, DATA, DATA_EOF = 0, 1, 2, 3
def try_t(image, memory=0, timeout=0):
    return bytes([TRY_T, image, memory, timeout])
def data(b, eof=False):
    return bytes([DATA_EOF if eof else DATA]) + short(b)
put("engage", "echo", b"\x00\x03" + try_t(0) + data("hello ") + data("world", True) + b"\x00")
put("engage", "echo_ack_cut", b"\x01\x02" + try_t(0) + data("x" * 200, True) + b"\x02\x00\x07\x00\x30")
put("engage", "fail", b"\x00\x02" + try_t(2) + data("", True) + b"\x00")
put("engage", "missing", b"\x00\x02" + try_t(4, 1) + data("a", True) + b"\x00")
put("engage", "status_image", b"\x00\x02" + try_t(5) + data("a", True) + b"\x00")
put("engage", "data_first", b"\x00\x02" + data("a") + try_t(0) + b"\x00")
put("engage", "raw_bad_cpus", b"\x00\x02" + bytes([TRY_RAW]) + short('{"id":"c","image":"echo","cpus":250}') + data("", True) + b"\x00")
put("engage", "no_eof", b"\x00\x02" + try_t(0) + data("partial") + b"\x00")
put("engage", "two_tries", b"\x00\x03" + try_t(0) + try_t(0) + data("a", True) + b"\x00")
