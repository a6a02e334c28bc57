// A driver of real processes: it waits on the wall clock.
#![allow(clippy::disallowed_methods)]

//! Tokens, roles and the audit log through the real service (embedded broker, no devices):
//! every endpoint checks its role, a viewer cannot start a rollout, tokens are stored hashed
//! and stop working when revoked, each action is in the audit log once and the log refuses
//! changes; an open API closes with its first token. With SQLite, and with PostgreSQL.

#[path = "service/harness.rs"]
mod harness;
// The harness names the stand-in's statistics.
#[path = "service/standin.rs"]
mod standin;

use std::time::Duration;

use harness::{
    count_action, free_port, rollout_request, scratch, serial, service, wave_statuses, PgDb,
    Server, ServerSetup,
};
use serde_json::{json, Value};

use fuota_server::service::api::ENDPOINTS;
use fuota_server::service::auth::Role;

fn server(tag: &str, db_url: Option<String>) -> Server {
    let dir = scratch(tag);
    let db_url = db_url.unwrap_or_else(|| format!("sqlite://{}", dir.join("fuota.db").display()));
    let mut setup = ServerSetup::new(dir, "mqtt://127.0.0.1:1", &db_url, tag);
    setup.embedded_broker = Some(free_port());
    Server::start(setup)
}

fn token(server: &Server, name: &str, role: &str) -> (i64, String) {
    let (st, t) = server.call_as(
        Some(&server.setup.token),
        "POST",
        "/api/tokens",
        Some(&json!({ "name": name, "role": role })),
    );
    assert_eq!(st, 201, "{t}");
    (
        t["id"].as_i64().unwrap(),
        t["token"].as_str().unwrap().to_string(),
    )
}

