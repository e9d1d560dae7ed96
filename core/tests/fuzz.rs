//! Property-based fuzzing of core's parsers of untrusted input: connection tokens, channel
//! names, capability globs and the Pusher signatures (HTTP API and channel authorization).
//!
//! Invariants: no input panics; every refusal is a typed error; a changed token never verifies
//! to different claims. The run is deterministic (a fixed seed) so the test command cannot turn
//! red by chance; `PROPTEST_RNG_SEED=<n>` explores other inputs and `PROPTEST_CASES=<n>` sets
//! the budget (256 by default, well under a second per property here).

use aviary_core::capability::{Capabilities, Operation};
use aviary_core::channel::{MAX_CHANNEL_LEN, validate_channel};
use aviary_core::config::Registry;
use aviary_core::pusher::signature::{self, ApiRequest};
use aviary_core::token::{self, SigningKey};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use std::sync::OnceLock;

/// Fixed seed unless `PROPTEST_RNG_SEED` asks for another, no failure files in the tree.
fn config() -> Config {
    let mut config = Config { failure_persistence: None, ..Config::default() };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0xA71A_2026);
    }
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

/// A key and a registry trusting it, made once: tokens are signed per case.
fn trust() -> &'static (SigningKey, Registry) {
    static TRUST: OnceLock<(SigningKey, Registry)> = OnceLock::new();
    TRUST.get_or_init(|| {
        let key = SigningKey::generate();
        let registry = Registry::new();
        registry.set_verifying_keys([key.verifying_key()]);
        (key, registry)
    })
}

fn valid_token() -> (String, token::ConnectionClaims) {
    let (key, _) = trust();
    let claims = token::claims_for(
        "ten_fuzz",
        "app_fuzz",
        "key_fuzz",
        "user-fuzz",
        600,
        Capabilities::from_pairs([("chat:*", &[Operation::Subscribe, Operation::Publish][..])]),
    );
    (key.sign(&claims), claims)
}

/// Text that looks like a token often enough to get past the first split.
fn token_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_=.-]{0,80}\\.[A-Za-z0-9_=-]{0,90}",
        "eyJ[A-Za-z0-9_-]{0,60}\\.eyJ[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,90}",
    ]
}

/// How a valid token is damaged: a byte replaced, cut short, something appended.
#[derive(Debug, Clone)]
enum Damage {
    Replace { at: usize, with: u8 },
    Truncate { at: usize },
    Append(String),
    SwapSegments,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, with)| Damage::Replace { at, with }),
        any::<usize>().prop_map(|at| Damage::Truncate { at }),
        ".{1,12}".prop_map(Damage::Append),
        Just(Damage::SwapSegments),
    ]
}

