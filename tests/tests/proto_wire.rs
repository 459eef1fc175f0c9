//! `runner.proto` is wire-identical to Fn's: every message, field name, number and type is checked
//! against the table in engage-protocol.md §1.2/§1.3 (written out below, not read from the .proto), and
//! a few messages are pinned to hand-derived protobuf bytes, so a drift in the schema or codegen fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use ferrofn_proto::{
    CallFinished, CallResultStart, ClientMsg, DataFrame, FILE_DESCRIPTOR_SET, HttpHeader, HttpRespMeta,
    RunnerMsg, TryCall, call_result_start, client_msg, runner_msg,
};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// How a field is declared in the .proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Bytes,
    Bool,
    I32,
    I64,
    U64,
    /// `map<string, string>`
    MapStrStr,
    /// A message field (type name without the leading dot).
    Msg(&'static str),
    /// `repeated` message field.
    RepeatedMsg(&'static str),
    /// An enum field.
    Enum(&'static str),
}

/// (name, number, type, oneof it belongs to)
type Field = (&'static str, i32, Ty, Option<&'static str>);

/// The expected schema, message by message (nested messages by their dotted path).
fn expected() -> BTreeMap<&'static str, Vec<Field>> {
    use Ty::*;
    BTreeMap::from([
        (
            "ClientMsg",
            vec![
                ("try", 1, Msg("TryCall"), Some("body")),
                ("data", 2, Msg("DataFrame"), Some("body")),
            ],
        ),
        (
            "TryCall",
            vec![
                ("models_call_json", 1, Str, None),
                ("slot_hash_id", 2, Str, None),
                ("extensions", 3, MapStrStr, None),
            ],
        ),
        (
            "DataFrame",
            vec![("data", 1, Bytes, None), ("eof", 2, Bool, None)],
        ),
        (
            "RunnerMsg",
            vec![
                ("result_start", 1, Msg("CallResultStart"), Some("body")),
                ("data", 2, Msg("DataFrame"), Some("body")),
                ("finished", 3, Msg("CallFinished"), Some("body")),
            ],
        ),
        (
            "CallResultStart",
            vec![("http", 100, Msg("HttpRespMeta"), Some("meta"))],
        ),
        (
            "HttpRespMeta",
            vec![
                ("status_code", 1, I32, None),
                ("headers", 2, RepeatedMsg("HttpHeader"), None),
            ],
        ),
        ("HttpHeader", vec![("key", 1, Str, None), ("value", 2, Str, None)]),
        (
            "CallFinished",
            vec![
                ("success", 1, Bool, None),
                ("details", 2, Str, None),
                ("errorCode", 3, I32, None),
                ("errorStr", 4, Str, None),
                ("createdAt", 5, Str, None),
                ("startedAt", 6, Str, None),
                ("completedAt", 7, Str, None),
                ("schedulerDuration", 8, I64, None),
                ("executionDuration", 9, I64, None),
                ("errorUser", 10, Bool, None),
                ("image", 11, Str, None),
                ("imagePullWaitDuration", 12, I64, None),
                ("ctrPrepDuration", 13, I64, None),
                ("ctrCreateDuration", 14, I64, None),
                ("initStartTime", 15, I64, None),
            ],
        ),
        (
            "RunnerStatus",
            vec![
                ("active", 2, I32, None),
                ("failed", 3, Bool, None),
                ("id", 4, Str, None),
                ("details", 5, Str, None),
                ("errorCode", 6, I32, None),
                ("errorStr", 7, Str, None),
                ("createdAt", 8, Str, None),
                ("startedAt", 9, Str, None),
                ("completedAt", 10, Str, None),
                ("cached", 11, Bool, None),
                ("requestsReceived", 12, U64, None),
                ("requestsHandled", 13, U64, None),
                ("kdumpsOnDisk", 14, U64, None),
                ("schedulerDuration", 15, I64, None),
                ("executionDuration", 16, I64, None),
                ("isNetworkDisabled", 17, Bool, None),
                ("customStatus", 18, MapStrStr, None),
                ("imagePullWaitDuration", 19, I64, None),
                ("ctrPrepDuration", 20, I64, None),
                ("ctrCreateDuration", 21, I64, None),
                ("initStartTime", 22, I64, None),
            ],
        ),
        ("ConfigMsg", vec![("config", 1, MapStrStr, None)]),
        ("ConfigStatus", vec![]),
        (
            "LogRequestMsg",
            vec![
                ("start", 1, Msg("LogRequestMsg.Start"), Some("body")),
                ("ack", 2, Msg("LogRequestMsg.Ack"), Some("body")),
                ("ready", 3, Msg("LogRequestMsg.Ready"), Some("body")),
            ],
        ),
        ("LogRequestMsg.Start", vec![("config", 1, MapStrStr, None)]),
        ("LogRequestMsg.Ack", vec![]),
        ("LogRequestMsg.Ready", vec![]),
        (
            "LogResponseMsg",
            vec![("data", 1, RepeatedMsg("LogResponseMsg.Container"), None)],
        ),
        (
            "LogResponseMsg.Container",
            vec![
                ("applicationId", 1, Str, None),
                ("functionId", 2, Str, None),
                ("containerId", 3, Str, None),
                ("data", 4, RepeatedMsg("LogResponseMsg.Container.Request"), None),
            ],
        ),
        (
            "LogResponseMsg.Container.Request",
            vec![
                ("requestId", 1, Str, None),
                (
                    "data",
                    2,
                    RepeatedMsg("LogResponseMsg.Container.Request.Line"),
                    None,
                ),
            ],
        ),
        (
            "LogResponseMsg.Container.Request.Line",
            vec![
                ("timestamp", 1, I64, None),
                (
                    "source",
                    2,
                    Enum("LogResponseMsg.Container.Request.Line.Source"),
                    None,
                ),
                ("data", 3, Bytes, None),
            ],
        ),
    ])
}

fn runner_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes");
    let names: Vec<_> = set.file.iter().map(|f| f.name().to_owned()).collect();
    set.file
        .into_iter()
        .find(|f| f.name() == "runner.proto")
        .unwrap_or_else(|| panic!("runner.proto not in the descriptor set: {names:?}"))
}

