//! The [`Store`] contract as executable checks. Every implementation runs all of them
//! (`tests/control_plane.rs` runs each against Postgres in a private schema and against a
//! fresh SQLite file). Each check starts from an empty, migrated store.

use aviary_core::usage::UsageRecord;
use aviary_core::{Capabilities, Namespace, Operation, Quotas};
use chrono::TimeDelta;

use aviary_core::webhook::{WebhookEvent, WebhookFormat};

use super::{
    AdminKeyRecord, ApiKeyRecord, App, PageRequest, PusherCredentialRecord, SigningKeyRecord, Store, Tenant,
    WebhookRecord, now,
};
use crate::error::Error;

fn id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

fn tenant(name: &str) -> Tenant {
    let at = now();
    Tenant {
        id: id("ten_"),
        name: name.into(),
        enabled: true,
        quotas: Quotas::default(),
        created_at: at,
        updated_at: at,
    }
}

fn admin_key(tenant_id: &str) -> AdminKeyRecord {
    AdminKeyRecord {
        id: uuid::Uuid::now_v7().simple().to_string(),
        tenant_id: tenant_id.into(),
        secret_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_at: now(),
        last_used_at: None,
        revoked_at: None,
    }
}

fn app(tenant_id: &str, name: &str) -> App {
    let at = now();
    App {
        id: id("app_"),
        tenant_id: tenant_id.into(),
        name: name.into(),
        enabled: true,
        allowed_origins: vec!["https://example.com".into()],
        max_token_ttl_s: 3600,
        namespaces: vec![
            Namespace::default_namespace(),
            Namespace { name: "chat".into(), ..Namespace::default_namespace() },
        ],
        quotas: Some(Quotas { max_connections: 10, ..Quotas::default() }),
        created_at: at,
        updated_at: at,
    }
}

fn api_key(app: &App) -> ApiKeyRecord {
    ApiKeyRecord {
        id: uuid::Uuid::now_v7().simple().to_string(),
        app_id: app.id.clone(),
        tenant_id: app.tenant_id.clone(),
        name: "backend".into(),
        capabilities: Capabilities::from_pairs([("chat:*", &[Operation::Subscribe, Operation::Publish][..])]),
        secret_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_at: now(),
        last_used_at: None,
        revoked_at: None,
    }
}

async fn seed(store: &dyn Store, name: &str) -> Tenant {
    let t = tenant(name);
    store.create_tenant(&t, &admin_key(&t.id)).await.expect("create tenant");
    t
}

/// Records come back exactly as written; tenant names are unique and a clash writes nothing.
pub async fn tenants_round_trip_and_names_are_unique(store: &dyn Store) {
    store.ping().await.expect("ping");
    let t = tenant("acme");
    let key = admin_key(&t.id);
    store.create_tenant(&t, &key).await.unwrap();
    assert_eq!(store.tenant(&t.id).await.unwrap(), Some(t.clone()));
    assert_eq!(store.admin_key(&key.id).await.unwrap(), Some(key.clone()));

    let clash = tenant("acme");
    let clash_key = admin_key(&clash.id);
    assert!(matches!(store.create_tenant(&clash, &clash_key).await, Err(Error::Conflict(_))));
    assert_eq!(store.tenant(&clash.id).await.unwrap(), None, "a refused tenant leaves nothing behind");
    assert_eq!(store.admin_key(&clash_key.id).await.unwrap(), None, "the admin key is in the same transaction");

    let other = seed(store, "other").await;
    assert!(!store.revoke_admin_key(&other.id, &key.id, now()).await.unwrap(), "another tenant's key");
    let revoked_at = now();
    assert!(store.revoke_admin_key(&t.id, &key.id, revoked_at).await.unwrap());
    assert!(store.revoke_admin_key(&t.id, &key.id, revoked_at + TimeDelta::seconds(1)).await.unwrap(), "idempotent");
    assert_eq!(store.admin_key(&key.id).await.unwrap().unwrap().revoked_at, Some(revoked_at));

    let mut changed = t.clone();
    changed.name = "acme-2".into();
    changed.enabled = false;
    changed.quotas.max_connections = 5;
    changed.updated_at = now();
    assert!(store.update_tenant(&changed).await.unwrap());
    assert_eq!(store.tenant(&t.id).await.unwrap(), Some(changed));
    assert!(!store.update_tenant(&tenant("ghost")).await.unwrap());
    assert_eq!(store.tenant("ten_missing").await.unwrap(), None);
}

