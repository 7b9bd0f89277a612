//! `grpc-transcode` and `protos`: HTTP/JSON clients reach a real tonic server (started here,
//! generated from `fixtures/transcode/users.proto` by `build.rs`) through the data plane; and
//! the Admin API refuses protos and plugin configs that could not work.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use postern_tests::*;
use serde_json::{Value, json};

mod users {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("postern.test.users.v1");
}
use users::users_server::{Users, UsersServer};
use users::{Address, CreateUserRequest, GetUserRequest, Role, User};

const PROTO: &str = include_str!("../fixtures/transcode/users.proto");
const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/users.descriptor_set.bin"));

/// Counts the calls it receives. `GetUser`: ids 1000+N answer gRPC status N (with a message that
/// needs percent-encoding), 999 sleeps 2 s, others return a user built from the request.
#[derive(Default)]
struct Service {
    calls: Arc<AtomicUsize>,
}

/// Refuses calls that do not look like gRPC from a gateway: `te: trailers` is required.
fn check_metadata<T>(req: &tonic::Request<T>) -> Result<(), tonic::Status> {
    match req.metadata().get("te").and_then(|v| v.to_str().ok()) {
        Some("trailers") => Ok(()),
        other => Err(tonic::Status::failed_precondition(format!(
            "te was {other:?}"
        ))),
    }
}

#[tonic::async_trait]
impl Users for Service {
    async fn get_user(
        &self,
        request: tonic::Request<GetUserRequest>,
    ) -> Result<tonic::Response<User>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        check_metadata(&request)?;
        let r = request.into_inner();
        if r.id == 999 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if (1000..1020).contains(&r.id) {
            let code = tonic::Code::from_i32((r.id - 1000) as i32);
            return Err(tonic::Status::new(code, format!("user {}: refusé", r.id)));
        }
        Ok(tonic::Response::new(User {
            id: r.id,
            name: if r.verbose {
                format!("user {} (verbose)", r.id)
            } else {
                format!("user {}", r.id)
            },
            role: Role::Member as i32,
            tags: r.fields,
            address: Some(Address {
                city: "Liège".into(),
                zip: "4000".into(),
            }),
            previous_addresses: vec![],
            active: false,
        }))
    }

    async fn create_user(
        &self,
        request: tonic::Request<CreateUserRequest>,
    ) -> Result<tonic::Response<User>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        check_metadata(&request)?;
        let r = request.into_inner();
        let mut user = r
            .user
            .ok_or_else(|| tonic::Status::invalid_argument("user is required"))?;
        user.id = 9_007_199_254_740_993; // over 2^53: survives only as an exact int64
        user.tags.extend(r.labels);
        Ok(tonic::Response::new(user))
    }

    type WatchUsersStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<User, tonic::Status>> + Send>>;

    /// `id` users, one message each; `verbose`: the stream fails after two.
    async fn watch_users(
        &self,
        request: tonic::Request<GetUserRequest>,
    ) -> Result<tonic::Response<Self::WatchUsersStream>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        check_metadata(&request)?;
        let r = request.into_inner();
        let mut items: Vec<Result<User, tonic::Status>> = (1..=r.id)
            .map(|i| {
                Ok(User {
                    id: i,
                    name: format!("user {i}"),
                    ..Default::default()
                })
            })
            .collect();
        if r.verbose {
            items.truncate(2);
            items.push(Err(tonic::Status::unavailable("stream broke")));
        }
        if r.fields.iter().any(|f| f == "slow") {
            // 300 ms between messages: the client must see each one before the next exists.
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                for item in items {
                    if tx.send(item).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
            return Ok(tonic::Response::new(Box::pin(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )));
        }
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn import_users(
        &self,
        _: tonic::Request<tonic::Streaming<User>>,
    ) -> Result<tonic::Response<User>, tonic::Status> {
        Err(tonic::Status::unimplemented("not for transcoding"))
    }
}

async fn grpc_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Service::default();
    let calls = service.calls.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UsersServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, calls)
}

struct Setup {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    proxy: SocketAddr,
    /// The tonic server.
    node: SocketAddr,
    calls: Arc<AtomicUsize>,
}

