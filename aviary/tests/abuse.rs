//! Attacks on a real `aviary dev`, one test per defect of the abuse review (issue 16): each test
//! performs the attack against the binary and asserts what a legitimate user still gets.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::{Proc, WAIT, send};

/// A running `aviary dev` with the demo app's credentials.
struct Dev {
    proc: Proc,
    data_dir: PathBuf,
    app_id: String,
    api_key: String,
    admin_key: String,
}

impl Dev {
    fn start(extra: &[&str], nofile: Option<u64>) -> Dev {
        let data_dir = std::env::temp_dir().join(format!("aviary-abuse-test-{}", uuid::Uuid::new_v4().simple()));
        let dir = data_dir.to_str().expect("temp dirs are UTF-8").to_owned();
        let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir", &dir];
        args.extend_from_slice(extra);
        let proc = Proc::spawn_with_nofile(&args, &[("AVIARY_OPERATOR_TOKEN", "")], nofile);
        Dev {
            app_id: proc.banner_value("app id").expect("the demo app id"),
            api_key: proc.banner_value("API key").expect("the demo API key"),
            admin_key: proc.banner_value("admin key").expect("the demo admin key"),
            proc,
            data_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.proc.url(path)
    }

    async fn token(&self, client_id: &str, capabilities: Value) -> String {
        let http = reqwest::Client::new();
        let (status, minted) = send(
            http.post(self.url(&format!("/v1/apps/{}/tokens", self.app_id)))
                .bearer_auth(&self.api_key)
                .json(&json!({"client_id": client_id, "ttl_s": 600, "capabilities": capabilities})),
        )
        .await;
        assert_eq!(status, 200, "{minted}");
        minted["token"].as_str().expect("a token").to_owned()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Opens a WebSocket and sends `connect`: `Ok` when connected, else the close code.
async fn connect_outcome(server: SocketAddr, token: &str) -> Result<(), u16> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{server}/v1/connect")).await.expect("upgrade");
    ws.send(Message::text(json!({"type": "connect", "token": token}).to_string())).await.expect("sent");
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next()).await.expect("an answer in time");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON");
                if frame["type"] == "connected" {
                    return Ok(());
                }
            }
            Some(Ok(Message::Close(close))) => return Err(close.map_or(1005, |c| u16::from(c.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return Err(1006),
        }
    }
}

/// Raises this test process's own descriptor limit so it can hold the attack's sockets.
fn raise_own_nofile(want: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_cur.max(want.min(limit.rlim_max));
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// A TCP connection to `server` from the loopback address `source` (127.0.0.0/8 is all local).
async fn connect_from(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(server).await
}

/// One HTTP/1.1 request on a fresh connection from `source`; the status line's code and the
/// body. `None` when the server did not answer within `WAIT`.
async fn fresh_get(source: IpAddr, server: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(WAIT, async {
        let mut stream = connect_from(source, server).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {server}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.split_whitespace().nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((status, body))
    })
    .await
    .ok()
    .flatten()
}

/// Waits until the server closes `stream` (EOF or reset); false if it is still open at
/// `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // A refusal's 503: keep reading until the close.
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Defect 1: 1,100 silent sockets against a node whose `ulimit -n` is 256 made `/healthz` and
/// every new WebSocket time out. Now the silent sockets are capped per source address, the
/// descriptor budget keeps a reserve that answers health checks, anything else is refused with
/// a 503 problem, and the silent sockets are closed after the header timeout.
#[tokio::test]
async fn silent_sockets_cannot_lock_the_node_out() {
    const SILENT: usize = 1_100;
    raise_own_nofile(4096);
    let dev = Dev::start(&["--http-header-timeout-s", "5", "--max-pending-per-ip", "64"], Some(256));
    let server = dev.proc.addr;
    let token = dev.token("victim", json!({"chat:*": ["subscribe"]})).await;

    // The attack: 1,100 connections that never send a byte, from eleven source addresses.
    let mut silent = Vec::with_capacity(SILENT);
    for i in 0..SILENT {
        let source = IpAddr::from([127, 0, 0, 2 + (i % 11) as u8]);
        if let Ok(stream) = connect_from(source, server).await {
            silent.push(stream);
        }
    }
    assert!(silent.len() > 1_000, "the attack opened {} sockets", silent.len());

    // A health check from elsewhere still gets an answer (from the reserve if need be), never a
    // timeout; a new WebSocket gets through or is refused with a problem document.
    let me = IpAddr::from([127, 0, 0, 1]);
    let metrics = dev.proc.metrics_url("").trim_start_matches("http://").parse().expect("metrics address");
    let (status, body) = fresh_get(me, metrics, "/healthz").await.expect("the operator's /healthz answers");
    assert_eq!(status, 200, "{body}");
    // On the public port every answer is a 200 (from the health-check reserve) or a 503
    // problem; once the reserve's silent sockets time out (1 s), health checks get 200.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = fresh_get(me, server, "/healthz").await.expect("/healthz answers during the attack");
        if status == 200 {
            break;
        }
        assert!(body.contains("https://aviary.dev/problems/connection-refused"), "{status} {body}");
        assert!(tokio::time::Instant::now() < deadline, "/healthz never answered 200 during the attack");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://{server}/v1/connect"))).await {
        Err(_) => panic!("a new WebSocket hung during the attack"),
        Ok(Ok(_)) => {}
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("https://aviary.dev/problems/connection-refused"), "{body}");
        }
        Ok(Err(e)) => panic!("a new WebSocket failed without a clear refusal: {e}"),
    }

    // The server closes every silent socket: refused ones at once, admitted ones at the header
    // timeout (5 s here).
    for stream in &mut silent {
        assert!(closed_by_server(stream, Duration::from_secs(30)).await, "a silent socket outlived the header timeout");
    }
    drop(silent);

    // Once the attackers are gone the node serves normally again.
    let (status, body) = fresh_get(me, server, "/healthz").await.expect("/healthz answers");
    assert_eq!(status, 200, "{body}");
    let ws = common::connect(&format!("ws://{server}/v1/connect"), &token).await;
    drop(ws);
}