/// Keyset pagination visits every record once, in creation order.
pub async fn lists_paginate_without_gaps_or_repeats(store: &dyn Store) {
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(seed(store, &format!("tenant {i}")).await.id);
    }
    let mut seen = Vec::new();
    let mut page = PageRequest::first(3);
    loop {
        let got = store.list_tenants(&page).await.unwrap();
        assert!(got.items.len() <= 3);
        seen.extend(got.items.into_iter().map(|t| t.id));
        match got.next_after {
            Some(after) => page.after = Some(after),
            None => break,
        }
    }
    assert_eq!(seen, created);

    let owner = seed(store, "owner").await;
    let apps: Vec<App> = (0..5).map(|i| app(&owner.id, &format!("app {i}"))).collect();
    for a in &apps {
        store.create_app(a).await.unwrap();
    }
    let first = store.list_apps(&owner.id, &PageRequest::first(2)).await.unwrap();
    assert_eq!(first.items, apps[..2]);
    let rest = store.list_apps(&owner.id, &PageRequest { after: first.next_after, limit: 10 }).await.unwrap();
    assert_eq!(rest.items, apps[2..]);
    assert_eq!(rest.next_after, None);
    assert_eq!(store.all_apps().await.unwrap(), apps);
}

/// App names are unique per tenant, need an existing tenant, and updates replace settings.
pub async fn apps_are_unique_per_tenant_and_need_a_tenant(store: &dyn Store) {
    let a = seed(store, "a").await;
    let b = seed(store, "b").await;
    let first = app(&a.id, "web");
    store.create_app(&first).await.unwrap();
    assert!(matches!(store.create_app(&app(&a.id, "web")).await, Err(Error::Conflict(_))));
    store.create_app(&app(&b.id, "web")).await.expect("same name in another tenant is fine");
    assert!(matches!(store.create_app(&app("ten_missing", "web")).await, Err(Error::NotFound(_))));

    let mut changed = first.clone();
    changed.enabled = false;
    changed.allowed_origins = vec![];
    changed.quotas = None;
    changed.namespaces = vec![Namespace::default_namespace()];
    changed.max_token_ttl_s = 60;
    changed.updated_at = now();
    assert!(store.update_app(&changed).await.unwrap());
    assert_eq!(store.app(&first.id).await.unwrap(), Some(changed));
    assert_eq!(store.list_apps(&a.id, &PageRequest::first(10)).await.unwrap().items.len(), 1);
}

/// Deleting a tenant removes its admin keys, apps and API keys; deleting an app its keys.
pub async fn deletes_cascade(store: &dyn Store) {
    let t = tenant("doomed");
    let key = admin_key(&t.id);
    store.create_tenant(&t, &key).await.unwrap();
    let a1 = app(&t.id, "one");
    let a2 = app(&t.id, "two");
    store.create_app(&a1).await.unwrap();
    store.create_app(&a2).await.unwrap();
    let k1 = api_key(&a1);
    let k2 = api_key(&a2);
    store.create_api_key(&k1).await.unwrap();
    store.create_api_key(&k2).await.unwrap();

    assert!(store.delete_app(&a1.id).await.unwrap());
    assert_eq!(store.api_key(&k1.id).await.unwrap(), None);
    assert!(!store.delete_app(&a1.id).await.unwrap());

    assert!(store.delete_tenant(&t.id).await.unwrap());
    assert_eq!(store.tenant(&t.id).await.unwrap(), None);
    assert_eq!(store.admin_key(&key.id).await.unwrap(), None);
    assert_eq!(store.app(&a2.id).await.unwrap(), None);
    assert_eq!(store.api_key(&k2.id).await.unwrap(), None);
    assert!(!store.delete_tenant(&t.id).await.unwrap());
    assert!(matches!(store.create_api_key(&api_key(&a2)).await, Err(Error::NotFound(_))));
}