/// A path of the table with its parameters filled in: nothing has such an id, so a call
/// that passes the role check changes nothing.
fn concrete(path: &str) -> String {
    path.replace("{id}", "999")
        .replace("{dev_eui}", "0000000000000001")
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

async fn exec(url: &str, sql: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await?;
    let r = sqlx::query(sql).execute(&mut c).await.map(|_| ());
    let _ = c.close().await;
    r
}

async fn texts(url: &str, sql: &str) -> Vec<String> {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.expect("connects");
    let rows = sqlx::query(sql).fetch_all(&mut c).await.expect(sql);
    let _ = c.close().await;
    rows.iter().map(|r| r.get::<String, _>(0)).collect()
}

fn roles_and_audit(tag: &str, db_url: Option<String>) {
    let _one = serial();
    let mut s = server(tag, db_url);
    let admin = s.setup.token.clone();
    let (viewer_id, viewer) = token(&s, "ana", "viewer");
    let (_, operator) = token(&s, "ops", "operator");
    let (_, admin2) = token(&s, "root2", "admin");
    assert!(viewer.starts_with("fuota_") && viewer.len() == 70);
    // Names are one each.
    let (st, _) = s.call_as(
        Some(&admin),
        "POST",
        "/api/tokens",
        Some(&json!({ "name": "ana", "role": "admin" })),
    );
    assert_eq!(st, 409);
    // Every endpoint checks its role: no token 401, too low a role 403, enough: neither.
    let who = [
        (None, None),
        (Some(viewer.as_str()), Some(Role::Viewer)),
        (Some(operator.as_str()), Some(Role::Operator)),
        (Some(admin2.as_str()), Some(Role::Admin)),
    ];
    for &(method, path, need) in ENDPOINTS {
        for (t, role) in &who {
            let (st, v) = s.call_as(*t, method, &concrete(path), None);
            let want = match (need, role) {
                (None, _) => None,
                (Some(_), None) => Some(401),
                (Some(n), Some(r)) if r < &n => Some(403),
                _ => None,
            };
            match want {
                Some(code) => assert_eq!(st, code, "{method} {path} as {role:?}: {v}"),
                None => assert!(
                    st != 401 && st != 403,
                    "{method} {path} as {role:?}: {st} {v}"
                ),
            }
        }
    }
    // The server key comes from the configuration here: only the configuration changes it.
    let (st, e) = s.call_as(Some(&admin), "POST", "/api/keys/rotate", None);
    assert_eq!(st, 409, "{e}");
    // A viewer cannot start a rollout; an operator can, and runs it.
    let (st, fw) = s.call_as(Some(&viewer), "GET", "/api/firmware", None);
    assert_eq!(st, 200);
    assert!(fw.as_array().unwrap().is_empty(), "{fw}");
    let (st, _) = s.upload_as(&viewer, b"a firmware, not a patch");
    assert_eq!(st, 403);
    let (st, fw) = s.upload_as(&operator, b"a firmware, not a patch");
    assert_eq!(st, 201, "{fw}");
    let fw = fw["id"].as_i64().unwrap();
    let devices: Vec<(u64, [u8; 16])> = (1..=4)
        .map(|i| (0x70b3_d57e_d000_1000 + i, [i as u8; 16]))
        .collect();
    let mut req = rollout_request("fleet", fw, &devices, &[25.0, 100.0], (600, 3600, 60));
    req["target_version"] = json!("1.2.3");
    let (st, e) = s.call_as(Some(&viewer), "POST", "/api/rollouts", Some(&req));
    assert_eq!(st, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("operator"), "{e}");
    let (st, r) = s.call_as(Some(&operator), "POST", "/api/rollouts", Some(&req));
    assert_eq!(st, 201, "{r}");
    let id = r["id"].as_i64().unwrap();
    assert_eq!(r["created_by"], "ops");
    s.wait_rollout(id, Duration::from_secs(10), "wave 1 running", |v| {
        wave_statuses(v)[0] == "running"
    });
    for (action, who, want) in [
        ("pause", &viewer, 403),
        ("pause", &operator, 200),
        ("pause", &operator, 409),
        ("resume", &operator, 200),
        ("retry", &operator, 409),
        ("cancel", &operator, 200),
        ("cancel", &operator, 409),
    ] {
        let (st, v) = s.call_as(
            Some(who),
            "POST",
            &format!("/api/rollouts/{id}/{action}"),
            None,
        );
        assert_eq!(st, want, "{action}: {v}");
    }
    // Revoked: the token stops working at once.
    let (st, _) = s.call_as(
        Some(&admin),
        "POST",
        &format!("/api/tokens/{viewer_id}/revoke"),
        None,
    );
    assert_eq!(st, 200);
    let (st, _) = s.call_as(Some(&viewer), "GET", "/api/rollouts", None);
    assert_eq!(st, 401);
    let (st, _) = s.call_as(
        Some(&admin),
        "POST",
        &format!("/api/tokens/{viewer_id}/revoke"),
        None,
    );
    assert_eq!(st, 409);
    // Only hashes are stored.
    let hashes = block(texts(&s.setup.db_url, "SELECT token_hash FROM api_tokens"));
    assert_eq!(hashes.len(), 3);
    for t in [&viewer, &operator, &admin2] {
        use sha2::Digest;
        let h = hex::encode(sha2::Sha256::digest(t.as_bytes()));
        assert!(hashes.contains(&h));
    }
    if let Some(path) = s.setup.db_url.strip_prefix("sqlite://") {
        for f in [path.to_string(), format!("{path}-wal")] {
            let bytes = std::fs::read(&f).unwrap_or_default();
            for t in [&viewer, &operator, &admin2] {
                assert!(
                    !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                    "{t} in {f}"
                );
            }
        }
    }
    let (st, list) = s.call_as(Some(&admin), "GET", "/api/tokens", None);
    assert_eq!(st, 200);
    assert!(!list.to_string().contains("fuota_"), "{list}");
    // Each action once in the audit log, with who.
    let rows = s.audit(&format!("subject=rollout/{id}"));
    let actions: Vec<&str> = rows.iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.starts_with("rollout."))
            .copied()
            .collect::<Vec<_>>(),
        [
            "rollout.create",
            "rollout.pause",
            "rollout.resume",
            "rollout.cancel"
        ],
        "{rows:#?}"
    );
    assert!(rows
        .iter()
        .filter(|r| r["action"].as_str().unwrap().starts_with("rollout."))
        .all(|r| r["actor"] == "ops" && r["role"] == "operator"));
    let all = s.audit("limit=10000");
    assert_eq!(count_action(&all, "token.create"), 3);
    assert_eq!(count_action(&all, "token.revoke"), 1);
    assert_eq!(count_action(&all, "firmware.upload"), 1);
    let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    // Filters and paging.
    let tokens = s.audit("subject=token/");
    assert_eq!(tokens.len(), 4);
    let after = s.audit(&format!("after={}&limit=2", ids[0]));
    assert_eq!(after.len(), 2);
    assert_eq!(after[0]["id"], ids[1]);
    let (st, _) = s.get("/api/audit?since=yesterday");
    assert_eq!(st, 400);
    // The log refuses changes made behind the service's back.
    for sql in ["UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"] {
        let r = block(exec(&s.setup.db_url, sql));
        assert!(r.is_err(), "{sql} went through");
    }
    assert_eq!(s.audit("limit=10000").len(), all.len());
    // The CLI: tokens (admin) and the audit log.
    let listed: Value = serde_json::from_str(&s.cli(&["token", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    // The operator: the upload, the rollout's creation, pause, resume, cancel, and the
    // running wave the cancel stopped.
    let text = s.cli(&["audit", "--actor", "ops"]);
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(
        text.contains("rollout.pause") && text.contains("wave.cancelled"),
        "{text}"
    );
}

#[test]
fn roles_tokens_and_the_audit_log_with_sqlite() {
    roles_and_audit("access-sqlite", None);
}

#[test]
fn roles_tokens_and_the_audit_log_with_postgresql() {
    let Some(admin) = service("FUOTA_PG_URL", 5432) else {
        return;
    };
    let db = PgDb::create(&admin, "access");
    roles_and_audit("access-pg", Some(db.url.clone()));
}

#[test]
fn without_a_configured_token_the_api_is_open_until_the_first_token() {
    let _one = serial();
    let dir = scratch("open");
    let db_url = format!("sqlite://{}", dir.join("fuota.db").display());
    let mut setup = ServerSetup::new(dir, "mqtt://127.0.0.1:1", &db_url, "open");
    setup.embedded_broker = Some(free_port());
    setup.token = String::new();
    let s = Server::start(setup);
    let (st, _) = s.call_as(None, "GET", "/api/rollouts", None);
    assert_eq!(st, 200);
    let (st, t) = s.call_as(
        None,
        "POST",
        "/api/tokens",
        Some(&json!({ "name": "first", "role": "admin" })),
    );
    assert_eq!(st, 201, "{t}");
    let tok = t["token"].as_str().unwrap().to_string();
    let (st, _) = s.call_as(None, "GET", "/api/rollouts", None);
    assert_eq!(st, 401);
    let (st, _) = s.call_as(Some(&tok), "GET", "/api/rollouts", None);
    assert_eq!(st, 200);
    let rows = s.audit_as(&tok, "action=token.create");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["actor"], "anonymous");
    // Revoking the last token does not open it again.
    let id = t["id"].as_i64().unwrap();
    let (_, t2) = s.call_as(
        Some(&tok),
        "POST",
        "/api/tokens",
        Some(&json!({ "name": "second", "role": "viewer" })),
    );
    let (st, _) = s.call_as(
        Some(&tok),
        "POST",
        &format!("/api/tokens/{id}/revoke"),
        None,
    );
    assert_eq!(st, 200);
    let (st, _) = s.call_as(None, "GET", "/api/rollouts", None);
    assert_eq!(st, 401);
    let (st, _) = s.call_as(t2["token"].as_str(), "GET", "/api/rollouts", None);
    assert_eq!(st, 200);
    assert!(s.log_text().contains("the API is open"));
}

/// Sealed values under the server key: a campaign's and a rollout's device keys and McKeys.
async fn sealed(url: &str) -> Vec<(String, Vec<u8>)> {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.expect("connects");
    let mut out = Vec::new();
    for q in [
        "SELECT dev_eui, root_key FROM devices",
        "SELECT dev_eui, root_key FROM rollout_devices",
    ] {
        for r in sqlx::query(q).fetch_all(&mut c).await.expect(q) {
            out.push((r.get::<String, _>(0), r.get::<Vec<u8>, _>(1)));
        }
    }
    let _ = c.close().await;
    out
}

#[test]
fn the_server_key_rotates_and_campaigns_and_rollouts_resume_under_the_new_one() {
    use fuota_server::service::keystore::KeyStore;
    let _one = serial();
    let dir = scratch("rotate");
    let db_url = format!("sqlite://{}", dir.join("fuota.db").display());
    let mut setup = ServerSetup::new(dir.clone(), "mqtt://127.0.0.1:1", &db_url, "rotate");
    setup.embedded_broker = Some(free_port());
    setup.server_key = String::new();
    let mut s = Server::start(setup);
    let key_file = dir.join("server.key");
    let old = std::fs::read_to_string(&key_file).unwrap();
    let (_, operator) = token(&s, "ops", "operator");
    let (st, fw) = s.upload_as(&operator, b"a firmware, not a patch");
    assert_eq!(st, 201);
    let fw = fw["id"].as_i64().unwrap();
    let keys = |base: u64| -> Vec<(u64, [u8; 16])> {
        (1..=4).map(|i| (base + i, [i as u8 + 0x40; 16])).collect()
    };
    let mut req = harness::campaign_request("c", fw, &keys(0x70b3_d57e_d000_2000)[..2]);
    req["target_version"] = json!("1.2.3");
    let (st, c) = s.call_as(Some(&operator), "POST", "/api/campaigns", Some(&req));
    assert_eq!(st, 201, "{c}");
    let mut req = rollout_request(
        "r",
        fw,
        &keys(0x70b3_d57e_d000_3000),
        &[25.0, 100.0],
        (600, 3600, 60),
    );
    req["target_version"] = json!("1.2.3");
    let (st, r) = s.call_as(Some(&operator), "POST", "/api/rollouts", Some(&req));
    assert_eq!(st, 201, "{r}");
    let rid = r["id"].as_i64().unwrap();
    s.wait_rollout(rid, Duration::from_secs(10), "wave 1 running", |v| {
        wave_statuses(v)[0] == "running"
    });
    let (st, e) = s.call_as(Some(&operator), "POST", "/api/keys/rotate", None);
    assert_eq!(st, 403, "{e}");
    let (st, done) = s.call_as(
        Some(&s.setup.token.clone()),
        "POST",
        "/api/keys/rotate",
        Some(&json!({})),
    );
    assert_eq!(st, 200, "{done}");
    // Two campaign devices, four rollout devices, one in wave 1's campaign; three McKeys.
    assert_eq!(done, json!({ "resealed": 10, "skipped": 0 }));
    let new = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(old.trim(), new.trim());
    assert!(!dir.join("server.key.next").exists());
    let (old_ks, new_ks) = (
        KeyStore::from_hex(&old).unwrap(),
        KeyStore::from_hex(&new).unwrap(),
    );
    let values = block(sealed(&db_url));
    assert_eq!(values.len(), 7);
    for (eui, v) in &values {
        assert!(old_ks.open(v, eui.as_bytes()).is_err());
        assert!(new_ks.open(v, eui.as_bytes()).is_ok());
    }
    // Restarted: both resume under the new key.
    s.restart();
    let log = s.log_text();
    assert!(
        log.contains(&format!("campaign {}: resumed", c["id"])),
        "{log}"
    );
    assert!(log.contains(&format!("rollout {rid}: resumed")), "{log}");
    assert!(!log.contains("cannot resume"), "{log}");
    let rows = s.audit("action=key.rotate");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0]["actor"].as_str(), rows[0]["role"].as_str()),
        (Some("bootstrap"), Some("admin"))
    );
    // A given key is taken as it is.
    let given = "5a".repeat(32);
    let (st, _) = s.call_as(
        Some(&s.setup.token.clone()),
        "POST",
        "/api/keys/rotate",
        Some(&json!({ "key": given })),
    );
    assert_eq!(st, 200);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), given);
    let (st, _) = s.call_as(
        Some(&s.setup.token.clone()),
        "POST",
        "/api/keys/rotate",
        Some(&json!({ "key": "00" })),
    );
    assert_eq!(st, 422);
}