fn apply(token: &str, damage: &Damage) -> String {
    match damage {
        Damage::Replace { at, with } => {
            let mut bytes = token.as_bytes().to_vec();
            let i = at % bytes.len();
            bytes[i] = *with;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Damage::Truncate { at } => token[..at % token.len()].to_owned(),
        Damage::Append(tail) => format!("{token}{tail}"),
        Damage::SwapSegments => {
            let parts: Vec<&str> = token.split('.').collect();
            format!("{}.{}.{}", parts[1], parts[0], parts[2])
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_a_token_or_a_typed_refusal(text in token_like()) {
        let (_, registry) = trust();
        // Arbitrary text never carries our signature: it must be refused, without panicking.
        prop_assert!(token::verify(&text, registry).is_err());
    }

    #[test]
    fn a_damaged_token_never_verifies_to_other_claims(damage in damage()) {
        let (_, registry) = trust();
        let (token, claims) = valid_token();
        let damaged = apply(&token, &damage);
        match token::verify(&damaged, registry) {
            Err(_) => {}
            // Only a change that leaves the signed bytes as they were may still verify.
            Ok(verified) => prop_assert_eq!(verified, claims, "damaged token {:?} verified", damaged),
        }
    }

    #[test]
    fn channel_names_are_valid_exactly_when_short_and_from_the_alphabet(name in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_:.@=,/#!~*-]{0,300}",
    ]) {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_-:.@=,/#!~".contains(c);
        let expected = !name.is_empty() && name.len() <= MAX_CHANNEL_LEN && name.chars().all(allowed);
        prop_assert_eq!(validate_channel(&name).is_ok(), expected, "{:?}", name);
    }

    #[test]
    fn capability_globs_validate_and_match_without_panicking(
        globs in proptest::collection::btree_map("[a-z*:]{0,8}|.{0,8}", proptest::collection::btree_set(0usize..4, 0..3), 0..6),
        channel in "[a-z:]{1,12}",
    ) {
        let ops = [Operation::Subscribe, Operation::Publish, Operation::Presence, Operation::History];
        let caps = Capabilities(
            globs.into_iter().map(|(g, set)| (g, set.into_iter().map(|i| ops[i]).collect())).collect(),
        );
        let valid = caps.validate().is_ok();
        for op in ops {
            let allowed = caps.allows(&channel, op);
            // A glob that is the channel itself grants exactly its operations.
            if caps.0.get(&channel).is_some_and(|listed| listed.contains(&op)) {
                prop_assert!(allowed, "{:?} on {} with {:?}", op, channel, caps);
            }
        }
        // A valid set always contains itself, and "everything" contains every valid set.
        if valid {
            prop_assert!(caps.is_subset_of(&caps));
            prop_assert!(caps.is_subset_of(&Capabilities::all()));
        }
    }

    #[test]
    fn capability_star_matches_every_channel(channel in "[A-Za-z0-9_:.@=,/#!~-]{1,64}") {
        prop_assert!(Capabilities::all().allows(&channel, Operation::Publish));
        let prefix: String = channel.chars().take(3).collect();
        let prefixed = Capabilities::from_pairs([(format!("{prefix}*").as_str(), &[Operation::Subscribe][..])]);
        prop_assert!(prefixed.allows(&channel, Operation::Subscribe));
        prop_assert!(!prefixed.allows(&channel, Operation::Publish));
    }

    #[test]
    fn pusher_http_requests_with_any_parameters_are_checked_without_panicking(
        params in proptest::collection::vec((
            prop_oneof![
                Just("auth_key".to_owned()), Just("auth_timestamp".to_owned()), Just("auth_version".to_owned()),
                Just("auth_signature".to_owned()), Just("body_md5".to_owned()), ".{0,10}",
            ],
            prop_oneof![any::<i64>().prop_map(|n| n.to_string()), Just("1.0".to_owned()), ".{0,70}"],
        ), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        now in any::<i64>(),
    ) {
        let request = ApiRequest { method: "POST", path: "/apps/1/events", query: &params, body: &body };
        let _ = request.auth_key();
        let _ = request.string_to_sign();
        // Without the secret's signature over exactly these bytes nothing verifies.
        prop_assert!(request.verify("the-secret", now).is_err());
    }

    #[test]
    fn pusher_channel_authorizations_are_checked_without_panicking(
        auth in ".{0,120}",
        socket_id in prop_oneof!["[0-9]{1,12}\\.[0-9]{1,12}", ".{0,20}"],
        channel in ".{0,40}",
        channel_data in proptest::option::of(".{0,40}"),
    ) {
        let _ = signature::valid_socket_id(&socket_id);
        prop_assert!(signature::verify_channel_auth(
            "the-key", "the-secret", &auth, &socket_id, &channel, channel_data.as_deref()
        ).is_err() || auth == signature::channel_auth("the-key", "the-secret", &socket_id, &channel, channel_data.as_deref()));
    }

    #[test]
    fn a_pusher_channel_authorization_verifies_only_for_its_own_socket_and_channel(
        socket_id in "[0-9]{1,12}\\.[0-9]{1,12}",
        other in "[0-9]{1,12}\\.[0-9]{1,12}",
        channel in "private-[a-z0-9-]{1,20}",
    ) {
        let auth = signature::channel_auth("the-key", "the-secret", &socket_id, &channel, None);
        prop_assert!(signature::verify_channel_auth("the-key", "the-secret", &auth, &socket_id, &channel, None).is_ok());
        prop_assert_eq!(
            signature::verify_channel_auth("the-key", "the-secret", &auth, &other, &channel, None).is_ok(),
            other == socket_id
        );
        prop_assert!(signature::verify_channel_auth("the-key", "another-secret", &auth, &socket_id, &channel, None).is_err());
    }
}