/// Revocation is scoped to the key's app, keeps the first revocation time, and is listed.
pub async fn api_key_revocation_is_recorded_once(store: &dyn Store) {
    let t = seed(store, "keys").await;
    let a = app(&t.id, "app");
    let other = app(&t.id, "other");
    store.create_app(&a).await.unwrap();
    store.create_app(&other).await.unwrap();
    let k = api_key(&a);
    store.create_api_key(&k).await.unwrap();
    assert_eq!(store.api_key(&k.id).await.unwrap(), Some(k.clone()));

    let used = now();
    store.touch_api_key(&k.id, used).await.unwrap();
    store.touch_api_key("missing", used).await.expect("touching a missing key is not an error");
    assert_eq!(store.api_key(&k.id).await.unwrap().unwrap().last_used_at, Some(used));

    assert!(!store.revoke_api_key(&other.id, &k.id, now()).await.unwrap(), "wrong app");
    assert_eq!(store.api_key(&k.id).await.unwrap().unwrap().revoked_at, None);
    let at = now();
    assert!(store.revoke_api_key(&a.id, &k.id, at).await.unwrap());
    assert!(store.revoke_api_key(&a.id, &k.id, at + TimeDelta::seconds(10)).await.unwrap(), "idempotent");
    assert_eq!(store.api_key(&k.id).await.unwrap().unwrap().revoked_at, Some(at));
    assert_eq!(store.revoked_api_keys().await.unwrap(), vec![(a.id.clone(), k.id.clone())]);
    let listed = store.list_api_keys(&a.id, &PageRequest::first(10)).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].revoked_at, Some(at));
}

/// Rotation retires the current key, inserts the new one and purges long-retired keys.
pub async fn signing_key_rotation_retires_and_purges(store: &dyn Store) {
    assert!(store.signing_keys().await.unwrap().is_empty());
    let t0 = now() - TimeDelta::hours(48);
    let k =
        |kid: &str, at| SigningKeyRecord { kid: kid.into(), pkcs8: vec![1, 2, 3], created_at: at, retired_at: None };
    store.rotate_signing_key(&k("k1", t0), t0 - TimeDelta::days(1)).await.unwrap();
    let t1 = t0 + TimeDelta::hours(1);
    store.rotate_signing_key(&k("k2", t1), t1 - TimeDelta::days(1)).await.unwrap();
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(), ["k2", "k1"]);
    assert_eq!(keys[0].retired_at, None);
    assert_eq!(keys[1].retired_at, Some(t1));
    assert_eq!(keys[1].pkcs8, vec![1, 2, 3]);

    // k1 retired at t1, which is before the cutoff: purged. k2 retires now and is kept.
    let t2 = now();
    store.rotate_signing_key(&k("k3", t2), t1 + TimeDelta::minutes(1)).await.unwrap();
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(), ["k3", "k2"]);
    assert_eq!(keys.iter().filter(|k| k.retired_at.is_none()).count(), 1);
}

/// A marker is set by exactly one call.
pub async fn markers_are_set_once(store: &dyn Store) {
    assert!(!store.has_marker("demo").await.unwrap());
    assert!(store.set_marker("demo").await.unwrap());
    assert!(!store.set_marker("demo").await.unwrap());
    assert!(store.has_marker("demo").await.unwrap());
}

/// Strings that look like SQL are data: stored and returned verbatim, nothing executed.
pub async fn sql_looking_values_are_stored_literally(store: &dyn Store) {
    let name = "x'); DROP TABLE tenants; --";
    let t = seed(store, name).await;
    assert_eq!(store.tenant(&t.id).await.unwrap().unwrap().name, name);
    let mut a = app(&t.id, "'; DELETE FROM apps WHERE '1'='1");
    a.allowed_origins = vec!["https://x.com\"); DROP TABLE apps; --".into()];
    store.create_app(&a).await.unwrap();
    assert_eq!(store.app(&a.id).await.unwrap(), Some(a));
    assert_eq!(store.tenant("' OR '1'='1").await.unwrap(), None);
    assert_eq!(store.list_tenants(&PageRequest::first(10)).await.unwrap().items.len(), 1);
}

