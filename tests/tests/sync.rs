//! Config sync between real control-plane and data-plane processes: several DPs, a CP restart,
//! and the NACK path in both directions against a scripted peer speaking the real protocol.

use std::time::Duration;

use postern_proto::sync::config_sync_client::ConfigSyncClient;
use postern_proto::sync::config_sync_server::{ConfigSync, ConfigSyncServer};
use postern_proto::sync::{
    ControlPlaneMessage, DataPlaneMessage, Hello, Nack, Resource, Snapshot, control_plane_message,
    data_plane_message,
};
use postern_tests::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

async fn data_planes(admin: &AdminClient) -> Value {
    admin.get("/admin/data-planes").await.unwrap().1
}

/// A data plane scripted here: it says Hello as `node_id` on a stream to `cp`; the sender is its
/// side of the stream (dropping it ends the stream), the receiver the CP's.
async fn scripted_data_plane(
    cp: &ControlPlane,
    node_id: &str,
) -> (
    mpsc::Sender<DataPlaneMessage>,
    tonic::Streaming<ControlPlaneMessage>,
) {
    let (tx, response) = open_stream(cp.sync_url(), node_id, Compression::None).await;
    (tx, response.into_inner())
}

/// What a scripted DP says it takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Compression {
    None,
    /// gRPC's per-message zstd (`grpc-accept-encoding`), as DPs before session 21 asked.
    GrpcZstd,
    /// Packed snapshots (`Hello.unpacks_snapshots`), as Postern's DP says.
    Unpacks,
}

