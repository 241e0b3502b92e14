//! Hostile bytes at the decoders every edge uses (a short property-based
//! run in the test suite; `fuzz/README.md` says how to run them for hours
//! under libFuzzer): commands in JSON and MessagePack, any MessagePack
//! value shown as JSON. Garbage is an error, never a panic, a hang, a stack
//! overflow or an allocation sized by a length the input claims.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tessera_entities::{Format, codec};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Command {
    Restock { qty: u32 },
    Purchase { qty: u32, note: Option<String> },
    Tag { tags: Vec<String>, weights: std::collections::BTreeMap<String, f64> },
    Get,
}

fn formats() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Json), Just(Format::MsgPack)]
}

fn valid() -> impl Strategy<Value = (String, Vec<u8>, Format)> {
    (0u32..1000, any::<Option<String>>(), formats()).prop_flat_map(|(qty, note, f)| {
        let cases = vec![
            ("restock".to_owned(), codec::encode(&serde_json::json!({"qty": qty}), f).unwrap()),
            ("purchase".to_owned(), codec::encode(&serde_json::json!({"qty": qty, "note": note}), f).unwrap()),
            ("tag".to_owned(), codec::encode(&serde_json::json!({"tags": ["a"], "weights": {"a": 1.5}}), f).unwrap()),
            ("get".to_owned(), Vec::new()),
        ];
        (prop::sample::select(cases), Just(f)).prop_map(|((n, b), f)| (n, b, f))
    })
}

fn decode_all(name: &str, body: &[u8], f: Format) {
    let _ = codec::decode_command::<Command>(name, body, f);
    let _ = codec::decode::<serde_json::Value>(body, f);
    let _ = codec::msgpack_to_json(body);
    let _ = codec::transcode_msgpack(body, Format::Json);
}

/// Cases per property: 3000 in the suite, `TESSERA_FUZZ_CASES` for long runs (docs/fuzzing.md).
fn fuzz_cases() -> u32 {
    std::env::var("TESSERA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_are_an_error_or_a_value(name in "[a-z_]{0,10}", body in prop::collection::vec(any::<u8>(), 0..256), f in formats()) {
        decode_all(&name, &body, f);
    }

    #[test]
    fn valid_bodies_with_bytes_flipped_cut_or_inserted_never_panic(
        (name, mut body, f) in valid(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        for (at, byte, kind) in edits {
            if body.is_empty() { body.push(byte); continue; }
            let i = at.index(body.len());
            match kind { 0 => body[i] = byte, 1 => body.truncate(i), _ => body.insert(i, byte) }
        }
        decode_all(&name, &body, f);
    }
}

#[test]
fn length_prefixes_claiming_gigabytes_do_not_allocate_them() {
    // array32, map32, bin32, str32 and ext32 with a 4 GiB length and nothing after.
    for head in [0xdd_u8, 0xdf, 0xc6, 0xdb, 0xc9] {
        let bytes = [head, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(codec::msgpack_to_json(&bytes).is_err(), "{head:#x}");
        assert!(codec::decode_command::<Command>("tag", &bytes, Format::MsgPack).is_err(), "{head:#x}");
    }
    // A command whose vec field claims 4G elements.
    let mut bytes = vec![0x82, 0xa4];
    bytes.extend_from_slice(b"tags");
    bytes.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert!(codec::decode_command::<Command>("tag", &bytes, Format::MsgPack).is_err());
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    // Run on a thread with a small stack, as a tokio worker's (2 MiB) or less.
    let handle = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| {
            for depth in [200usize, 5_000, 100_000] {
                let msgpack = vec![0x91; depth];
                assert!(codec::msgpack_to_json(&msgpack).is_err(), "msgpack depth {depth}");
                let json = "[".repeat(depth).into_bytes();
                assert!(codec::decode::<serde_json::Value>(&json, Format::Json).is_err(), "json depth {depth}");
                assert!(codec::decode_command::<Command>("tag", &msgpack, Format::MsgPack).is_err());
            }
        })
        .unwrap();
    handle.join().expect("no stack overflow, no panic");
}