/// Client revocations keep the latest cutoff, need an existing app and go with it.
pub async fn client_revocations_keep_the_latest_cutoff(store: &dyn Store) {
    let t = seed(store, "clients").await;
    let a = app(&t.id, "app");
    store.create_app(&a).await.unwrap();
    store.revoke_client(&a.id, "user-1", 100).await.unwrap();
    store.revoke_client(&a.id, "user-1", 50).await.unwrap();
    store.revoke_client(&a.id, "user-2", 70).await.unwrap();
    assert_eq!(
        store.revoked_clients().await.unwrap(),
        vec![(a.id.clone(), "user-1".to_owned(), 100), (a.id.clone(), "user-2".to_owned(), 70)]
    );
    store.revoke_client(&a.id, "user-1", 200).await.unwrap();
    assert_eq!(store.revoked_clients().await.unwrap()[0].2, 200);
    assert!(matches!(store.revoke_client("app_missing", "u", 1).await, Err(Error::NotFound(_))));
    assert!(store.delete_app(&a.id).await.unwrap());
    assert!(store.revoked_clients().await.unwrap().is_empty());
}

fn pusher_credential(app: &App, key: &str, pusher_app_id: u64) -> PusherCredentialRecord {
    PusherCredentialRecord {
        key: key.into(),
        app_id: app.id.clone(),
        tenant_id: app.tenant_id.clone(),
        pusher_app_id,
        capabilities: Capabilities::from_pairs([("presence-*", &[Operation::Subscribe, Operation::Presence][..])]),
        client_events: true,
        sealed_secret: vec![1, 0, 255, 7],
        created_at: now(),
        revoked_at: None,
    }
}

/// An app gets one numeric Pusher id with its first credential, kept for every later one; ids
/// and keys are unique; revocation erases the sealed secret, is listed and keeps the first time;
/// credentials go with their app.
pub async fn pusher_credentials_share_one_app_id_and_revoke_once(store: &dyn Store) {
    let t = seed(store, "pusher").await;
    let a = app(&t.id, "app");
    let b = app(&t.id, "other");
    store.create_app(&a).await.unwrap();
    store.create_app(&b).await.unwrap();
    let first = pusher_credential(&a, "0000000000aa00000001", 1_234_567);
    assert_eq!(store.create_pusher_credential(&first).await.unwrap(), 1_234_567);
    let second = pusher_credential(&a, "0000000000aa00000002", 7_654_321);
    assert_eq!(store.create_pusher_credential(&second).await.unwrap(), 1_234_567, "the app keeps its id");
    assert!(
        matches!(
            store.create_pusher_credential(&pusher_credential(&b, "0000000000bb00000001", 1_234_567)).await,
            Err(Error::Conflict(_))
        ),
        "another app cannot take the id"
    );
    assert!(matches!(
        store.create_pusher_credential(&pusher_credential(&b, &first.key, 99)).await,
        Err(Error::Conflict(_))
    ));
    assert!(
        store.list_pusher_credentials(&b.id, &PageRequest::first(10)).await.unwrap().items.is_empty(),
        "nothing written"
    );
    assert_eq!(
        store.create_pusher_credential(&pusher_credential(&a, "0000000000cc00000001", 5)).await.unwrap(),
        1_234_567
    );
    let mut missing = pusher_credential(&a, "0000000000dd00000001", 6);
    missing.app_id = "app_missing".into();
    assert!(matches!(store.create_pusher_credential(&missing).await, Err(Error::NotFound(_))));

    let page = store.list_pusher_credentials(&a.id, &PageRequest::first(2)).await.unwrap();
    assert_eq!(page.items, vec![first.clone(), PusherCredentialRecord { pusher_app_id: 1_234_567, ..second.clone() }]);
    let rest =
        store.list_pusher_credentials(&a.id, &PageRequest { after: page.next_after.clone(), limit: 2 }).await.unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next_after, None);
    assert_eq!(store.live_pusher_credentials().await.unwrap().len(), 3);

    assert!(!store.revoke_pusher_credential(&b.id, &first.key, now()).await.unwrap(), "wrong app");
    let at = now();
    assert!(store.revoke_pusher_credential(&a.id, &first.key, at).await.unwrap());
    assert!(store.revoke_pusher_credential(&a.id, &first.key, at + TimeDelta::seconds(5)).await.unwrap());
    let listed = store.list_pusher_credentials(&a.id, &PageRequest::first(10)).await.unwrap().items;
    assert_eq!(listed[0].revoked_at, Some(at));
    assert!(listed[0].sealed_secret.is_empty(), "a revoked secret is not kept");
    let live = store.live_pusher_credentials().await.unwrap();
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|c| c.key != first.key && c.pusher_app_id == 1_234_567));

    assert!(store.delete_app(&a.id).await.unwrap());
    assert!(store.live_pusher_credentials().await.unwrap().is_empty());
    // The deleted app's id is free again.
    assert_eq!(
        store.create_pusher_credential(&pusher_credential(&b, "0000000000bb00000002", 1_234_567)).await.unwrap(),
        1_234_567
    );
}