/// A CP with its DP, the tonic server, the proto and two routes: `POST /users` → CreateUser
/// (`scheme: grpc`), `GET /users/:id` → GetUser (plain upstream: transcoding implies h2c).
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_dev(dir.path()).await;
    let (proxy, status) = (cp.proxy.unwrap(), cp.status.unwrap());
    let (node, calls) = grpc_server().await;
    let admin = cp.client();
    admin
        .put_ok("/admin/protos/users", json!({ "content": PROTO }))
        .await;
    admin
        .put_ok(
            "/admin/routes/create-user",
            json!({
                "uri": "/users", "methods": ["POST"],
                "upstream": {"scheme": "grpc", "nodes": {node.to_string(): 1}},
                "plugins": {"grpc-transcode": {
                    "proto_id": "users", "service": "postern.test.users.v1.Users",
                    "method": "CreateUser"
                }}
            }),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/get-user",
            json!({
                "uri": "/users/:id", "methods": ["GET"],
                "upstream": {"nodes": {node.to_string(): 1}},
                "plugins": {"grpc-transcode": {
                    "proto_id": "users", "service": "postern.test.users.v1.Users",
                    "method": "GetUser", "deadline": 500
                }}
            }),
        )
        .await;
    wait_applied(status, rev).await;
    Setup {
        _dir: dir,
        cp,
        proxy,
        node,
        calls,
    }
}

async fn call(
    proxy: SocketAddr,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (u16, String, Value) {
    let mut req = reqwest::Client::new().request(method, format!("http://{proxy}{path}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("proxy answers");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, ct, json)
}

#[tokio::test]
async fn unary_round_trip_with_nested_messages_enums_and_repeated_fields() {
    let s = setup().await;
    let body = json!({
        "user": {
            "name": "Ada", "role": "ADMIN", "tags": ["a", "b"], "active": true,
            "address": {"city": "Namur", "zip": "5000"},
            // lowerCamelCase json names are accepted too
            "previousAddresses": [{"city": "Gent"}, {"city": "Mons", "zip": "7000"}]
        },
        "labels": ["c"]
    });
    let (status, ct, got) = call(
        s.proxy,
        reqwest::Method::POST,
        "/users",
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(ct, "application/json");
    assert_eq!(
        got,
        json!({
            "id": 9_007_199_254_740_993u64, "name": "Ada", "role": "ADMIN",
            "tags": ["a", "b", "c"],
            "address": {"city": "Namur", "zip": "5000"},
            "previous_addresses": [{"city": "Gent", "zip": ""}, {"city": "Mons", "zip": "7000"}],
            "active": true
        })
    );
    assert_eq!(s.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn get_maps_path_parameters_and_query_arguments_to_fields() {
    let s = setup().await;
    let (status, _, got) = call(
        s.proxy,
        reqwest::Method::GET,
        "/users/7?verbose=true&fields=name&fields=role&cache_buster=1",
        None,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got,
        json!({
            "id": 7, "name": "user 7 (verbose)", "role": "MEMBER", "tags": ["name", "role"],
            "address": {"city": "Liège", "zip": "4000"}, "previous_addresses": [],
            "active": false
        })
    );
    assert_eq!(s.calls.load(Ordering::SeqCst), 1);

    // explain names the method the route calls.
    let (status, explained) =
        s.cp.client()
            .request(
                reqwest::Method::POST,
                "/admin/explain",
                Some(&json!({"method": "GET", "url": "/users/7"}).to_string()),
            )
            .await
            .unwrap();
    assert_eq!(status, 200, "{explained}");
    assert_eq!(
        explained["grpc_transcode"],
        "/postern.test.users.v1.Users/GetUser"
    );
}

#[tokio::test]
async fn server_streams_are_newline_delimited_json() {
    let s = setup().await;
    let rev =
        s.cp.client()
            .put_ok(
                "/admin/routes/watch",
                json!({
                    "uri": "/users/:id/watch", "methods": ["GET"],
                    "upstream": {"scheme": "grpc", "nodes": {s.node.to_string(): 1}},
                    "plugins": {"grpc-transcode": {
                        "proto_id": "users", "service": "postern.test.users.v1.Users",
                        "method": "WatchUsers", "pb_option": ["no_default_values"]
                    }}
                }),
            )
            .await;
    wait_applied(s.cp.status.unwrap(), rev).await;
    let get = |path: String| async move {
        let resp = reqwest::get(path).await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        (status, ct, resp.text().await.unwrap())
    };
    let (status, ct, body) = get(format!("http://{}/users/3/watch", s.proxy)).await;
    assert_eq!((status, ct.as_str()), (200, "application/x-ndjson"));
    assert_eq!(
        body,
        "{\"id\":1,\"name\":\"user 1\"}\n{\"id\":2,\"name\":\"user 2\"}\n{\"id\":3,\"name\":\"user 3\"}\n"
    );
    // A stream that fails: what came, then the status as a last line.
    let (status, _, body) = get(format!("http://{}/users/5/watch?verbose=true", s.proxy)).await;
    assert_eq!(status, 200);
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"id": 1, "name": "user 1"}),
            json!({"id": 2, "name": "user 2"}),
            json!({"code": 14, "message": "stream broke"}),
        ]
    );
    // Not buffered: each line arrives as its message does.
    let started = Instant::now();
    let mut resp = reqwest::get(format!("http://{}/users/3/watch?fields=slow", s.proxy))
        .await
        .unwrap();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        arrivals.push(started.elapsed());
    }
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(arrivals[0] < Duration::from_millis(250), "{arrivals:?}");
    assert!(
        *arrivals.last().unwrap() >= Duration::from_millis(550),
        "{arrivals:?}"
    );
}

#[tokio::test]
async fn other_plugins_run_around_the_transcoded_call() {
    let s = setup().await;
    let admin = s.cp.client();
    admin
        .put_ok(
            "/admin/consumers/alice",
            json!({"plugins": {"key-auth": {"key": "alice-transcode-key-1"}}}),
        )
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/get-user-auth",
            json!({
                "uri": "/secure/users/:id", "methods": ["GET"],
                "upstream": {"scheme": "grpc", "nodes": {s.node.to_string(): 1}},
                "plugins": {
                    "key-auth": {},
                    "response-rewrite": {"headers": {"set": {"x-api": "users"}}},
                    "grpc-transcode": {"proto_id": "users",
                        "service": "postern.test.users.v1.Users", "method": "GetUser"}
                }
            }),
        )
        .await;
    wait_applied(s.cp.status.unwrap(), rev).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/secure/users/5", s.proxy);
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(s.calls.load(Ordering::SeqCst), 0, "refused before the call");
    let resp = client
        .get(&url)
        .header("apikey", "alice-transcode-key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-api"], "users");
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got["name"], "user 5");
}