/// Every message of the file (map entries excluded), by dotted path.
fn collect_messages<'a>(
    prefix: &str,
    msgs: &'a [DescriptorProto],
    out: &mut BTreeMap<String, &'a DescriptorProto>,
) {
    for m in msgs {
        if m.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        let path = if prefix.is_empty() {
            m.name().to_owned()
        } else {
            format!("{prefix}.{}", m.name())
        };
        collect_messages(&path, &m.nested_type, out);
        out.insert(path, m);
    }
}

fn check_map_entry(msg: &DescriptorProto, msg_path: &str, type_name: &str) {
    let entry_name = type_name.rsplit('.').next().unwrap();
    let entry = msg
        .nested_type
        .iter()
        .find(|n| n.name() == entry_name)
        .unwrap_or_else(|| panic!("{msg_path}: map entry {entry_name} missing"));
    assert!(
        entry.options.as_ref().is_some_and(|o| o.map_entry()),
        "{msg_path}.{entry_name} is a map entry"
    );
    let kv: Vec<_> = entry
        .field
        .iter()
        .map(|f| (f.name(), f.number(), f.r#type()))
        .collect();
    assert_eq!(
        kv,
        [("key", 1, Type::String), ("value", 2, Type::String)],
        "{msg_path}.{entry_name}"
    );
}

#[test]
fn every_message_and_field_matches_the_spec() {
    let file = runner_file();
    assert!(
        file.package.as_deref().unwrap_or("").is_empty(),
        "runner.proto must have no package"
    );
    assert_eq!(file.syntax(), "proto3");
    let mut deps = file.dependency.clone();
    deps.sort();
    assert_eq!(
        deps,
        ["google/protobuf/empty.proto", "google/protobuf/struct.proto"]
    );

    let mut messages = BTreeMap::new();
    collect_messages("", &file.message_type, &mut messages);
    let want = expected();
    assert_eq!(
        messages.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        want.keys().copied().collect::<BTreeSet<_>>(),
        "set of messages"
    );

    for (path, fields) in &want {
        let msg = messages[*path];
        let got_names: Vec<_> = msg.field.iter().map(|f| f.name()).collect();
        let want_names: Vec<_> = fields.iter().map(|f| f.0).collect();
        assert_eq!(got_names, want_names, "{path}: field names and order");
        for (&(name, number, ty, oneof), f) in fields.iter().zip(&msg.field) {
            let at = format!("{path}.{name}");
            assert_eq!(f.number(), number, "{at}: number");
            assert!(!f.proto3_optional(), "{at}: not `optional`");
            let oneof_name = f.oneof_index.map(|i| msg.oneof_decl[i as usize].name());
            assert_eq!(oneof_name, oneof, "{at}: oneof");
            let (want_type, want_label, want_type_name) = match ty {
                Ty::Str => (Type::String, Label::Optional, None),
                Ty::Bytes => (Type::Bytes, Label::Optional, None),
                Ty::Bool => (Type::Bool, Label::Optional, None),
                Ty::I32 => (Type::Int32, Label::Optional, None),
                Ty::I64 => (Type::Int64, Label::Optional, None),
                Ty::U64 => (Type::Uint64, Label::Optional, None),
                Ty::Msg(t) => (Type::Message, Label::Optional, Some(format!(".{t}"))),
                Ty::RepeatedMsg(t) => (Type::Message, Label::Repeated, Some(format!(".{t}"))),
                Ty::Enum(t) => (Type::Enum, Label::Optional, Some(format!(".{t}"))),
                Ty::MapStrStr => {
                    assert_eq!(
                        (f.r#type(), f.label()),
                        (Type::Message, Label::Repeated),
                        "{at}: map"
                    );
                    check_map_entry(msg, path, f.type_name());
                    continue;
                }
            };
            assert_eq!((f.r#type(), f.label()), (want_type, want_label), "{at}: type");
            assert_eq!(f.type_name.clone(), want_type_name, "{at}: type name");
        }
    }

    // The one enum: LogResponseMsg.Container.Request.Line.Source { STDOUT = 0; STDERR = 1; }
    let line = messages["LogResponseMsg.Container.Request.Line"];
    assert_eq!(line.enum_type.len(), 1);
    let source = &line.enum_type[0];
    assert_eq!(source.name(), "Source");
    let values: Vec<_> = source.value.iter().map(|v| (v.name(), v.number())).collect();
    assert_eq!(values, [("STDOUT", 0), ("STDERR", 1)]);
    assert!(file.enum_type.is_empty(), "no top-level enums");
}

#[test]
fn service_is_runner_protocol_with_five_rpcs() {
    let file = runner_file();
    assert_eq!(file.service.len(), 1);
    let svc = &file.service[0];
    assert_eq!(svc.name(), "RunnerProtocol");
    assert_eq!(ferrofn_proto::SERVICE_NAME, "RunnerProtocol");
    let got: Vec<_> = svc
        .method
        .iter()
        .map(|m| {
            (
                m.name(),
                m.input_type(),
                m.output_type(),
                m.client_streaming(),
                m.server_streaming(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Engage", ".ClientMsg", ".RunnerMsg", true, true),
            ("Status", ".google.protobuf.Empty", ".RunnerStatus", false, false),
            ("ConfigureRunner", ".ConfigMsg", ".ConfigStatus", false, false),
            ("StreamLogs", ".LogRequestMsg", ".LogResponseMsg", true, true),
            (
                "Status2",
                ".google.protobuf.Struct",
                ".RunnerStatus",
                false,
                false
            ),
        ]
    );
    let status = &svc.method[1];
    assert!(
        status.options.as_ref().is_some_and(|o| o.deprecated()),
        "Status is marked deprecated"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unhex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

fn ascii_hex(s: &str) -> String {
    hex(s.as_bytes())
}

#[test]
fn golden_try_call() {
    let msg = ClientMsg {
        body: Some(client_msg::Body::Try(TryCall {
            models_call_json: "{}".into(),
            slot_hash_id: "ab".into(),
            extensions: HashMap::from([("k".into(), "v".into())]),
        })),
    };
    // TryCall:
    //   0a 02 7b 7d          field 1 (models_call_json), wire type 2 (len): "{}"
    //   12 02 61 62          field 2 (slot_hash_id), len 2: "ab"
    //   1a 06                field 3 (extensions), one map entry of 6 bytes:
    //     0a 01 6b           entry.key   (field 1) = "k"
    //     12 01 76           entry.value (field 2) = "v"
    // = 16 bytes; ClientMsg wraps it as field 1 (try), len 0x10.
    let want = unhex("0a 10  0a 02 7b 7d  12 02 61 62  1a 06 0a 01 6b 12 01 76");
    assert_eq!(hex(&msg.encode_to_vec()), hex(&want));
    assert_eq!(ClientMsg::decode(want.as_slice()).unwrap(), msg);
}

#[test]
fn golden_data_frames() {
    let msg = ClientMsg {
        body: Some(client_msg::Body::Data(DataFrame {
            data: Bytes::from_static(b"hi"),
            eof: true,
        })),
    };
    // DataFrame: 0a 02 68 69 (field 1 bytes "hi"), 10 01 (field 2 varint eof=true) = 6 bytes;
    // ClientMsg field 2 (data), len 6.
    let want = unhex("12 06  0a 02 68 69  10 01");
    assert_eq!(hex(&msg.encode_to_vec()), hex(&want));
    assert_eq!(ClientMsg::decode(want.as_slice()).unwrap(), msg);

    // The empty closing frame: proto3 drops the empty data, only eof=true remains.
    let eof_only = ClientMsg {
        body: Some(client_msg::Body::Data(DataFrame {
            data: Bytes::new(),
            eof: true,
        })),
    };
    assert_eq!(eof_only.encode_to_vec(), unhex("12 02 10 01"));

    // A runner's data frame: eof=false is not written.
    let out = RunnerMsg {
        body: Some(runner_msg::Body::Data(DataFrame {
            data: Bytes::from_static(b"ok"),
            eof: false,
        })),
    };
    let want = unhex("12 04 0a 02 6f 6b");
    assert_eq!(out.encode_to_vec(), want);
    assert_eq!(RunnerMsg::decode(want.as_slice()).unwrap(), out);
}

#[test]
fn golden_result_start() {
    let msg = RunnerMsg {
        body: Some(runner_msg::Body::ResultStart(CallResultStart {
            meta: Some(call_result_start::Meta::Http(HttpRespMeta {
                status_code: 200,
                headers: vec![HttpHeader {
                    key: "Content-Type".into(),
                    value: "text/plain".into(),
                }],
            })),
        })),
    };
    // HttpHeader: 0a 0c "Content-Type" 12 0a "text/plain"                  = 26 (0x1a) bytes
    // HttpRespMeta: 08 c8 01 (field 1 varint 200 = 0xc8 0x01), 12 1a <hdr>  = 31 (0x1f) bytes
    // CallResultStart: field 100 wire type 2 -> key 100<<3|2 = 802 = varint a2 06, len 1f  = 34 (0x22)
    // RunnerMsg: field 1 (result_start), len 0x22.
    let want = unhex(&format!(
        "0a 22  a2 06 1f  08 c8 01  12 1a  0a 0c {}  12 0a {}",
        ascii_hex("Content-Type"),
        ascii_hex("text/plain")
    ));
    assert_eq!(hex(&msg.encode_to_vec()), hex(&want));
    assert_eq!(RunnerMsg::decode(want.as_slice()).unwrap(), msg);
}

#[test]
fn golden_call_finished() {
    let finished = CallFinished {
        success: false,
        details: "id1".into(),
        error_code: 502,
        error_str: "function failed".into(),
        created_at: "2026-11-28T06:35:10.245Z".into(),
        scheduler_duration: 1_000_000,
        execution_duration: 5,
        error_user: true,
        image: "img".into(),
        ..Default::default()
    };
    let msg = RunnerMsg {
        body: Some(runner_msg::Body::Finished(finished)),
    };
    // success=false, startedAt/completedAt "" and the zero durations are proto3 defaults: not written.
    //   12 03 "id1"                       field 2 details
    //   18 f6 03                          field 3 errorCode varint 502 (0x1f6 -> f6 03)
    //   22 0f "function failed"           field 4 errorStr
    //   2a 18 "2026-11-28T06:35:10.245Z"  field 5 createdAt (24 bytes)
    //   40 c0 84 3d                       field 8 schedulerDuration varint 1_000_000
    //   48 05                             field 9 executionDuration 5
    //   50 01                             field 10 errorUser true
    //   5a 03 "img"                       field 11 image
    // = 5 + 3 + 17 + 26 + 4 + 2 + 2 + 5 = 64 (0x40) bytes; RunnerMsg field 3 (finished), len 0x40.
    let want = unhex(&format!(
        "1a 40  12 03 {}  18 f6 03  22 0f {}  2a 18 {}  40 c0 84 3d  48 05  50 01  5a 03 {}",
        ascii_hex("id1"),
        ascii_hex("function failed"),
        ascii_hex("2026-11-28T06:35:10.245Z"),
        ascii_hex("img")
    ));
    assert_eq!(hex(&msg.encode_to_vec()), hex(&want));
    assert_eq!(RunnerMsg::decode(want.as_slice()).unwrap(), msg);
}