/// Opens a sync stream to `url` and says Hello as `node_id`, taking `compression`; the response
/// carries the CP's headers.
async fn open_stream(
    url: String,
    node_id: &str,
    compression: Compression,
) -> (
    mpsc::Sender<DataPlaneMessage>,
    tonic::Response<tonic::Streaming<ControlPlaneMessage>>,
) {
    let mut client = ConfigSyncClient::connect(url).await.unwrap();
    if compression == Compression::GrpcZstd {
        client = client.accept_compressed(tonic::codec::CompressionEncoding::Zstd);
    }
    let (tx, rx) = mpsc::channel(4);
    tx.send(DataPlaneMessage {
        message: Some(data_plane_message::Message::Hello(Hello {
            node_id: node_id.into(),
            unpacks_snapshots: compression == Compression::Unpacks,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let response = client.stream(ReceiverStream::new(rx)).await.unwrap();
    (tx, response)
}

/// The next snapshot on a stream of a DP that does not unpack snapshots (other messages
/// skipped), within 10 s.
async fn next_snapshot(inbound: &mut tonic::Streaming<ControlPlaneMessage>) -> Snapshot {
    let (snapshot, packed) = next_snapshot_unpacked(inbound).await;
    assert_eq!(packed, None, "packed for a DP that does not unpack");
    snapshot
}

#[tokio::test]
async fn two_data_planes_ack_the_same_version() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("ok").await;
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let dp1 = DataPlane::start(dir.path(), "dp-one", &cp.sync_url()).await;
    let dp2 = DataPlane::start(dir.path(), "dp-two", &cp.sync_url()).await;
    let rev = admin
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/x", "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    for dp in [&dp1, &dp2] {
        wait_applied(dp.status, rev).await;
        assert_eq!(
            get_via(dp.proxy, "/x", None).await.unwrap(),
            (200, "ok".to_string())
        );
    }
    let v = wait_for(
        "both DPs to report the ACK",
        Duration::from_secs(5),
        || async {
            let v = data_planes(&admin).await;
            (v["applied_current"] == 2).then_some(v)
        },
    )
    .await;
    assert_eq!(v["version"], rev);
    let mut nodes: Vec<&str> = v["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["node_id"].as_str().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["dp-one", "dp-two"]);
    for d in v["list"].as_array().unwrap() {
        assert_eq!(d["connected"], true);
        assert_eq!(d["applied_version"], rev);
        assert_eq!(d["last_ack"]["version"], rev);
        assert!(d["last_nack"].is_null());
    }
}

/// Routes `/service-{i}/*` (`route-0` … `route-99`) to `backend`, as operators describe theirs:
/// a config of about 25 KB, big enough to go packed. The revision of the last.
async fn put_hundred_routes(admin: &AdminClient, backend: &str) -> u64 {
    let mut rev = 0;
    for i in 0..100 {
        let route = json!({
            "uri": format!("/service-{i}/*"),
            "desc": format!("route {i} of a hundred, as operators describe theirs"),
            "upstream": {"type": "roundrobin", "nodes": {backend: 1}},
            "plugins": {"limit-count": {"count": 100, "time_window": 60, "key": "remote_addr"}},
        });
        rev = admin
            .put_ok(&format!("/admin/routes/route-{i}"), route)
            .await;
    }
    rev
}

/// A DP given a config big enough to come packed (100 routes, about 25 KB) unpacks it and
/// serves it, then applies a one-route delta after it.
#[tokio::test]
async fn a_data_plane_serves_a_packed_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("ok").await;
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let rev = put_hundred_routes(&admin, &backend.to_string()).await;
    let dp = DataPlane::start(dir.path(), "dp-packed", &cp.sync_url()).await;
    wait_applied(dp.status, rev).await;
    assert_eq!(
        get_via(dp.proxy, "/service-57/x", None).await.unwrap(),
        (200, "ok".to_string())
    );
    let rev = admin
        .put_ok(
            "/admin/routes/route-57",
            json!({"uri": "/moved/*", "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp.status, rev).await;
    assert_eq!(
        get_via(dp.proxy, "/service-57/x", None).await.unwrap().0,
        404
    );
    assert_eq!(get_via(dp.proxy, "/moved/x", None).await.unwrap().0, 200);
}

#[tokio::test]
async fn data_planes_survive_a_control_plane_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = upstream("a").await;
    let b = upstream("b").await;
    let mut cp = ControlPlane::start(dir.path()).await;
    let dp1 = DataPlane::start(dir.path(), "dp-1", &cp.sync_url()).await;
    let dp2 = DataPlane::start(dir.path(), "dp-2", &cp.sync_url()).await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/x", "upstream": {"nodes": {a.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp1.status, rev).await;
    wait_applied(dp2.status, rev).await;

    cp.kill();
    // With the CP gone, both DPs keep serving the last config.
    for _ in 0..20 {
        for dp in [&dp1, &dp2] {
            assert_eq!(
                get_via(dp.proxy, "/x", None).await.unwrap(),
                (200, "a".to_string())
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    cp.restart().await;
    let rev2 = cp
        .client()
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/x", "upstream": {"nodes": {b.to_string(): 1}}}),
        )
        .await;
    assert!(
        rev2 > rev,
        "the revision survives the restart ({rev} → {rev2})"
    );
    for dp in [&dp1, &dp2] {
        // Reconnect backoff is capped at 10 s; allow for it.
        wait_for(
            "the DP to reconnect and get the change",
            Duration::from_secs(20),
            || async {
                let (_, body) = get_via(dp.proxy, "/x", None).await.ok()?;
                (body == "b").then_some(())
            },
        )
        .await;
    }
}

/// A control plane scripted by the test: sends the snapshots it is given, forwards what the DP
/// answers.
struct ScriptedCp {
    snapshots: tokio::sync::Mutex<Option<mpsc::Receiver<Snapshot>>>,
    answers: mpsc::Sender<DataPlaneMessage>,
}

type Out = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<ControlPlaneMessage, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl ConfigSync for ScriptedCp {
    type StreamStream = Out;
    async fn stream(
        &self,
        req: tonic::Request<tonic::Streaming<DataPlaneMessage>>,
    ) -> Result<tonic::Response<Out>, tonic::Status> {
        let mut snapshots = self
            .snapshots
            .lock()
            .await
            .take()
            .ok_or_else(|| tonic::Status::unavailable("one stream only"))?;
        let mut inbound = req.into_inner();
        let answers = self.answers.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let _ = answers.send(m).await;
            }
        });
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while let Some(s) = snapshots.recv().await {
                let msg = ControlPlaneMessage {
                    message: Some(control_plane_message::Message::Snapshot(s)),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn snapshot(version: u64, resources: Vec<(&str, &str, Vec<u8>)>) -> Snapshot {
    Snapshot {
        version,
        nonce: format!("n{version}"),
        resources: resources
            .into_iter()
            .map(|(kind, id, body)| Resource {
                kind: kind.into(),
                id: id.into(),
                mod_revision: version,
                body: body.into(),
            })
            .collect(),
        store_id: "scripted".into(),
        ..Snapshot::default()
    }
}

#[tokio::test]
async fn data_plane_nacks_a_bad_snapshot_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("still here").await;
    let (snap_tx, snap_rx) = mpsc::channel(4);
    let (ans_tx, mut ans_rx) = mpsc::channel(16);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let server = ConfigSyncServer::new(ScriptedCp {
        snapshots: tokio::sync::Mutex::new(Some(snap_rx)),
        answers: ans_tx,
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dp = DataPlane::start(dir.path(), "dp-nack", &format!("http://{cp_addr}")).await;

    let hello = ans_rx.recv().await.expect("hello");
    assert!(
        matches!(hello.message, Some(data_plane_message::Message::Hello(Hello { ref node_id, .. })) if node_id == "dp-nack")
    );

    let good = json!({"id": "r1", "uri": "/x", "upstream": {"nodes": {backend.to_string(): 1}}});
    snap_tx
        .send(snapshot(
            1,
            vec![("routes", "r1", good.to_string().into_bytes())],
        ))
        .await
        .unwrap();
    let ack = ans_rx.recv().await.expect("ack");
    assert!(
        matches!(ack.message, Some(data_plane_message::Message::Ack(ref a)) if a.version == 1 && a.nonce == "n1"),
        "{ack:?}"
    );
    assert_eq!(
        get_via(dp.proxy, "/x", None).await.unwrap(),
        (200, "still here".to_string())
    );

    // Each of these must be refused as a whole, with an error that says why.
    let bad_snapshots = [
        (2, vec![("routes", "r1", b"{not json".to_vec())], "not valid JSON"),
        (3, vec![("routes", "r1", json!({"uri": "/x", "upstream_id": "gone"}).to_string().into_bytes())], "does not exist"),
        (4, vec![("routes", "r1", json!({"uri": "/x", "upstream": {"nodes": {"h:1": 1}}, "plugins": {"from-the-future": {}}}).to_string().into_bytes())], "unknown plugin"),
        (5, vec![("widgets", "w1", b"{}".to_vec())], "unknown resource kind"),
    ];
    for (version, resources, why) in bad_snapshots {
        snap_tx.send(snapshot(version, resources)).await.unwrap();
        let answer = ans_rx.recv().await.expect("answer");
        match answer.message {
            Some(data_plane_message::Message::Nack(Nack {
                version: v,
                nonce,
                error,
            })) => {
                assert_eq!(v, version);
                assert_eq!(nonce, format!("n{version}"));
                assert!(
                    error.contains(why),
                    "NACK for v{version} says {error:?}, expected {why:?}"
                );
            }
            other => panic!("expected a NACK for v{version}, got {other:?}"),
        }
        // The old config keeps serving, and /readyz still names version 1.
        assert_eq!(
            get_via(dp.proxy, "/x", None).await.unwrap(),
            (200, "still here".to_string())
        );
        assert_eq!(readyz(dp.status).await.unwrap().1["version"], 1);
    }

    // Deltas (a small change to a small config, compiled on the sync task's thread rather than
    // a blocking one): a bad one is refused the same way, a good one after it is served. A
    // delta's base is the last snapshot the stream sent, refused or not (version 5).
    let delta = |version: u64, resources, removed: &[(&str, &str)]| Snapshot {
        delta: true,
        base_version: version - 1,
        removed: removed
            .iter()
            .map(|(kind, id)| postern_proto::sync::ResourceKey {
                kind: kind.to_string(),
                id: id.to_string(),
            })
            .collect(),
        ..snapshot(version, resources)
    };
    snap_tx
        .send(delta(
            6,
            vec![("routes", "r1", b"{not json".to_vec())],
            &[("widgets", "w1")],
        ))
        .await
        .unwrap();
    let answer = ans_rx.recv().await.expect("answer");
    assert!(
        matches!(answer.message, Some(data_plane_message::Message::Nack(ref n)) if n.version == 6 && n.error.contains("not valid JSON")),
        "{answer:?}"
    );
    assert_eq!(
        get_via(dp.proxy, "/x", None).await.unwrap(),
        (200, "still here".to_string())
    );
    let moved = json!({"id": "r1", "uri": "/y", "upstream": {"nodes": {backend.to_string(): 1}}});
    snap_tx
        .send(delta(
            7,
            vec![("routes", "r1", moved.to_string().into_bytes())],
            &[],
        ))
        .await
        .unwrap();
    let answer = ans_rx.recv().await.expect("answer");
    assert!(
        matches!(answer.message, Some(data_plane_message::Message::Ack(ref a)) if a.version == 7 && a.nonce == "n7"),
        "{answer:?}"
    );
    assert_eq!(get_via(dp.proxy, "/y", None).await.unwrap().0, 200);
    assert_eq!(get_via(dp.proxy, "/x", None).await.unwrap().0, 404);
}

#[tokio::test]
async fn control_plane_shows_a_nack() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let rev = admin
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/x", "upstream": {"nodes": {"127.0.0.1:9": 1}}}),
        )
        .await;

    // A data plane (scripted here) that cannot compile what it gets, e.g. an older build.
    let (tx, mut inbound) = scripted_data_plane(&cp, "old-dp").await;
    // The CP may first send the snapshot it had before the PUT was built in; the PUT's follows.
    // (ClusterInfo, the live data plane count, comes too: not needed here.)
    let s = loop {
        let msg = inbound.message().await.unwrap().expect("a snapshot");
        let s = match msg.message {
            Some(control_plane_message::Message::Snapshot(s)) => s,
            Some(control_plane_message::Message::Cluster(c)) => {
                assert_eq!(c.data_planes, 1, "this scripted DP is the only one");
                continue;
            }
            Some(control_plane_message::Message::PackedSnapshot(_)) => {
                panic!("a packed snapshot for a DP that did not say it unpacks them")
            }
            None => panic!("an empty message"),
        };
        assert!(
            s.version <= rev,
            "version {} is newer than the only write ({rev})",
            s.version
        );
        if s.version == rev {
            break s;
        }
    };
    assert_eq!(s.resources.len(), 1);
    tx.send(DataPlaneMessage {
        message: Some(data_plane_message::Message::Nack(Nack {
            version: s.version,
            nonce: s.nonce.clone(),
            error: "unknown plugin 'x'".into(),
        })),
    })
    .await
    .unwrap();

    let dp = wait_for(
        "the NACK in /admin/data-planes",
        Duration::from_secs(5),
        || async {
            let v = data_planes(&admin).await;
            v["list"]
                .as_array()?
                .iter()
                .find(|d| d["node_id"] == "old-dp" && !d["last_nack"].is_null())
                .cloned()
        },
    )
    .await;
    assert_eq!(dp["last_nack"]["version"], rev);
    assert_eq!(dp["last_nack"]["nonce"], s.nonce.as_str());
    assert_eq!(dp["last_nack"]["error"], "unknown plugin 'x'");
    assert_eq!(dp["applied_version"], 0, "a NACKed version is not applied");
    assert_eq!(data_planes(&admin).await["applied_current"], 0);
}

/// A CP that stops answering without closing the connection (SIGSTOP: the socket stays open, the
/// process is frozen) is noticed by the DP's HTTP/2 keepalive within 30 s; the DP keeps serving,
/// and reconnects once the CP answers again.
#[tokio::test]
async fn half_open_sync_connection_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("ok").await;
    let cp = ControlPlane::start(dir.path()).await;
    let dp = DataPlane::start(dir.path(), "dp-ka", &cp.sync_url()).await;
    let rev = cp
        .client()
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/x", "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp.status, rev).await;
    assert_eq!(
        readyz(dp.status).await.unwrap().1["control_plane_connected"],
        true
    );

    cp.signal("STOP");
    let frozen = std::time::Instant::now();
    wait_for(
        "the DP to notice the frozen CP",
        Duration::from_secs(30),
        || async {
            let (_, body) = readyz(dp.status).await?;
            (body["control_plane_connected"] == false).then_some(())
        },
    )
    .await;
    println!(
        "half-open sync connection noticed after {:?}",
        frozen.elapsed()
    );
    assert_eq!(
        get_via(dp.proxy, "/x", None).await.unwrap(),
        (200, "ok".to_string())
    );

    cp.signal("CONT");
    wait_for("the DP to reconnect", Duration::from_secs(20), || async {
        let (_, body) = readyz(dp.status).await?;
        (body["control_plane_connected"] == true).then_some(())
    })
    .await;
}

/// After the first, whole snapshot, the CP sends deltas: only the resources a write changed,
/// and the keys of those deleted, on top of the version it sent before.
#[tokio::test]
async fn control_plane_sends_deltas_after_the_first_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let route = |uri: &str| json!({"uri": uri, "upstream": {"nodes": {"127.0.0.1:9": 1}}});
    let mut rev = 0;
    for id in ["r1", "r2", "r3", "r4"] {
        rev = admin
            .put_ok(&format!("/admin/routes/{id}"), route(&format!("/{id}")))
            .await;
    }
    let (_tx, mut inbound) = scripted_data_plane(&cp, "delta-dp").await;
    // The first message is whole. The CP may send the snapshot it had before the last write was
    // built in first; the next ones then follow as deltas until the writes' version.
    let mut s = next_snapshot(&mut inbound).await;
    assert!(!s.delta, "the first snapshot of a stream is whole: {s:?}");
    while s.version < rev {
        let next = next_snapshot(&mut inbound).await;
        assert!(!next.delta || next.base_version == s.version, "{next:?}");
        s = next;
    }
    assert_eq!(s.version, rev);

    let rev2 = admin.put_ok("/admin/routes/r1", route("/r1-changed")).await;
    let delta = next_snapshot(&mut inbound).await;
    assert!(delta.delta, "{delta:?}");
    assert_eq!((delta.version, delta.base_version), (rev2, rev));
    let ids: Vec<&str> = delta.resources.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r1"], "only the changed route ships");
    assert!(delta.removed.is_empty());

    let (status, _) = admin
        .request(reqwest::Method::DELETE, "/admin/routes/r2", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let delta = next_snapshot(&mut inbound).await;
    assert_eq!(
        (delta.delta, delta.base_version, delta.resources.len()),
        (true, rev2, 0)
    );
    assert_eq!(
        delta
            .removed
            .iter()
            .map(|k| format!("{}/{}", k.kind, k.id))
            .collect::<Vec<_>>(),
        ["routes/r2"]
    );
}

/// A write that changes nothing the DP sees (the same body again) still moves the DP to the new
/// version, without compiling anything; a real change after it compiles as usual.
#[tokio::test]
async fn an_unchanged_config_is_relabelled_not_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let backend = upstream("ok").await;
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let dp = DataPlane::start(dir.path(), "dp-noop", &cp.sync_url()).await;
    let route = json!({"uri": "/x", "upstream": {"nodes": {backend.to_string(): 1}}});
    let rev = admin.put_ok("/admin/routes/r1", route.clone()).await;
    wait_applied(dp.status, rev).await;
    let rev2 = admin.put_ok("/admin/routes/r1", route).await;
    assert!(rev2 > rev);
    wait_applied(dp.status, rev2).await;
    // The DP logs it just after the swap (fields may carry colour codes: match the message).
    let relabelled = "config applied: nothing changed, nothing compiled";
    wait_for(
        "the DP to log that it served the version without a compile",
        Duration::from_secs(5),
        || async { dp.process.log_text().contains(relabelled).then_some(()) },
    )
    .await;
    assert_eq!(
        get_via(dp.proxy, "/x", None).await.unwrap(),
        (200, "ok".to_string())
    );
    let rev3 = admin
        .put_ok(
            "/admin/routes/r1",
            json!({"uri": "/y", "upstream": {"nodes": {backend.to_string(): 1}}}),
        )
        .await;
    wait_applied(dp.status, rev3).await;
    assert_eq!(get_via(dp.proxy, "/y", None).await.unwrap().0, 200);
    assert_eq!(get_via(dp.proxy, "/x", None).await.unwrap().0, 404);
}

/// A TCP relay to `target` on a port of its own; the count is of the bytes `target` sent back.
async fn counting_relay(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(AtomicU64::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        let Ok((down, _)) = listener.accept().await else {
            return;
        };
        let up = tokio::net::TcpStream::connect(target).await.unwrap();
        let (mut down_rx, mut down_tx) = down.into_split();
        let (mut up_rx, mut up_tx) = up.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut down_rx, &mut up_tx).await });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let n = match up_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            count.fetch_add(n as u64, Ordering::Relaxed);
            if down_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    (addr, received)
}

/// The next snapshot on a stream, unpacked if it came packed (other messages skipped), within
/// 10 s; and whether it came packed, with its packed bytes.
async fn next_snapshot_unpacked(
    inbound: &mut tonic::Streaming<ControlPlaneMessage>,
) -> (Snapshot, Option<bytes::Bytes>) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("the stream stays open");
        match msg.message {
            Some(control_plane_message::Message::Snapshot(s)) => return (s, None),
            Some(control_plane_message::Message::PackedSnapshot(p)) => {
                let zstd = p.zstd.clone();
                let s = postern_proto::packing::unpack(p, 1 << 30).expect("a packed snapshot");
                return (s, Some(zstd));
            }
            _ => {}
        }
    }
}

/// Big snapshots go compressed to a DP that takes it: packed to one that says
/// `unpacks_snapshots` (one packing shared by every such DP at that version, and a one-route
/// delta after it not packed at all), zstd-compressed by gRPC to one that asks for that (a DP
/// of an older build); one that takes neither gets them as they are. All three decode to the
/// same resources.
#[tokio::test]
async fn snapshots_are_compressed_for_a_data_plane_that_takes_it() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.client();
    let rev = put_hundred_routes(&admin, "127.0.0.1:9").await;
    // The CP's snapshot holds every route before a DP connects, so its first message (whole)
    // is the same for all.
    wait_for(
        "the snapshot to hold every route",
        Duration::from_secs(10),
        || async { (data_planes(&admin).await["version"] == rev).then_some(()) },
    )
    .await;
    let mut results = Vec::new();
    let mut streams = Vec::new();
    for (i, compression) in [
        Compression::None,
        Compression::GrpcZstd,
        Compression::Unpacks,
        Compression::Unpacks,
    ]
    .into_iter()
    .enumerate()
    {
        let (relay, received) = counting_relay(cp.sync).await;
        let (tx, response) =
            open_stream(format!("http://{relay}"), &format!("dp-{i}"), compression).await;
        let encoding = response
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        let mut inbound = response.into_inner();
        let (snapshot, packed) = next_snapshot_unpacked(&mut inbound).await;
        let bytes = received.load(Ordering::Relaxed);
        let body_bytes: usize = snapshot.resources.iter().map(|r| r.body.len()).sum();
        println!(
            "{compression:?}: {bytes} bytes on the wire for {} routes ({body_bytes} bytes of JSON)",
            snapshot.resources.len()
        );
        assert_eq!((snapshot.delta, snapshot.version), (false, rev));
        assert_eq!(snapshot.resources.len(), 100);
        assert!(
            !snapshot.nonce.is_empty(),
            "{compression:?}: a nonce to echo"
        );
        assert_eq!(
            packed.is_some(),
            compression == Compression::Unpacks,
            "{compression:?}: packed or not"
        );
        results.push((encoding, bytes, snapshot.resources, packed));
        streams.push((tx, inbound, received));
    }
    let (plain_encoding, plain_bytes, plain_resources, _) = &results[0];
    let (zstd_encoding, zstd_bytes, zstd_resources, _) = &results[1];
    let (packed_encoding, packed_bytes, packed_resources, packing) = &results[2];
    assert_eq!(plain_encoding.as_deref(), None);
    assert_eq!(zstd_encoding.as_deref(), Some("zstd"));
    assert_eq!(packed_encoding.as_deref(), None, "no gRPC compression");
    assert_eq!(
        plain_resources, zstd_resources,
        "the same snapshot either way"
    );
    assert_eq!(
        plain_resources, packed_resources,
        "the same snapshot either way"
    );
    for compressed in [zstd_bytes, packed_bytes] {
        assert!(
            compressed * 3 < *plain_bytes,
            "compressed {compressed} bytes vs {plain_bytes}"
        );
    }
    assert_eq!(packing, &results[3].3, "one packing for both DPs");

    // A one-route change: a small delta, sent as it is to a DP that unpacks.
    let (_, inbound, received) = &mut streams[2];
    let before = received.load(Ordering::Relaxed);
    let rev = admin
        .put_ok(
            "/admin/routes/route-7",
            json!({"uri": "/changed", "upstream": {"nodes": {"127.0.0.1:9": 1}}}),
        )
        .await;
    let (delta, packed) = next_snapshot_unpacked(inbound).await;
    assert_eq!((delta.delta, delta.version), (true, rev));
    assert_eq!(delta.resources.len(), 1);
    assert_eq!(packed, None, "a one-route delta is not packed");
    wait_for(
        "the delta's bytes to be counted",
        Duration::from_secs(5),
        || async { (received.load(Ordering::Relaxed) > before).then_some(()) },
    )
    .await;
    println!(
        "one-route delta: {} bytes on the wire",
        received.load(Ordering::Relaxed) - before
    );
}
