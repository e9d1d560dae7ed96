//! One source of truth for the wire protocol: `protocol.rs` defines the frame types, error codes
//! and close codes (`CLIENT_FRAME_TYPES`, `SERVER_FRAME_TYPES`, `ErrorCode::ALL`, `close::ALL`);
//! `docs/protocol.md` must document each. Adding a code to `protocol.rs` without documenting it
//! fails here.

use std::path::PathBuf;

use aviary_data_plane::protocol::{CLIENT_FRAME_TYPES, ErrorCode, SERVER_FRAME_TYPES, close};

fn read(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

#[test]
fn docs_protocol_md_documents_every_frame_type_error_code_and_close_code() {
    let doc = read("docs/protocol.md");
    let mut missing = Vec::new();
    for kind in CLIENT_FRAME_TYPES.iter().chain(SERVER_FRAME_TYPES) {
        let documented = doc.contains(&format!(r#""type":"{kind}""#))
            || doc.contains(&format!(r#""type": "{kind}""#))
            || doc.contains(&format!("`{kind}`"));
        if !documented {
            missing.push(format!("frame type {kind}"));
        }
    }
    for code in ErrorCode::ALL {
        // A row of the error-code table.
        if !doc.contains(&format!("| `{}` |", code.as_str())) {
            missing.push(format!("error code {}", code.as_str()));
        }
    }
    for code in close::ALL {
        if !doc.contains(&format!("| {code} |")) {
            missing.push(format!("close code {code}"));
        }
    }
    assert!(missing.is_empty(), "docs/protocol.md does not document: {missing:?}");
}

#[test]
fn docs_pusher_md_documents_every_pusher_code() {
    let doc = read("docs/pusher.md");
    let missing: Vec<u16> = aviary_data_plane::pusher::frames::code::ALL
        .iter()
        .copied()
        .filter(|code| !doc.contains(&format!("| {code} |")))
        .collect();
    assert!(missing.is_empty(), "docs/pusher.md does not document Pusher codes {missing:?}");
}

/// The JS SDK's tables (`sdk/js/src/errors.ts`) know every error code and close code the server
/// can send: a code added to `protocol.rs` without the SDK learning it fails here.
#[test]
fn the_js_sdk_knows_every_error_code_and_close_code() {
    let errors = read("sdk/js/src/errors.ts");
    let section = |start: &str, end: &str| -> String {
        let from = errors.find(start).unwrap_or_else(|| panic!("errors.ts has {start:?}"));
        let rest = &errors[from..];
        rest[..rest.find(end).unwrap_or(rest.len())].to_owned()
    };
    let server_codes = section("const SERVER_CODES", "]);");
    let error_type = section("export type ServerErrorCode", ";");
    let close_codes = section("const CLOSE_CODES", "};");
    let mut missing = Vec::new();
    for code in ErrorCode::ALL {
        let quoted = format!("'{}'", code.as_str());
        if !server_codes.contains(&quoted) || !error_type.contains(&quoted) {
            missing.push(format!("error code {}", code.as_str()));
        }
    }
    for code in close::ALL {
        if !close_codes.contains(&format!("{code}: '")) {
            missing.push(format!("close code {code}"));
        }
    }
    assert!(missing.is_empty(), "sdk/js/src/errors.ts does not know: {missing:?}");
}