fn webhook(app: &App, url: &str) -> WebhookRecord {
    let at = now();
    WebhookRecord {
        id: id("whk_"),
        app_id: app.id.clone(),
        tenant_id: app.tenant_id.clone(),
        url: url.into(),
        events: vec![WebhookEvent::ChannelOccupied, WebhookEvent::MemberRemoved],
        channels: Some("chat:*".into()),
        format: WebhookFormat::Aviary,
        sealed_secret: vec![1, 2, 3, 0, 255],
        created_at: at,
        updated_at: at,
    }
}

/// Webhooks round-trip exactly, belong to their app, keep their secret across updates, stop at
/// the per-tenant limit (counted over all the tenant's apps) and go with their app.
pub async fn webhooks_round_trip_and_stop_at_the_tenant_limit(store: &dyn Store) {
    let t = seed(store, "hooks").await;
    let other = seed(store, "hooks-other").await;
    let a = app(&t.id, "a");
    let b = app(&t.id, "b");
    let c = app(&other.id, "c");
    for x in [&a, &b, &c] {
        store.create_app(x).await.unwrap();
    }

    let first = webhook(&a, "https://hooks.example.com/1");
    store.create_webhook(&first, 3).await.unwrap();
    assert_eq!(store.webhook(&a.id, &first.id).await.unwrap(), Some(first.clone()));
    assert_eq!(store.webhook(&b.id, &first.id).await.unwrap(), None, "another app's endpoint is not found");
    assert!(matches!(store.create_webhook(&first, 3).await, Err(Error::Conflict(_))));
    let mut missing = webhook(&a, "https://hooks.example.com/x");
    missing.app_id = "app_missing".into();
    assert!(matches!(store.create_webhook(&missing, 3).await, Err(Error::NotFound(_))));

    let second = webhook(&a, "https://hooks.example.com/2");
    store.create_webhook(&second, 3).await.unwrap();
    let on_b = webhook(&b, "https://hooks.example.com/3");
    store.create_webhook(&on_b, 3).await.unwrap();
    let over = webhook(&b, "https://hooks.example.com/4");
    assert!(
        matches!(store.create_webhook(&over, 3).await, Err(Error::LimitReached(_))),
        "the limit counts every app of the tenant"
    );
    assert_eq!(store.webhook(&b.id, &over.id).await.unwrap(), None, "nothing written");
    store.create_webhook(&webhook(&c, "https://hooks.example.com/5"), 3).await.expect("another tenant's own limit");

    let page = store.list_webhooks(&a.id, &PageRequest::first(1)).await.unwrap();
    assert_eq!(page.items, vec![first.clone()]);
    let rest = store.list_webhooks(&a.id, &PageRequest { after: page.next_after.clone(), limit: 1 }).await.unwrap();
    assert_eq!(rest.items, vec![second.clone()]);
    assert_eq!(rest.next_after, None);
    let all: Vec<String> = store.all_webhooks().await.unwrap().into_iter().map(|w| w.id).collect();
    let mine = [&first.id, &second.id, &on_b.id];
    assert_eq!(all.iter().filter(|id| mine.contains(id)).count(), 3, "every app's endpoints");
    assert!(all.windows(2).all(|w| w[0] < w[1]), "ordered by id");

    let changed = WebhookRecord {
        url: "http://hooks.example.com/changed".into(),
        events: vec![WebhookEvent::MessagePublished],
        channels: None,
        format: WebhookFormat::Pusher,
        sealed_secret: vec![9, 9],
        updated_at: now() + TimeDelta::seconds(1),
        ..first.clone()
    };
    assert!(store.update_webhook(&changed).await.unwrap());
    assert_eq!(
        store.webhook(&a.id, &first.id).await.unwrap(),
        Some(WebhookRecord { sealed_secret: first.sealed_secret.clone(), ..changed.clone() }),
        "every mutable field changed, the secret kept"
    );
    assert!(!store.update_webhook(&WebhookRecord { app_id: b.id.clone(), ..changed }).await.unwrap(), "wrong app");

    assert!(!store.delete_webhook(&b.id, &first.id).await.unwrap(), "wrong app");
    assert!(store.delete_webhook(&a.id, &first.id).await.unwrap());
    assert!(!store.delete_webhook(&a.id, &first.id).await.unwrap());
    store.create_webhook(&over, 3).await.expect("a deleted endpoint frees its place");

    assert!(store.delete_app(&a.id).await.unwrap());
    assert!(store.list_webhooks(&a.id, &PageRequest::first(10)).await.unwrap().items.is_empty());
    store
        .create_webhook(&webhook(&b, "https://hooks.example.com/6"), 3)
        .await
        .expect("the app's endpoints went with it");
}

