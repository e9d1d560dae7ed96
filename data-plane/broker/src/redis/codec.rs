//! The bytes the broker keeps in Redis and sends over pub/sub: history entries and topic
//! messages (formats in the module docs of [`super`]). Each is decoded once per node.

use std::sync::Arc;

use bytes::Bytes;

use crate::{PresenceAction, PresenceMember, Publication, PublishRequest};

pub(super) enum Message {
    Publication(Publication),
    Presence(PresenceAction, PresenceMember),
}

pub(super) fn decode_message(payload: &[u8]) -> Option<Message> {
    let (&kind, rest) = payload.split_first()?;
    let action = match kind {
        b'p' => {
            let (epoch_len, rest) = split_field(rest)?;
            let epoch_len: usize = parse(epoch_len)?;
            let epoch = std::str::from_utf8(rest.get(..epoch_len)?).ok()?;
            let entry = Bytes::copy_from_slice(rest.get(epoch_len..)?);
            return decode_entry(entry, epoch.into()).map(Message::Publication);
        }
        b'j' => PresenceAction::Join,
        b'u' => PresenceAction::Update,
        b'l' => PresenceAction::Leave,
        _ => return None,
    };
    serde_json::from_slice(rest).ok().map(|member| Message::Presence(action, member))
}

/// The `<meta>` field of a history entry and the strings it measures, concatenated.
pub(super) fn entry_meta(request: &PublishRequest) -> (String, Vec<u8>) {
    let parts = [request.client_id.as_deref(), request.event.as_deref(), request.exclude.as_deref()];
    let mut strings = Vec::new();
    for part in parts.iter().flatten() {
        strings.extend_from_slice(part.as_bytes());
    }
    let meta = match parts {
        [None, None, None] => "-".to_owned(),
        [Some(client), None, None] => client.len().to_string(),
        _ => parts
            .iter()
            .map(|p| p.map_or_else(|| "-".to_owned(), |s| s.len().to_string()))
            .collect::<Vec<_>>()
            .join(","),
    };
    (meta, strings)
}

/// Decodes `<offset>|<ts>|<meta>|<client id><event><exclude><data>`; `data` shares `entry`.
pub(super) fn decode_entry(entry: Bytes, epoch: Arc<str>) -> Option<Publication> {
    let (offset, rest) = split_field(&entry)?;
    let (ts, rest) = split_field(rest)?;
    let (meta, mut rest) = split_field(rest)?;
    let mut strings: [Option<Arc<str>>; 3] = [None, None, None];
    for (slot, length) in strings.iter_mut().zip(meta.split(|&b| b == b',')) {
        if length == b"-" {
            continue;
        }
        let len: usize = parse(length)?;
        *slot = Some(Arc::<str>::from(std::str::from_utf8(rest.get(..len)?).ok()?));
        rest = rest.get(len..)?;
    }
    if meta.split(|&b| b == b',').count() > 3 {
        return None;
    }
    let data_start = entry.len() - rest.len();
    let [client_id, event, exclude] = strings;
    Some(Publication {
        offset: parse(offset)?,
        epoch,
        data: entry.slice(data_start..),
        client_id,
        ts: parse(ts)?,
        event,
        exclude,
    })
}

fn split_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b'|')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn parse<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn fuzz_config() -> Config {
        let mut config = Config { failure_persistence: None, ..Config::default() };
        if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
            config.rng_seed = RngSeed::Fixed(0xA71A_2026);
        }
        config
    }

    proptest! {
        #![proptest_config(fuzz_config())]

        /// Whatever arrives on a pub/sub topic (another version's format, a stray PUBLISH) is
        /// decoded or skipped, never a panic.
        #[test]
        fn any_pubsub_payload_decodes_or_is_skipped(payload in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode_message(&payload);
        }

        #[test]
        fn stream_entries_round_trip_any_client_id_and_data(
            offset in any::<u64>(),
            ts in any::<i64>(),
            client_id in proptest::option::of(".{0,12}"),
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut entry = format!("{offset}|{ts}|").into_bytes();
            match &client_id {
                Some(id) => entry.extend_from_slice(format!("{}|{id}", id.len()).as_bytes()),
                None => entry.extend_from_slice(b"-|"),
            }
            entry.extend_from_slice(&data);
            let p = decode_entry(Bytes::from(entry), "ep".into()).expect("a well-formed entry decodes");
            prop_assert_eq!((p.offset, p.ts), (offset, ts));
            prop_assert_eq!(p.client_id.as_deref(), client_id.as_deref());
            prop_assert_eq!(&p.data[..], &data[..]);
        }
    }

    #[test]
    fn entries_round_trip_with_and_without_client_id() {
        let entry = Bytes::from_static(b"42|1700000000000|5|alice{\"a\":\"|x|\"}");
        let p = decode_entry(entry, "ep".into()).expect("decodes");
        assert_eq!((p.offset, p.ts, p.client_id.as_deref()), (42, 1_700_000_000_000, Some("alice")));
        assert_eq!(p.data, Bytes::from_static(b"{\"a\":\"|x|\"}"));
        let p = decode_entry(Bytes::from_static(b"1|2|-|null"), "ep".into()).expect("decodes");
        assert_eq!((p.client_id, p.data), (None, Bytes::from_static(b"null")));
        assert!(decode_entry(Bytes::from_static(b"1|2|9|short"), "ep".into()).is_none());
        let p = decode_entry(Bytes::from_static(b"3|4|-,2,7|ev123.456{}"), "ep".into()).expect("decodes");
        assert_eq!(
            (p.client_id, p.event.as_deref(), p.exclude.as_deref(), p.data.as_ref()),
            (None, Some("ev"), Some("123.456"), &b"{}"[..])
        );
        assert!(decode_entry(Bytes::from_static(b"3|4|-,-,-,1|x{}"), "ep".into()).is_none());
        assert!(decode_entry(Bytes::from_static(b"3|4|-,9,-|ev{}"), "ep".into()).is_none());
    }

    #[test]
    fn topic_messages_decode_publications_and_presence() {
        let Some(Message::Publication(p)) = decode_message(b"p3|abc7|9|-|[1]") else { panic!("publication") };
        assert_eq!((&*p.epoch, p.offset, p.data.as_ref()), ("abc", 7, &b"[1]"[..]));
        let Some(Message::Presence(action, member)) =
            decode_message(br#"l{"client_id":"c","connection_id":"x","data":null}"#)
        else {
            panic!("presence")
        };
        assert_eq!((action, member.connection_id.as_str()), (PresenceAction::Leave, "x"));
        assert!(decode_message(b"zzz").is_none());
    }
}