/// Defect 2: the API key id is public (it travels in every token as `akid`), and wrong-secret
/// guesses for it queued ahead of the right secret: a cold key's first legitimate request
/// waited 2.2–6.9 s behind 64–200 guessers. Now guesses never queue ahead of it, each source
/// address has a budget of failed checks (then 429), and the legitimate request gets through.
#[tokio::test]
async fn wrong_secret_guesses_do_not_stall_the_right_key() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const GUESSERS: usize = 200;
    raise_own_nofile(4096);
    let dev = Dev::start(&[], None);
    let key_id = dev.api_key.split('_').nth(1).expect("avk_<id>_<secret>").to_owned();
    let publish = dev.url(&format!("/v1/apps/{}/channels/chat:guess/messages", dev.app_id));
    let attacker = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .pool_max_idle_per_host(GUESSERS)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(tokio::sync::Semaphore::new(0));
    let (refused, throttled, accepted) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut guessers = Vec::new();
    for g in 0..GUESSERS {
        let (attacker, publish, key_id, stop, answered) =
            (attacker.clone(), publish.clone(), key_id.clone(), stop.clone(), answered.clone());
        let (refused, throttled, accepted) = (refused.clone(), throttled.clone(), accepted.clone());
        guessers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let guess = format!("avk_{key_id}_{:0>40}", format!("{g}x{n}"));
                let Ok(res) = attacker.post(&publish).bearer_auth(guess).json(&json!({"data": "guess"})).send().await
                else {
                    continue;
                };
                match res.status().as_u16() {
                    401 => refused.fetch_add(1, Ordering::Relaxed),
                    429 => throttled.fetch_add(1, Ordering::Relaxed),
                    _ => accepted.fetch_add(1, Ordering::Relaxed),
                };
                answered.add_permits(1);
            }
        }));
    }
    // The attack is in full swing once every guesser has had an answer on average.
    let swing = tokio::time::timeout(Duration::from_secs(60), answered.acquire_many(GUESSERS as u32)).await;
    swing.expect("the guessers got answers").unwrap().forget();

    // The legitimate backend, from another address, with the key's first use in this process
    // (its cache is cold).
    let backend = reqwest::Client::builder().local_address(IpAddr::from([127, 0, 0, 1])).build().unwrap();
    let started = std::time::Instant::now();
    let (status, body) =
        send(backend.post(&publish).bearer_auth(&dev.api_key).json(&json!({"data": "legitimate"}))).await;
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for g in guessers {
        g.await.unwrap();
    }
    eprintln!(
        "legitimate first use behind {GUESSERS} guessers: {status} after {waited:?}; guesses refused 401: {}, 429: {}",
        refused.load(Ordering::Relaxed),
        throttled.load(Ordering::Relaxed)
    );
    assert_eq!(status, 201, "the right key got through the guessing: {body}");
    assert_eq!(accepted.load(Ordering::Relaxed), 0, "no guess was accepted");
    assert!(throttled.load(Ordering::Relaxed) > 0, "the guessing address was rate-limited (429)");
}