fn usage(tenant_id: &str, app_id: &str, from_ms: i64, peak: u64, published: u64) -> UsageRecord {
    UsageRecord {
        tenant_id: tenant_id.into(),
        app_id: app_id.into(),
        from_ms,
        to_ms: from_ms + 10_000,
        peak_connections: peak,
        connection_ms: 60_000,
        messages_published: published,
        messages_delivered: published * 3,
        bytes_in: published * 10,
        bytes_out: published * 30,
        webhook_events: published * 2,
    }
}

/// A batch counts once per (node, seq); buckets are hourly and per tenant/app; a bucket's
/// peak is the sum over nodes of each node's highest peak.
pub async fn usage_batches_count_once_into_hourly_buckets(store: &dyn Store) {
    let hour = 1_700_000_000_i64 / 3600 * 3600;
    let ms = hour * 1000;
    let first = [usage("ten_a", "app_1", ms, 5, 10), usage("ten_b", "app_9", ms, 1, 1)];
    assert!(store.record_usage("node-1", 1, &first).await.unwrap());
    assert!(!store.record_usage("node-1", 1, &first).await.unwrap(), "a retried batch changes nothing");
    assert!(store.record_usage("node-2", 1, &[usage("ten_a", "app_1", ms + 5_000, 2, 4)]).await.unwrap());
    // Same node, same hour, lower peak: the node's peak stays 5.
    assert!(store.record_usage("node-1", 2, &[usage("ten_a", "app_1", ms + 20_000, 3, 1)]).await.unwrap());
    // Next hour.
    assert!(store.record_usage("node-1", 3, &[usage("ten_a", "app_1", ms + 3_600_000, 1, 7)]).await.unwrap());

    let got = store.usage_buckets(Some("ten_a"), hour, hour + 7200).await.unwrap();
    assert_eq!(got.len(), 2);
    let b = &got[0];
    assert_eq!((b.app_id.as_str(), b.hour_start), ("app_1", hour));
    assert_eq!((b.messages_published, b.messages_delivered, b.bytes_in, b.bytes_out), (15, 45, 150, 450));
    assert_eq!(b.connection_ms, 180_000);
    assert_eq!(b.webhook_events, 30, "webhook deliveries count like messages");
    assert_eq!(b.peak_connections, 7, "node-1's max (5) + node-2's (2)");
    assert_eq!((got[1].hour_start, got[1].messages_published, got[1].peak_connections), (hour + 3600, 7, 1));

    assert_eq!(store.usage_buckets(Some("ten_a"), hour + 3600, hour + 7200).await.unwrap().len(), 1, "range");
    assert_eq!(store.usage_buckets(None, hour, hour + 3600).await.unwrap().len(), 2, "every tenant");
    assert!(store.usage_buckets(Some("ten_c"), hour, hour + 7200).await.unwrap().is_empty());

    assert_eq!(store.prune_usage_batches(now().timestamp() - 60).await.unwrap(), 0, "recent ids are kept");
    assert_eq!(store.prune_usage_batches(now().timestamp() + 60).await.unwrap(), 4);
    assert!(store.record_usage("node-1", 1, &[]).await.unwrap(), "a forgotten id is new again");
}