/// Measured: what transcoding adds per call, against a plain HTTP route through the same DP
/// (debug build, one keepalive client, sequential; loopback on a shared 2-core machine).
#[tokio::test]
async fn transcoding_cost_per_call() {
    let s = setup().await;
    let plain = upstream("{\"id\": 1}").await;
    let rev =
        s.cp.client()
            .put_ok(
                "/admin/routes/plain",
                json!({"uri": "/plain", "upstream": {"nodes": {plain.to_string(): 1}}}),
            )
            .await;
    wait_applied(s.cp.status.unwrap(), rev).await;
    let client = reqwest::Client::new();
    let time = |path: &'static str| {
        let client = client.clone();
        let url = format!("http://{}{path}", s.proxy);
        async move {
            let n = 500;
            for _ in 0..20 {
                client
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
            }
            let started = Instant::now();
            for _ in 0..n {
                let resp = client.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.bytes().await.unwrap();
            }
            started.elapsed() / n
        }
    };
    let transcoded = time("/users/7?verbose=true&fields=name").await;
    let direct = time("/plain").await;
    eprintln!("per call: transcoded {transcoded:?}, plain HTTP route {direct:?}");
    assert!(transcoded < Duration::from_millis(50), "{transcoded:?}");
}

#[tokio::test]
async fn bad_requests_are_400_naming_the_field_and_never_sent() {
    let s = setup().await;
    let cases = [
        // (method, path, body, field)
        (
            "POST",
            "/users",
            r#"{"user": {"role": "BOSS"}}"#,
            "user.role",
        ),
        ("POST", "/users", r#"{"user": {"id": "seven"}}"#, "user.id"),
        ("POST", "/users", r#"{"user": {"tags": "a"}}"#, "user.tags"),
        (
            "POST",
            "/users",
            r#"{"user": {"address": {"zip": 4000}}}"#,
            "user.address.zip",
        ),
        (
            "POST",
            "/users",
            r#"{"user": {"nickname": "x"}}"#,
            "user.nickname",
        ),
        ("POST", "/users", r#"{"user": "#, ""),
        ("POST", "/users", "[]", ""),
        ("GET", "/users/seven", "", "id"),
        ("GET", "/users/7?verbose=maybe", "", "verbose"),
    ];
    for (method, path, body, field) in cases {
        let method: reqwest::Method = method.parse().unwrap();
        let body = (!body.is_empty()).then_some(body);
        let (status, _, got) = call(s.proxy, method, path, body).await;
        assert_eq!(status, 400, "{path} {body:?}: {got}");
        assert_eq!(got["field"], field, "{path} {body:?}: {got}");
        assert!(
            got["error_msg"].as_str().is_some_and(|m| m.contains(field)),
            "{got}"
        );
    }
    // Over the 4 MiB a message may have: 413, also before anything is sent.
    let big = json!({"user": {"name": "x".repeat(5 * 1024 * 1024)}}).to_string();
    let (status, _, _) = call(s.proxy, reqwest::Method::POST, "/users", Some(&big)).await;
    assert_eq!(status, 413);
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );
}

#[tokio::test]
async fn grpc_statuses_become_http_statuses_with_the_message() {
    let s = setup().await;
    let cases = [
        (5, 404),  // NOT_FOUND
        (3, 400),  // INVALID_ARGUMENT
        (16, 401), // UNAUTHENTICATED
        (7, 403),  // PERMISSION_DENIED
        (6, 409),  // ALREADY_EXISTS
        (8, 429),  // RESOURCE_EXHAUSTED
        (14, 503), // UNAVAILABLE
        (4, 504),  // DEADLINE_EXCEEDED
        (12, 501), // UNIMPLEMENTED
        (13, 500), // INTERNAL
    ];
    for (code, http) in cases {
        let id = 1000 + code;
        let (status, ct, got) =
            call(s.proxy, reqwest::Method::GET, &format!("/users/{id}"), None).await;
        assert_eq!(status, http, "gRPC {code}: {got}");
        assert_eq!(ct, "application/json");
        assert_eq!(
            got,
            json!({"code": code, "message": format!("user {id}: refusé")})
        );
    }
    // The route's deadline (500 ms) ends a call the server sits on.
    let started = Instant::now();
    let (status, _, got) = call(s.proxy, reqwest::Method::GET, "/users/999", None).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{got}");
    assert_eq!(got["code"], 4);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // An upstream that is not there: the proxy's own 502.
    let admin = s.cp.client();
    let gone = free_addr();
    let rev = admin
        .put_ok(
            "/admin/routes/gone",
            json!({
                "uri": "/gone", "upstream": {"nodes": {gone.to_string(): 1}},
                "plugins": {"grpc-transcode": {
                    "proto_id": "users", "service": "postern.test.users.v1.Users",
                    "method": "GetUser"
                }}
            }),
        )
        .await;
    wait_applied(s.cp.status.unwrap(), rev).await;
    let (status, _, _) = call(s.proxy, reqwest::Method::GET, "/gone", None).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn protos_and_plugin_configs_are_checked_at_write_time() {
    let s = setup().await;
    let admin = s.cp.client();
    let put = |path: &str, body: Value| {
        let admin = admin.clone();
        let path = path.to_string();
        async move {
            admin
                .request(reqwest::Method::PUT, &path, Some(&body.to_string()))
                .await
                .unwrap()
        }
    };
    let before = admin.revision().await;

    // A proto that does not compile: 400 naming the line.
    let (status, got) = put(
        "/admin/protos/bad",
        json!({"content": "syntax = \"proto3\";\nmessage A {\n  int32 x = 1\n}\n"}),
    )
    .await;
    assert_eq!(status, 400, "{got}");
    assert_eq!(got["field"], "content");
    assert!(
        got["error_msg"].as_str().unwrap().contains("line 4"),
        "{got}"
    );

    let route = |service: &str, method: &str, proto: &str| {
        json!({
            "uri": "/x", "upstream": {"nodes": {"127.0.0.1:1": 1}},
            "plugins": {"grpc-transcode": {"proto_id": proto, "service": service, "method": method}}
        })
    };
    let svc = "postern.test.users.v1.Users";
    let cases = [
        (
            route("Users", "GetUser", "users"),
            "plugins.grpc-transcode.service",
            "no service 'Users'",
        ),
        (
            route(svc, "DeleteUser", "users"),
            "plugins.grpc-transcode.method",
            "no method 'DeleteUser'",
        ),
        (
            route(svc, "ImportUsers", "users"),
            "plugins.grpc-transcode.method",
            "client streaming",
        ),
        (
            route(svc, "GetUser", "nope"),
            "plugins.grpc-transcode.proto_id",
            "does not exist",
        ),
    ];
    for (body, field, message) in cases {
        let (status, got) = put("/admin/routes/r-bad", body).await;
        assert_eq!(status, 400, "{got}");
        assert_eq!(got["field"], field, "{got}");
        assert!(
            got["error_msg"].as_str().unwrap().contains(message),
            "{got}"
        );
    }
    // Not on a global rule.
    let (status, got) = put(
        "/admin/global_rules/g",
        json!({"plugins": {"grpc-transcode": {"proto_id": "users", "service": svc, "method": "GetUser"}}}),
    )
    .await;
    assert_eq!(status, 400, "{got}");

    // A rewrite of the proto that drops a method a route uses.
    let without_get = PROTO.replace("rpc GetUser (GetUserRequest) returns (User);", "");
    let (status, got) = put("/admin/protos/users", json!({ "content": without_get })).await;
    assert_eq!(status, 400, "{got}");
    assert_eq!(got["field"], "content");
    assert!(
        got["error_msg"]
            .as_str()
            .unwrap()
            .contains("routes/get-user"),
        "{got}"
    );

    // Deleting a proto in use is refused, naming a user of it.
    let (status, got) = admin
        .request(reqwest::Method::DELETE, "/admin/protos/users", None)
        .await
        .unwrap();
    assert_eq!(status, 400, "{got}");
    assert!(
        got["error_msg"].as_str().unwrap().contains("routes/"),
        "{got}"
    );

    assert_eq!(admin.revision().await, before, "nothing was written");
    // Still served as before.
    let (status, _, _) = call(s.proxy, reqwest::Method::GET, "/users/3", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_base64_descriptor_set_serves_like_the_source_text() {
    let s = setup().await;
    let admin = s.cp.client();
    let b64 = base64::engine::general_purpose::STANDARD.encode(DESCRIPTOR_SET);
    admin
        .put_ok("/admin/protos/users-bin", json!({ "content": b64 }))
        .await;
    let rev = admin
        .put_ok(
            "/admin/routes/get-user-bin",
            json!({
                "uri": "/bin/users/:id", "methods": ["GET"],
                "upstream": {"scheme": "grpc", "nodes": {s.node.to_string(): 1}},
                "plugins": {"grpc-transcode": {
                    "proto_id": "users-bin", "service": "postern.test.users.v1.Users",
                    "method": "GetUser", "pb_option": ["enum_as_value", "int64_as_string", "no_default_values"]
                }}
            }),
        )
        .await;
    wait_applied(s.cp.status.unwrap(), rev).await;
    let (status, _, got) = call(s.proxy, reqwest::Method::GET, "/bin/users/12", None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got,
        json!({"id": "12", "name": "user 12", "role": 2, "address": {"city": "Liège", "zip": "4000"}})
    );
    // The proto is then in use: deleting the route frees it.
    let (status, _) = admin
        .request(reqwest::Method::DELETE, "/admin/protos/users-bin", None)
        .await
        .unwrap();
    assert_eq!(status, 400);
    admin
        .request(reqwest::Method::DELETE, "/admin/routes/get-user-bin", None)
        .await
        .unwrap();
    let (status, got) = admin
        .request(reqwest::Method::DELETE, "/admin/protos/users-bin", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{got}");
}