/// Defect 6: revocation compared whole seconds, so a token minted in the same second as
/// `POST .../clients/{id}/revoke` was refused for its whole life. Now the cutoff and the
/// token's issue time (its UUIDv7 `jti`) are compared in milliseconds.
#[tokio::test]
async fn a_token_minted_right_after_a_revocation_connects() {
    let dev = Dev::start(&[], None);
    let server = dev.proc.addr;
    let before = dev.token("carol", json!({"chat:*": ["subscribe"]})).await;
    let http = reqwest::Client::new();
    let (status, revoked) =
        send(http.post(dev.url(&format!("/v1/apps/{}/clients/carol/revoke", dev.app_id))).bearer_auth(&dev.admin_key))
            .await;
    assert_eq!(status, 200, "{revoked}");
    let after = dev.token("carol", json!({"chat:*": ["subscribe"]})).await;
    assert_eq!(connect_outcome(server, &before).await, Err(4010), "the earlier token is revoked");
    assert_eq!(connect_outcome(server, &after).await, Ok(()), "a token minted after the revocation connects");
}

/// Defect 7: `/metrics` listed every tenant and app to anyone on the public port. Now it is
/// served only on the metrics listener (loopback by default), with the per-tenant series kept
/// for the operator.
#[tokio::test]
async fn metrics_are_not_served_on_the_public_port() {
    let dev = Dev::start(&[], None);
    let _ = dev.token("metrics-probe", json!({"chat:*": ["subscribe"]})).await;
    let http = reqwest::Client::new();
    let public = http.get(dev.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404, "no metrics on the public port");
    let operator = http.get(dev.proc.metrics_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(operator.contains("tenant=\""), "per-tenant series are kept for the operator: {operator}");
    assert!(dev.proc.metrics_url("/metrics").starts_with("http://127.0.0.1:"), "loopback by default");
}

/// Opens a WebSocket by hand (so the test can then write frames no library would) and returns
/// the socket after the `101`.
async fn raw_websocket(server: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(server).await.expect("connects");
    let request = format!(
        "GET /v1/connect HTTP/1.1\r\nhost: {server}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, stream.read_exact(&mut byte)).await.expect("a handshake answer").unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// A masked client frame: `first` is the FIN/RSV/opcode byte.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![first, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads server frames until the close frame: the `disconnect` frame's JSON and the close code.
async fn farewell(stream: &mut TcpStream) -> (Option<Value>, Option<u16>) {
    let mut disconnect = None;
    loop {
        let mut head = [0u8; 2];
        if tokio::time::timeout(WAIT, stream.read_exact(&mut head)).await.expect("a frame in time").is_err() {
            return (disconnect, None);
        }
        let len = match head[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                stream.read_exact(&mut ext).await.unwrap();
                usize::from(u16::from_be_bytes(ext))
            }
            127 => {
                let mut ext = [0u8; 8];
                stream.read_exact(&mut ext).await.unwrap();
                u64::from_be_bytes(ext) as usize
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        match head[0] & 0x0f {
            0x1 => {
                let frame: Value = serde_json::from_slice(&payload).expect("JSON text frame");
                if frame["type"] == "disconnect" {
                    disconnect = Some(frame);
                }
            }
            0x8 => return (disconnect, (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))),
            _ => {}
        }
    }
}

/// Defect 9: WebSocket protocol violations closed the socket with no status (1005) and no
/// `disconnect` frame. Now invalid UTF-8 gets 1007 and other violations 1002, each announced
/// by a `disconnect` frame with the same code.
#[tokio::test]
async fn websocket_protocol_violations_get_their_close_codes() {
    let dev = Dev::start(&[], None);
    let server = dev.proc.addr;
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("invalid UTF-8 in a text frame", client_frame(0x81, &[0x7b, 0xff, 0xfe, 0x7d]), 1007),
        ("a reserved opcode", client_frame(0x83, b"{}"), 1002),
        ("a continuation without a start", client_frame(0x80, b"{}"), 1002),
    ];
    for (what, frame, code) in cases {
        let mut ws = raw_websocket(server).await;
        ws.write_all(&frame).await.unwrap();
        let (disconnect, close) = farewell(&mut ws).await;
        let disconnect = disconnect.unwrap_or_else(|| panic!("{what}: no disconnect frame"));
        assert_eq!(disconnect["code"], code, "{what}: {disconnect}");
        assert_eq!(close, Some(code), "{what}: close code");
    }
}

/// Defect 4: idempotency keys were shared by every publisher of a channel, so a client that used
/// a backend's key first (`order-1234` with `cancelled`) made the backend's `paid` answer 201
/// with the client's position and never deliver. Keys are now scoped to their publisher, and a
/// repeat with another payload is refused with 409.
#[tokio::test]
async fn a_client_cannot_suppress_a_backend_publication_with_its_idempotency_key() {
    let dev = Dev::start(&[], None);
    let watcher_token = dev.token("watcher", json!({"orders:*": ["subscribe"]})).await;
    let mallory_token = dev.token("mallory", json!({"orders:*": ["publish"]})).await;
    let mut watcher = common::connect(&dev.proc.ws_url(), &watcher_token).await;
    let ok = common::request(&mut watcher, 1, json!({"type": "subscribe", "channel": "orders:42"})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let mut mallory = common::connect(&dev.proc.ws_url(), &mallory_token).await;
    let first = common::request(
        &mut mallory,
        1,
        json!({"type": "publish", "channel": "orders:42", "data": "cancelled", "idempotency_key": "order-1234"}),
    )
    .await;
    assert_eq!(first["type"], "ok", "{first}");

    let http = reqwest::Client::new();
    let publish = dev.url(&format!("/v1/apps/{}/channels/orders:42/messages", dev.app_id));
    let paid = json!({"data": "paid", "idempotency_key": "order-1234"});
    let (status, backend) = send(http.post(&publish).bearer_auth(&dev.api_key).json(&paid)).await;
    assert_eq!(status, 201, "{backend}");
    assert_ne!(backend["offset"], first["offset"], "the backend's message got its own position: {backend} {first}");
    let delivered: Vec<Value> =
        vec![common::next_of_type(&mut watcher, "message").await, common::next_of_type(&mut watcher, "message").await];
    assert_eq!(delivered[0]["data"], "cancelled");
    assert_eq!(delivered[1]["data"], "paid", "the backend's publication was delivered");

    // The backend's own retry is still idempotent; a retry with another payload is refused.
    let (status, again) = send(http.post(&publish).bearer_auth(&dev.api_key).json(&paid)).await;
    assert_eq!((status, &again["offset"]), (201, &backend["offset"]), "{again}");
    let (status, conflict) = send(
        http.post(&publish)
            .bearer_auth(&dev.api_key)
            .json(&json!({"data": "refunded", "idempotency_key": "order-1234"})),
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["type"], "https://aviary.dev/problems/conflict");
}

/// base64url without padding (the SSE event-id encoding), so the test can craft an id.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Defect 3: a subscribe-only token read everything retained with `subscribe` + `since
/// {epoch, 0}` (the epoch is in any subscribe reply), and over SSE with a crafted
/// `Last-Event-ID`. Without the `history` capability, resume now reaches back only to the
/// token's issue time; further is `recovered: false` with nothing replayed, on both transports.
#[tokio::test]
async fn a_subscribe_only_token_cannot_read_history_by_resuming() {
    use futures::StreamExt;
    let dev = Dev::start(&[], None);
    let http = reqwest::Client::new();
    let publish = dev.url(&format!("/v1/apps/{}/channels/chat:secret/messages", dev.app_id));
    let (status, first) =
        send(http.post(&publish).bearer_auth(&dev.api_key).json(&json!({"data": "old secret"}))).await;
    assert_eq!(status, 201, "{first}");
    let epoch = first["epoch"].as_str().unwrap().to_owned();

    // A history-capable token resumes from the start of the stream.
    let reader = dev.token("reader", json!({"chat:*": ["subscribe", "history"]})).await;
    let mut ws = common::connect(&dev.proc.ws_url(), &reader).await;
    let since = json!({"epoch": epoch, "offset": 0});
    let ok = common::request(&mut ws, 1, json!({"type": "subscribe", "channel": "chat:secret", "since": since})).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(common::next_of_type(&mut ws, "message").await["data"], "old secret");

    // A subscribe-only token minted afterwards gets nothing from before it.
    let snoop = dev.token("snoop", json!({"chat:*": ["subscribe"]})).await;
    let mut ws = common::connect(&dev.proc.ws_url(), &snoop).await;
    let ok = common::request(&mut ws, 1, json!({"type": "subscribe", "channel": "chat:secret", "since": since})).await;
    assert_eq!(ok["recovered"], false, "resume beyond the capability is refused: {ok}");
    let (status, _) = send(http.post(&publish).bearer_auth(&dev.api_key).json(&json!({"data": "live"}))).await;
    assert_eq!(status, 201);
    assert_eq!(common::next_of_type(&mut ws, "message").await["data"], "live", "nothing older was replayed first");

    // The same over SSE with a crafted Last-Event-ID.
    let id = format!("v1.{}", base64url(json!({"chat:secret": [epoch, 0]}).to_string().as_bytes()));
    let response = http
        .get(dev.url("/v1/sse?channels=chat:secret"))
        .bearer_auth(&snoop)
        .header("last-event-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let subscribed = tokio::time::timeout(WAIT, async {
        loop {
            text.push_str(&String::from_utf8_lossy(&body.next().await.expect("stream open").unwrap()));
            if let Some(line) = text.lines().find(|l| l.starts_with("data: ") && l.contains("\"subscribed\"")) {
                return serde_json::from_str::<Value>(&line["data: ".len()..]).unwrap();
            }
        }
    })
    .await
    .expect("a subscribed event");
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert!(!text.contains("old secret"), "{text}");
}

/// Defect 8: after a `refresh` to `news:*`, an earlier `chat:*` subscription kept receiving.
/// Now the subscriptions the new token does not allow end, each with an `unsubscribed` push
/// naming the reason.
#[tokio::test]
async fn refresh_that_narrows_capabilities_ends_disallowed_subscriptions() {
    let dev = Dev::start(&[], None);
    let broad = dev.token("narrowed", json!({"chat:*": ["subscribe"], "news:*": ["subscribe"]})).await;
    let narrow = dev.token("narrowed", json!({"news:*": ["subscribe"]})).await;
    let mut ws = common::connect(&dev.proc.ws_url(), &broad).await;
    for (id, channel) in [(1, "chat:lobby"), (2, "news:today")] {
        let ok = common::request(&mut ws, id, json!({"type": "subscribe", "channel": channel})).await;
        assert_eq!(ok["type"], "ok", "{ok}");
    }
    // The push comes before the refresh's `ok`.
    common::send_frame(&mut ws, json!({"type": "refresh", "id": 3, "token": narrow})).await;
    let ended = common::next_of_type(&mut ws, "unsubscribed").await;
    let ok = common::next_matching(&mut ws, |f| f["id"] == 3).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(ended["channel"], "chat:lobby", "{ended}");
    assert!(ended["reason"].as_str().is_some_and(|r| !r.is_empty()), "{ended}");

    let http = reqwest::Client::new();
    for (channel, data) in [("chat:lobby", "not for you"), ("news:today", "for you")] {
        let url = dev.url(&format!("/v1/apps/{}/channels/{channel}/messages", dev.app_id));
        let (status, _) = send(http.post(url).bearer_auth(&dev.api_key).json(&json!({"data": data}))).await;
        assert_eq!(status, 201);
    }
    let message = common::next_of_type(&mut ws, "message").await;
    assert_eq!((message["channel"].as_str(), message["data"].as_str()), (Some("news:today"), Some("for you")));
}

/// Defect 10 (in part): `GET /v1/connect` without an upgrade and `/v1/sse` without `channels`
/// answered 400 `text/plain`; every refusal is a problem document.
#[tokio::test]
async fn transport_refusals_are_problem_documents() {
    let dev = Dev::start(&[], None);
    let http = reqwest::Client::new();
    for path in ["/v1/connect", "/v1/sse"] {
        let response = http.get(dev.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let kind = response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned();
        assert_eq!(kind, "application/problem+json", "{path}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "https://aviary.dev/problems/bad-request", "{path}: {problem}");
    }
}
