//! The Pusher WebSocket endpoint (`/app/{key}`, protocol 7) with the real pusher-js from npm:
//! public, private, presence and cache channels, client events, sign-in, refusals in Pusher's
//! codes, one channel space with Aviary's own clients, and two nodes on Redis. Raw sockets only
//! where pusher-js cannot be made to misbehave (protocol version, ignoring pings).

mod support;

use std::time::Duration;

use aviary_sdk::realtime::{Connection as AviaryConnection, SubscribeOptions};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{PusherJs, Setup, WAIT};
use tokio_tungstenite::tungstenite::Message;

/// A raw protocol-7 socket (for what pusher-js never does).
type Raw = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(node: &support::Node, path_and_query: &str) -> Raw {
    let url = format!("ws://{}:{}{path_and_query}", node.host, node.port);
    tokio_tungstenite::connect_async(url).await.expect("WebSocket connects").0
}

/// The next text frame as JSON, or the close code once the server closed.
async fn next(ws: &mut Raw) -> Result<Value, Option<u16>> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).expect("JSON")),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Reads until the server closes; returns the `pusher:error` code seen and the close code.
async fn refusal(ws: &mut Raw) -> (Option<u64>, Option<u16>) {
    let mut error_code = None;
    loop {
        match next(ws).await {
            Ok(frame) if frame["event"] == "pusher:error" => error_code = frame["data"]["code"].as_u64(),
            Ok(_) => {}
            Err(close) => return (error_code, close),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_uses_public_private_presence_and_cache_channels() {
    let setup = Setup::new();
    let node = setup.node().await;
    let mut js = PusherJs::start();
    let backend = AviaryConnection::connect(&node.aviary_ws(), &setup.token("backend")).await.expect("Aviary connects");

    let a = js.connect("a", &setup, &node, json!({})).await;
    assert!(aviary_core::pusher::signature::valid_socket_id(&a), "socket id {a}");
    js.connect("b", &setup, &node, json!({})).await;

    // Public: an Aviary publication reaches pusher-js as event "message", data as published.
    assert_eq!(js.subscribe("a", "orders", json!({})).await["type"], "subscribed");
    backend.publish("orders", json!({ "n": 1 }), None).await.expect("publish");
    let event = js.events("a", "orders", 1).await.remove(0);
    assert_eq!((event["event"].as_str(), &event["data"]), (Some("message"), &json!({ "n": 1 })));

    // Namespaced Pusher name: `chat;lobby` is Aviary's `chat:lobby`.
    assert_eq!(js.subscribe("a", "chat;lobby", json!({})).await["type"], "subscribed");
    backend.publish("chat:lobby", json!("hi"), None).await.expect("publish");
    assert_eq!(js.events("a", "chat;lobby", 1).await[0]["data"], "hi");

    // Private: signed subscriptions; client events reach the others, not the sender.
    assert_eq!(js.subscribe("a", "private-room", json!({})).await["type"], "subscribed");
    assert_eq!(js.subscribe("b", "private-room", json!({})).await["type"], "subscribed");
    js.send(json!({ "cmd": "trigger", "client": "a", "channel": "private-room", "event": "client-typing", "data": { "x": 1 } }))
        .await;
    assert_eq!(js.expect("a", |o| o["type"] == "triggered").await["ok"], true);
    let typed = js.events("b", "private-room", 1).await.remove(0);
    assert_eq!((typed["event"].as_str(), &typed["data"]), (Some("client-typing"), &json!({ "x": 1 })));
    js.send(json!({ "cmd": "trigger", "client": "b", "channel": "private-room", "event": "client-reply", "data": 2 }))
        .await;
    assert_eq!(js.events("a", "private-room", 1).await[0]["event"], "client-reply");
    js.assert_no_event("b", "private-room");

    // A signature made with another secret is refused, and the connection stays usable.
    let refused = js.subscribe("a", "private-other", json!({ "secret": "0".repeat(40) })).await;
    assert_eq!(refused["type"], "subscription_error", "{refused}");
    assert_eq!(refused["error"]["status"], 401, "{refused}");
    js.expect("a", |o| o["type"] == "error" && o["error"]["code"] == 4009).await;

    // Presence: the member list, then one member_added / member_removed per user, and client
    // events carrying the sender's user_id.
    let ada = json!({ "member": { "user_id": "ada", "user_info": { "name": "Ada" } } });
    let joined = js.subscribe("a", "presence-lobby", ada).await;
    assert_eq!(joined["members"], json!({ "ada": { "name": "Ada" } }), "{joined}");
    let bob = json!({ "member": { "user_id": "bob", "user_info": { "name": "Bob" } } });
    let joined = js.subscribe("b", "presence-lobby", bob).await;
    assert_eq!(joined["members"], json!({ "ada": { "name": "Ada" }, "bob": { "name": "Bob" } }), "{joined}");
    let added = js.expect("a", |o| o["type"] == "member_added").await;
    assert_eq!((added["id"].as_str(), &added["info"]), (Some("bob"), &json!({ "name": "Bob" })));
    js.send(
        json!({ "cmd": "trigger", "client": "b", "channel": "presence-lobby", "event": "client-wave", "data": {} }),
    )
    .await;
    let wave = js.events("a", "presence-lobby", 1).await.remove(0);
    assert_eq!((wave["event"].as_str(), wave["user_id"].as_str()), (Some("client-wave"), Some("bob")));
    js.send(json!({ "cmd": "unsubscribe", "client": "b", "channel": "presence-lobby" })).await;
    assert_eq!(js.expect("a", |o| o["type"] == "member_removed").await["id"], "bob");

    // Client events are refused on public channels (pusher-js sends them anyway).
    js.send(json!({ "cmd": "trigger", "client": "a", "channel": "orders", "event": "client-x", "data": {} })).await;
    js.expect("a", |o| o["type"] == "error" && o["error"]["message"].as_str().is_some_and(|m| m.contains("private")))
        .await;

    // Encrypted channels: the server relays the backend's ciphertext; pusher-js decrypts it
    // with the key the authorization gave it (and refuses client events there itself).
    assert_eq!(js.subscribe("a", "private-encrypted-vault", json!({})).await["type"], "subscribed");
    js.send(json!({ "cmd": "encrypt", "client": "a", "channel": "private-encrypted-vault", "data": { "gold": 3 } }))
        .await;
    let sealed = js.expect("a", |o| o["type"] == "encrypted").await;
    let envelope = json!({ "nonce": sealed["nonce"], "ciphertext": sealed["ciphertext"] });
    backend.publish("private-encrypted-vault", envelope, None).await.expect("publish ciphertext");
    assert_eq!(js.events("a", "private-encrypted-vault", 1).await[0]["data"], json!({ "gold": 3 }));

    // Cache channels: the last event on subscribe, or pusher:cache_miss.
    backend.publish("cache-prices", json!({ "p": 1 }), None).await.expect("publish");
    backend.publish("cache-prices", json!({ "p": 2 }), None).await.expect("publish");
    assert_eq!(js.subscribe("b", "cache-prices", json!({})).await["type"], "subscribed");
    assert_eq!(js.events("b", "cache-prices", 1).await[0]["data"], json!({ "p": 2 }));
    js.subscribe("b", "cache-empty", json!({})).await;
    js.expect("b", |o| o["type"] == "cache_miss" && o["channel"] == "cache-empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_users_receive_their_events_and_bad_signins_are_refused() {
    let setup = Setup::new();
    let node = setup.node().await;
    let mut js = PusherJs::start();
    js.connect("a", &setup, &node, json!({ "user": { "id": "u-7", "name": "Seven" } })).await;
    js.send(json!({ "cmd": "signin", "client": "a" })).await;
    // pusher-js subscribes to its user channel after `pusher:signin_success`.
    js.expect("a", |o| o["type"] == "state" && o["current"] == "connected").await;
    let sender = AviaryConnection::connect(&node.aviary_ws(), &setup.token("backend")).await.expect("connects");
    // A server-to-user event is a publication on the user's Aviary channel. Retry until the
    // user channel subscription is in place (pusher-js makes it asynchronously after sign-in).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        sender.publish("#server-to-user-u-7", json!({ "hello": "u-7" }), None).await.expect("publish");
        let got = tokio::time::timeout(Duration::from_millis(500), js.expect("a", |o| o["type"] == "user_event")).await;
        if let Ok(event) = got {
            assert_eq!((event["event"].as_str(), &event["data"]), (Some("message"), &json!({ "hello": "u-7" })));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no user event within {WAIT:?}");
    }

    js.connect("b", &setup, &node, json!({ "user": { "id": "u-8" } })).await;
    js.send(json!({ "cmd": "signin", "client": "b", "secret": "1".repeat(40) })).await;
    js.expect("b", |o| o["type"] == "error" && o["error"]["code"] == 4009).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_closes_use_pushers_codes() {
    let mut setup = Setup::new();
    setup.config.pusher_activity_timeout = Duration::from_secs(2);
    let node = setup.node().await;
    let key = setup.credential.key.clone();

    // pusher-js with a key that names no credential: 4001.
    let mut js = PusherJs::start();
    let mut wrong = Setup::new();
    wrong.credential.key = "f".repeat(20);
    js.send(json!({ "cmd": "connect", "client": "w", "key": wrong.credential.key, "secret": "x", "host": node.host, "port": node.port }))
        .await;
    js.expect("w", |o| o["type"] == "error" && o["error"]["code"] == 4001).await;

    // Protocol versions.
    let (code, close) = refusal(&mut raw(&node, &format!("/app/{key}")).await).await;
    assert_eq!((code, close), (Some(4008), Some(4008)));
    let (code, close) = refusal(&mut raw(&node, &format!("/app/{key}?protocol=6")).await).await;
    assert_eq!((code, close), (Some(4007), Some(4007)));

    // A client that never answers the server's ping is closed with 4201.
    let mut silent = raw(&node, &format!("/app/{key}?protocol=7&client=raw&version=1")).await;
    let established = next(&mut silent).await.expect("connection_established");
    assert_eq!(established["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(established["data"].as_str().expect("data is a string")).unwrap();
    assert_eq!(data["activity_timeout"], 2);
    assert_eq!(next(&mut silent).await.expect("a ping")["event"], "pusher:ping");
    assert_eq!(refusal(&mut silent).await, (Some(4201), Some(4201)));

    // A client that pings is answered (the server's own ping may come first under load).
    let mut lively = raw(&node, &format!("/app/{key}?protocol=7")).await;
    next(&mut lively).await.expect("connection_established");
    lively.send(Message::text(r#"{"event":"pusher:ping","data":{}}"#)).await.unwrap();
    loop {
        let frame = next(&mut lively).await.expect("a pong");
        if frame["event"] != "pusher:ping" {
            assert_eq!(frame["event"], "pusher:pong", "{frame}");
            break;
        }
    }

    // More than 10 client events a second (30 sent at once, so even a slow machine handles
    // more than 10 within one second): 4301, the connection stays.
    js.connect("a", &setup, &node, json!({ "activityTimeout": 120000 })).await;
    js.subscribe("a", "private-flood", json!({})).await;
    for i in 0..30 {
        js.send(json!({ "cmd": "trigger", "client": "a", "channel": "private-flood", "event": "client-n", "data": i }))
            .await;
    }
    js.expect("a", |o| o["type"] == "error" && o["error"]["code"] == 4301).await;

    // Changing the credential makes its connections reconnect (4200) under the new rules:
    // pusher-js subscribes again, and a channel the new capabilities leave out is refused.
    js.connect("c", &setup, &node, json!({ "activityTimeout": 120000 })).await;
    assert_eq!(js.subscribe("c", "orders", json!({})).await["type"], "subscribed");
    let mut narrowed = setup.credential.clone();
    narrowed.capabilities = aviary_core::Capabilities::from_pairs([(
        "chat:*",
        &[aviary_core::Operation::Subscribe, aviary_core::Operation::Publish][..],
    )]);
    node.registry.upsert_pusher_credential(narrowed);
    js.expect("c", |o| o["type"] == "error" && o["error"]["code"] == 4200).await;
    let refused = js.expect("c", |o| o["type"] == "subscription_error" && o["channel"] == "orders").await;
    assert_eq!(refused["error"]["status"], 403, "{refused}");

    // Revoking the credential closes its connections with 4009; new ones get 4001. (A fresh raw
    // socket: with a 2 s activity timeout, an older silent one may already be closed with 4201.)
    let mut open = raw(&node, &format!("/app/{key}?protocol=7")).await;
    next(&mut open).await.expect("connection_established");
    node.registry.remove_pusher_credential(&key);
    js.expect("a", |o| o["type"] == "error" && o["error"]["code"] == 4009).await;
    assert_eq!(refusal(&mut open).await, (Some(4009), Some(4009)));
    let (code, close) = refusal(&mut raw(&node, &format!("/app/{key}?protocol=7")).await).await;
    assert_eq!((code, close), (Some(4001), Some(4001)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_and_aviary_clients_share_channels_and_presence() {
    let setup = Setup::new();
    let node = setup.node().await;
    let mut js = PusherJs::start();
    js.connect("p", &setup, &node, json!({})).await;
    let member = json!({ "member": { "user_id": "pia", "user_info": { "via": "pusher" } } });
    js.subscribe("p", "presence-mixed", member).await;

    let aviary = AviaryConnection::connect(&node.aviary_ws(), &setup.token("avi")).await.expect("connects");
    let mut sub = aviary
        .subscribe("presence-mixed", SubscribeOptions { presence: true, ..SubscribeOptions::default() })
        .await
        .expect("subscribe");
    aviary.presence_enter("presence-mixed", Some(json!({ "via": "aviary" }))).await.expect("enter");

    // Presence: both kinds of client see the same two members.
    let added = js.expect("p", |o| o["type"] == "member_added").await;
    assert_eq!((added["id"].as_str(), &added["info"]), (Some("avi"), &json!({ "via": "aviary" })));
    js.send(json!({ "cmd": "members", "client": "p", "channel": "presence-mixed" })).await;
    assert_eq!(js.expect("p", |o| o["type"] == "members").await["ids"], json!(["avi", "pia"]));
    let mut members: Vec<(String, Value)> = aviary
        .presence_get("presence-mixed")
        .await
        .expect("presence")
        .into_iter()
        .map(|m| (m.client_id, m.data.unwrap_or(Value::Null)))
        .collect();
    members.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        members,
        vec![("avi".to_owned(), json!({ "via": "aviary" })), ("pia".to_owned(), json!({ "via": "pusher" }))]
    );

    // pusher-js -> Aviary: client events in order, with their event names and sender.
    for i in 0..5 {
        js.send(json!({ "cmd": "trigger", "client": "p", "channel": "presence-mixed", "event": "client-seq", "data": { "i": i } }))
            .await;
    }
    for i in 0..5 {
        let m = tokio::time::timeout(WAIT, sub.next_message()).await.expect("in time").expect("a message");
        assert_eq!(
            (&m.data, m.event.as_deref(), m.client_id.as_deref()),
            (&json!({ "i": i }), Some("client-seq"), Some("pia"))
        );
    }

    // Aviary -> pusher-js: publications in order, as event "message".
    for i in 0..5 {
        aviary.publish("presence-mixed", json!({ "j": i }), None).await.expect("publish");
    }
    let events = js.events("p", "presence-mixed", 5).await;
    for (i, event) in events.iter().enumerate() {
        assert_eq!((event["event"].as_str(), &event["data"]), (Some("message"), &json!({ "j": i })));
        assert_eq!(event["user_id"], "avi", "presence events name their publisher");
    }

    // Leaving on the Aviary side is a member_removed on the Pusher side.
    aviary.presence_leave("presence-mixed").await.expect("leave");
    assert_eq!(js.expect("p", |o| o["type"] == "member_removed").await["id"], "avi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_clients_on_two_nodes_see_each_other() {
    let setup = Setup::new().on_redis();
    let (one, two) = (setup.node().await, setup.node().await);
    let mut js = PusherJs::start();
    js.connect("one", &setup, &one, json!({})).await;
    js.connect("two", &setup, &two, json!({})).await;
    js.subscribe("one", "presence-cluster", json!({ "member": { "user_id": "u1" } })).await;
    let joined = js.subscribe("two", "presence-cluster", json!({ "member": { "user_id": "u2" } })).await;
    assert_eq!(joined["members"], json!({ "u1": null, "u2": null }), "{joined}");
    assert_eq!(js.expect("one", |o| o["type"] == "member_added").await["id"], "u2");

    js.send(json!({ "cmd": "trigger", "client": "one", "channel": "presence-cluster", "event": "client-hop", "data": { "from": 1 } }))
        .await;
    let hop = js.events("two", "presence-cluster", 1).await.remove(0);
    assert_eq!((hop["event"].as_str(), hop["user_id"].as_str()), (Some("client-hop"), Some("u1")));

    let aviary = AviaryConnection::connect(&two.aviary_ws(), &setup.token("backend")).await.expect("connects");
    aviary.publish("presence-cluster", json!("from aviary on node two"), None).await.expect("publish");
    assert_eq!(js.events("one", "presence-cluster", 1).await[0]["data"], "from aviary on node two");

    js.send(json!({ "cmd": "disconnect", "client": "two" })).await;
    assert_eq!(js.expect("one", |o| o["type"] == "member_removed").await["id"], "u2");
}
