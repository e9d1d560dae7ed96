//! Pusher's HTTP API on a real `aviary dev`, driven by the real Pusher server SDKs from the
//! registries (npm `pusher`, PyPI `pusher`; `scripts/test` installs both), with Aviary
//! WebSocket clients on the receiving end: events reach Aviary subscribers with their event
//! name and data, `socket_id` leaves a connection out, channel and user queries count Aviary
//! connections, terminating a user closes its connections; every refusal in Pusher's words.

mod common;

use aviary_core::pusher::signature;
use common::pusher::{PusherApp, signed_url};
use common::{Ws, next_json, next_matching, request};
use futures::StreamExt;
use serde_json::{Value, json};

/// Connects an Aviary client and subscribes it to `channels` (Aviary names).
async fn subscriber(app: &PusherApp, client_id: &str, channels: &[&str]) -> (Ws, String) {
    let token = app.token(client_id).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(app.proc.ws_url()).await.expect("WebSocket connects");
    common::send_frame(&mut ws, json!({"type": "connect", "token": token})).await;
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let socket_id = connected["socket_id"].as_str().expect("connected names the socket id").to_owned();
    assert!(signature::valid_socket_id(&socket_id), "{socket_id} has Pusher's form");
    for (i, channel) in channels.iter().enumerate() {
        let reply = request(&mut ws, i as u64 + 1, json!({"type": "subscribe", "channel": channel})).await;
        assert_eq!(reply["type"], "ok", "{reply}");
    }
    (ws, socket_id)
}

async fn next_message(ws: &mut Ws) -> Value {
    next_matching(ws, |f| f["type"] == "message").await
}

fn ok(answer: &Value) -> &Value {
    assert_eq!(answer["status"], 200, "{answer}");
    &answer["body"]
}

#[tokio::test]
async fn node_sdk_trigger_reaches_aviary_subscribers_with_event_name_and_data() {
    let app = PusherApp::start(json!([{"name": "chat"}]), json!({})).await;
    let cred = &app.credential;
    let (mut alice, alice_socket) = subscriber(&app, "alice", &["chat:lobby", "orders"]).await;
    let (mut bob, _) = subscriber(&app, "bob", &["orders"]).await;
    let sse = app
        .http
        .get(app.url("/v1/sse?channels=orders"))
        .bearer_auth(app.token("carol").await)
        .send()
        .await
        .expect("SSE stream opens");
    assert_eq!(sse.status(), 200);
    let mut sse = sse.bytes_stream();
    let mut seen = String::new();
    read_sse_until(&mut sse, &mut seen, "event: subscribed").await;

    // One event on two channels; `chat;lobby` is the Aviary channel `chat:lobby`.
    let answer = app
        .node_sdk(
            cred,
            "trigger",
            json!({"channels": ["chat;lobby", "orders"], "event": "order-placed", "data": {"id": 7}}),
        )
        .await;
    assert_eq!(ok(&answer), &json!({}));
    let first = next_message(&mut alice).await;
    let second = next_message(&mut alice).await;
    let mut got =
        [(first["channel"].clone(), first["event"].clone()), (second["channel"].clone(), second["event"].clone())];
    got.sort_by_key(|(c, _)| c.to_string());
    assert_eq!(got, [(json!("chat:lobby"), json!("order-placed")), (json!("orders"), json!("order-placed"))]);
    assert_eq!(first["data"], json!({"id": 7}), "the SDK's JSON-encoded data reaches Aviary as the value");
    let at_bob = next_message(&mut bob).await;
    assert_eq!(
        (&at_bob["event"], &at_bob["data"], &at_bob["client_id"]),
        (&json!("order-placed"), &json!({"id": 7}), &Value::Null)
    );
    // SSE (carol's stream, a third subscriber of `orders`) carries the same message frame.
    read_sse_until(&mut sse, &mut seen, r#""event":"order-placed""#).await;
    let line = seen.lines().find(|l| l.contains("order-placed")).unwrap();
    let frame: Value = serde_json::from_str(line.trim_start_matches("data: ")).expect("an SSE data line");
    assert_eq!((&frame["channel"], &frame["data"]), (&json!("orders"), &json!({"id": 7})));

    // A string that is not JSON stays a string.
    ok(&app.node_sdk(cred, "trigger", json!({"channels": "orders", "event": "note", "data": "plain text"})).await);
    assert_eq!(next_message(&mut alice).await["data"], "plain text");
    assert_eq!(next_message(&mut bob).await["data"], "plain text");

    // `socket_id` leaves alice's connection out; bob gets it, and alice's next message follows
    // without a discontinuity.
    let answer = app
        .node_sdk(
            cred,
            "trigger",
            json!({"channels": "orders", "event": "not-for-alice", "data": {"n": 1}, "params": {"socket_id": alice_socket}}),
        )
        .await;
    ok(&answer);
    assert_eq!(next_message(&mut bob).await["event"], "not-for-alice");
    let answer = app
        .node_sdk(cred, "trigger", json!({"channels": "orders", "event": "for-all", "data": {"n": 2}, "params": {"info": "subscription_count"}}))
        .await;
    assert_eq!(ok(&answer), &json!({"channels": {"orders": {"subscription_count": 3}}}));
    let next = next_json(&mut alice).await;
    assert_eq!((&next["type"], &next["event"]), (&json!("message"), &json!("for-all")), "{next}");
    assert_eq!(next_message(&mut bob).await["event"], "for-all");

    // Batch: two events in order, each with its own channel and name.
    let batch = json!({"batch": [
        {"channel": "orders", "name": "first", "data": "{\"n\":1}"},
        {"channel": "orders", "name": "second", "data": "{\"n\":2}", "info": "subscription_count"},
    ]});
    assert_eq!(
        ok(&app.node_sdk(cred, "triggerBatch", batch).await),
        &json!({"batch": [{}, {"subscription_count": 3}]})
    );
    for ws in [&mut alice, &mut bob] {
        let (a, b) = (next_message(ws).await, next_message(ws).await);
        assert_eq!(
            (&a["event"], &a["data"], &b["event"], &b["data"]),
            (&json!("first"), &json!({"n": 1}), &json!("second"), &json!({"n": 2}))
        );
    }

    // History keeps the event name (REST).
    let (status, history) = common::send(
        app.http
            .get(app.url(&format!("/v1/apps/{}/channels/orders/history?limit=1", app.app_id)))
            .bearer_auth(&app.api_key),
    )
    .await;
    assert_eq!(status, 200, "{history}");
    let last = &history["publications"][0];
    assert_eq!((&last["event"], &last["data"]), (&json!("second"), &json!({"n": 2})), "{history}");

    // And so does a WebSocket `history` read.
    let reply = request(&mut alice, 30, json!({"type": "history", "channel": "orders", "limit": 1})).await;
    assert_eq!(reply["publications"][0]["event"], "second", "{reply}");

    // Metered like every publish: 7 messages (one per channel) under the `pusher` source.
    let metrics = app.http.get(app.proc.metrics_url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("aviary_messages_in_total{") && l.contains(r#"source="pusher""#))
        .unwrap_or_else(|| panic!("no pusher source in {metrics}"));
    assert_eq!(line.rsplit(' ').next(), Some("7"), "{line}");
}

/// Reads the SSE body until `needle` has arrived.
async fn read_sse_until(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    needle: &str,
) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} on the SSE stream in time; got {seen:?}"))
            .expect("the SSE stream stays open")
            .expect("an SSE chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn node_sdk_queries_channels_and_users_and_terminates_a_users_connections() {
    let app = PusherApp::start(json!([]), json!({})).await;
    let cred = &app.credential;
    let (mut alice, _) = subscriber(&app, "alice", &["presence-room", "news"]).await;
    let (mut alice_again, _) = subscriber(&app, "alice", &["presence-room"]).await;
    let (mut bob, _) = subscriber(&app, "bob", &["presence-room"]).await;
    for (ws, id) in [(&mut alice, 10), (&mut alice_again, 11), (&mut bob, 12)] {
        let reply = request(ws, id, json!({"type": "presence.enter", "channel": "presence-room"})).await;
        assert_eq!(reply["type"], "ok", "{reply}");
    }

    let get = |path: &str, params: Value| app.node_sdk(cred, "get", json!({"path": path, "params": params}));
    assert_eq!(
        ok(&get("/channels", json!({"info": "subscription_count"})).await),
        &json!({"channels": {"news": {"subscription_count": 1}, "presence-room": {"subscription_count": 3}}})
    );
    assert_eq!(
        ok(&get("/channels", json!({"filter_by_prefix": "presence-", "info": "user_count"})).await),
        &json!({"channels": {"presence-room": {"user_count": 2}}}),
        "alice's two connections are one user"
    );
    assert_eq!(
        ok(&get("/channels/presence-room", json!({"info": "user_count,subscription_count"})).await),
        &json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );
    assert_eq!(ok(&get("/channels/empty", json!({})).await), &json!({"occupied": false}));
    assert_eq!(
        ok(&get("/channels/presence-room/users", json!({})).await),
        &json!({"users": [{"id": "alice"}, {"id": "bob"}]})
    );
    let refused = get("/channels/news/users", json!({})).await;
    assert_eq!(refused["status"], 400, "users of a non-presence channel: {refused}");
    let refused = get("/channels/news", json!({"info": "user_count"})).await;
    assert_eq!(refused["status"], 400, "user_count of a non-presence channel: {refused}");

    // Terminating alice closes both her connections (the client is told not to reconnect);
    // bob stays.
    assert_eq!(ok(&app.node_sdk(cred, "terminateUserConnections", json!({"user_id": "alice"})).await), &json!({}));
    for ws in [&mut alice, &mut alice_again] {
        let farewell = next_matching(ws, |f| f["type"] == "disconnect").await;
        assert_eq!((&farewell["code"], &farewell["reconnect"]), (&json!(4010), &json!(false)), "{farewell}");
    }
    let reply = request(&mut bob, 20, json!({"type": "presence.get", "channel": "presence-room"})).await;
    assert_eq!(reply["type"], "ok", "bob's connection stays open: {reply}");
}

#[tokio::test]
async fn node_sdk_send_to_user_publishes_on_the_users_channel() {
    let app = PusherApp::start(json!([]), json!({})).await;
    // A signed-in pusher-js client listens on `#server-to-user-<id>` (the WebSocket front end's
    // tests cover that hop); an Aviary client may subscribe to the same channel.
    let (mut dave, _) = subscriber(&app, "dave", &["#server-to-user-dave"]).await;
    let answer = app
        .node_sdk(&app.credential, "sendToUser", json!({"user_id": "dave", "event": "hello", "data": {"x": 1}}))
        .await;
    assert_eq!(ok(&answer), &json!({}));
    let message = next_message(&mut dave).await;
    assert_eq!(
        (&message["channel"], &message["event"], &message["data"]),
        (&json!("#server-to-user-dave"), &json!("hello"), &json!({"x": 1}))
    );
}

/// The signatures the SDKs compute for pusher-js (channel authorization, user authentication)
/// verify with Aviary's checks, which the WebSocket front end applies.
fn assert_signatures_verify(app: &PusherApp, channel_auth: &Value, presence_auth: &Value, user_auth: &Value) {
    let cred = &app.credential;
    let (key, secret) = (cred.key.as_str(), cred.secret.as_str());
    let auth = |v: &Value| v["auth"].as_str().unwrap_or_else(|| panic!("auth in {v}")).to_owned();
    assert_eq!(signature::verify_channel_auth(key, secret, &auth(channel_auth), "123.456", "private-a", None), Ok(()));
    assert!(
        signature::verify_channel_auth(key, secret, &auth(channel_auth), "123.457", "private-a", None).is_err(),
        "bound to its socket"
    );
    let channel_data = presence_auth["channel_data"].as_str().expect("presence auth carries channel_data");
    assert_eq!(serde_json::from_str::<Value>(channel_data).unwrap()["user_id"], "alice");
    assert_eq!(
        signature::verify_channel_auth(key, secret, &auth(presence_auth), "123.456", "presence-a", Some(channel_data)),
        Ok(())
    );
    let user_data = user_auth["user_data"].as_str().expect("user auth carries user_data");
    assert_eq!(signature::verify_user_auth(key, secret, &auth(user_auth), "123.456", user_data), Ok(()));
}

#[tokio::test]
async fn python_sdk_triggers_queries_authenticates_and_terminates() {
    let app = PusherApp::start(json!([]), json!({})).await;
    let cred = &app.credential;
    let (mut alice, _) = subscriber(&app, "alice", &["presence-room", "orders"]).await;
    let reply = request(&mut alice, 10, json!({"type": "presence.enter", "channel": "presence-room"})).await;
    assert_eq!(reply["type"], "ok", "{reply}");

    let answer =
        app.python_sdk(cred, "trigger", json!({"channels": ["orders"], "event": "py-event", "data": {"x": 1}})).await;
    assert_eq!(ok(&answer), &json!({}));
    let message = next_message(&mut alice).await;
    assert_eq!((&message["event"], &message["data"]), (&json!("py-event"), &json!({"x": 1})));

    let answer = app
        .python_sdk(cred, "channels_info", json!({"prefix_filter": "presence-", "attributes": ["user_count"]}))
        .await;
    assert_eq!(ok(&answer), &json!({"channels": {"presence-room": {"user_count": 1}}}));
    let answer =
        app.python_sdk(cred, "channel_info", json!({"channel": "orders", "attributes": ["subscription_count"]})).await;
    assert_eq!(ok(&answer), &json!({"occupied": true, "subscription_count": 1}));
    let answer = app.python_sdk(cred, "users_info", json!({"channel": "presence-room"})).await;
    assert_eq!(ok(&answer), &json!({"users": [{"id": "alice"}]}));

    let channel_auth =
        app.python_sdk(cred, "authenticate", json!({"channel": "private-a", "socket_id": "123.456"})).await;
    let presence_auth = app
        .python_sdk(
            cred,
            "authenticate",
            json!({"channel": "presence-a", "socket_id": "123.456", "custom_data": {"user_id": "alice", "user_info": {"name": "Alice"}}}),
        )
        .await;
    let user_auth =
        app.python_sdk(cred, "authenticate_user", json!({"socket_id": "123.456", "user_data": {"id": "alice"}})).await;
    assert_signatures_verify(&app, ok(&channel_auth), ok(&presence_auth), ok(&user_auth));

    // The Python SDK's terminate path has no `/apps/{app_id}`: it acts on the key's app.
    let answer = app.python_sdk(cred, "terminate_user_connections", json!({"user_id": "alice"})).await;
    assert_eq!(ok(&answer), &json!({}));
    let farewell = next_matching(&mut alice, |f| f["type"] == "disconnect").await;
    assert_eq!(farewell["code"], 4010, "{farewell}");
}

#[tokio::test]
async fn node_sdk_signatures_for_pusher_js_verify_with_aviary() {
    let app = PusherApp::start(json!([]), json!({})).await;
    let cred = &app.credential;
    let channel_auth =
        app.node_sdk(cred, "authorizeChannel", json!({"socket_id": "123.456", "channel": "private-a"})).await;
    let presence_auth = app
        .node_sdk(
            cred,
            "authorizeChannel",
            json!({"socket_id": "123.456", "channel": "presence-a", "presence": {"user_id": "alice", "user_info": {"name": "Alice"}}}),
        )
        .await;
    let user_auth = app
        .node_sdk(cred, "authenticateUser", json!({"socket_id": "123.456", "user": {"id": "alice", "name": "Alice"}}))
        .await;
    assert_signatures_verify(&app, ok(&channel_auth), ok(&presence_auth), ok(&user_auth));
}

/// What a refused call answered: its status and body text.
fn refused(answer: &Value) -> (u16, String) {
    let status = answer["status"].as_u64().unwrap_or_else(|| panic!("a status in {answer}")) as u16;
    assert_ne!(status, 200, "refused: {answer}");
    (status, answer["error"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn refusals_keep_pushers_statuses() {
    let app = PusherApp::start(json!([{"name": "chat"}]), json!({})).await;
    let cred = &app.credential;
    let trigger = json!({"channels": ["orders"], "event": "e", "data": {"x": 1}});

    // Authentication: 401 with the reason.
    let wrong_secret = common::pusher::Credential { secret: "0".repeat(40), ..cred.clone() };
    assert_eq!(
        refused(&app.node_sdk(&wrong_secret, "trigger", trigger.clone()).await),
        (401, "invalid signature".into())
    );
    let unknown_key = common::pusher::Credential { key: "0".repeat(20), ..cred.clone() };
    assert_eq!(
        refused(&app.node_sdk(&unknown_key, "trigger", trigger.clone()).await),
        (401, "unknown auth_key".into())
    );
    let other_app = common::pusher::Credential { app_id: "1".into(), ..cred.clone() };
    assert_eq!(
        refused(
            &app.python_sdk(&other_app, "trigger", json!({"channels": ["orders"], "event": "e", "data": "x"})).await
        ),
        (401, "auth_key does not belong to this app_id".into())
    );
    let http = &app.http;
    let base = app.url("");
    let path = format!("/apps/{}/events", cred.app_id);
    let body = br#"{"name":"e","channels":["orders"],"data":"{}"}"#;
    let now = aviary_core::unix_now();
    for (timestamp, what) in [(now - 601, "stale"), (now + 601, "from the future")] {
        let url = signed_url(&base, cred, "POST", &path, body, timestamp, &[]);
        let answer = http.post(url).body(&body[..]).header("content-type", "application/json").send().await.unwrap();
        assert_eq!(answer.status(), 401, "a timestamp {what}");
        assert!(answer.text().await.unwrap().contains("auth_timestamp"), "the reason names the timestamp");
    }
    let url = signed_url(&base, cred, "POST", &path, body, now, &[]);
    let tampered = br#"{"name":"e","channels":["orders"],"data":"{1}"}"#;
    let answer = http.post(&url).body(&tampered[..]).send().await.unwrap();
    assert_eq!(
        (answer.status().as_u16(), answer.text().await.unwrap()),
        (401, "body_md5 does not match the body".into())
    );
    let answer = http.post(&url).body(&body[..]).send().await.unwrap();
    assert_eq!(answer.status(), 200, "the same request untampered passes");

    // Bad requests: 400.
    let channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let many = serde_json::to_vec(&json!({"name": "e", "channels": channels, "data": "{}"})).unwrap();
    let answer = http.post(signed_url(&base, cred, "POST", &path, &many, now, &[])).body(many).send().await.unwrap();
    assert_eq!(
        (answer.status().as_u16(), answer.text().await.unwrap()),
        (400, "too many channels: at most 100".into())
    );
    // (The SDKs refuse a malformed socket_id before sending; Aviary refuses it too.)
    let bad_socket = br#"{"name":"e","channels":["orders"],"data":"{}","socket_id":"abc"}"#;
    let answer = http
        .post(signed_url(&base, cred, "POST", &path, bad_socket, now, &[]))
        .body(&bad_socket[..])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let bad_info = app.node_sdk(cred, "get", json!({"path": "/channels", "params": {"info": "user_count"}})).await;
    assert_eq!(refused(&bad_info).0, 400, "user_count needs the presence- prefix");

    // The credential's capabilities, the app's quotas: 403 (Pusher's "forbidden"), 413 for size.
    let chat_only = app.create_credential(json!({"capabilities": {"chat:*": ["publish"]}})).await;
    ok(&app.node_sdk(&chat_only, "trigger", json!({"channels": ["chat;room"], "event": "e", "data": "{}"})).await);
    assert_eq!(refused(&app.node_sdk(&chat_only, "trigger", trigger.clone()).await).0, 403);
    app.set_quotas(json!({"max_connections": 100, "max_messages_per_s": 2, "max_message_bytes": 64,
        "max_subscriptions_per_connection": 10, "max_presence_members": 10}))
        .await;
    let large = json!({"channels": ["orders"], "event": "e", "data": {"text": "x".repeat(100)}});
    assert_eq!(refused(&app.node_sdk(cred, "trigger", large).await).0, 413);
    let five = json!({"channels": ["a", "b", "c", "d", "e"], "event": "e", "data": "{}"});
    let (status, text) = refused(&app.node_sdk(cred, "trigger", five).await);
    assert_eq!((status, text.as_str()), (403, "message rate limit of 2/s exceeded"));

    // A revoked credential is unknown at once.
    app.revoke_credential(&chat_only.key).await;
    assert_eq!(
        refused(
            &app.node_sdk(&chat_only, "trigger", json!({"channels": ["chat;room"], "event": "e", "data": "{}"})).await
        ),
        (401, "unknown auth_key".into())
    );
}
