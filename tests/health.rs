//! etcd's health endpoints: `/health` with `?serializable=true` and
//! `?exclude=`, etcd 3.6's `/livez` and `/readyz` with their checks, on the
//! client URL and on `--listen-metrics-urls`, while alarms are raised and
//! while a member is cut off from its quorum.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
use common::*;

/// Status and body of `GET http://endpoint/path`, with curl.
fn get(endpoint: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}", &format!("http://{endpoint}{path}")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn alarm(endpoint: &str, action: AlarmAction, kind: AlarmType, member_id: u64) {
    let mut c = client(&[endpoint.to_string()]).await;
    let mut options = AlarmOptions::new();
    options.with_member(member_id);
    c.alarm(action, kind, Some(options)).await.unwrap();
}

#[test]
fn health_livez_and_readyz_answer_as_etcd_on_client_and_metrics_urls() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let (_dir, m) = single_member(&[&format!("--listen-metrics-urls=http://{metrics}")]);
    for ep in [m.endpoint(), metrics.clone()] {
        assert_eq!(get(&ep, "/health"), (200, r#"{"health":"true","reason":""}"#.into()), "{ep}");
        assert_eq!(get(&ep, "/health?serializable=true").0, 200);
        assert_eq!(get(&ep, "/livez"), (200, "ok\n".into()));
        assert_eq!(get(&ep, "/livez?verbose"), (200, "[+]serializable_read ok\nok\n".into()));
        assert_eq!(
            get(&ep, "/readyz?verbose=false"),
            (
                200,
                "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nok\n".into()
            ),
            "verbose counts by its presence, as in etcd"
        );
        assert_eq!(get(&ep, "/readyz/linearizable_read"), (200, "ok\n".into()));
        assert_eq!(get(&ep, "/readyz/no_such_check").0, 404);
        assert_eq!(get(&ep, "/readyz?exclude=no_such_check").0, 200, "an unknown exclusion is only logged");
    }
    assert_eq!(get(&m.endpoint(), "/version").0, 200);
    assert_eq!(get(&metrics, "/version").0, 404, "the metrics URL serves health and metrics only");

    let member_id = runtime().block_on(async { status_of(&m).await.unwrap().header().unwrap().member_id() });
    runtime().block_on(alarm(&m.endpoint(), AlarmAction::Activate, AlarmType::Nospace, member_id));
    assert_eq!(get(&m.endpoint(), "/health"), (503, "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n".into()));
    assert_eq!(get(&m.endpoint(), "/health?exclude=NOSPACE").0, 200);
    assert_eq!(get(&m.endpoint(), "/readyz").0, 200, "NOSPACE does not make a member unready, as in etcd");

    runtime().block_on(alarm(&m.endpoint(), AlarmAction::Activate, AlarmType::Corrupt, member_id));
    assert_eq!(get(&m.endpoint(), "/health?exclude=NOSPACE").1, "{\"health\":\"false\",\"reason\":\"ALARM CORRUPT\"}\n");
    assert_eq!(get(&m.endpoint(), "/health?exclude=NOSPACE&exclude=CORRUPT").0, 200);
    let (code, body) = get(&metrics, "/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("[-]data_corruption failed: alarm activated: CORRUPT\n"), "{body}");
    assert!(body.contains("[+]linearizable_read ok\n") && body.ends_with("\n\n"), "every check is listed: {body}");
    assert_eq!(get(&metrics, "/readyz?exclude=data_corruption").0, 200);
    assert_eq!(get(&metrics, "/livez").0, 200);
    let probe = Command::new(CAIRN).args(["healthcheck", "--endpoint", &metrics]).output().unwrap();
    assert_eq!(probe.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&probe.stderr).contains("data_corruption failed"), "{probe:?}");

    for kind in [AlarmType::Nospace, AlarmType::Corrupt] {
        runtime().block_on(alarm(&m.endpoint(), AlarmAction::Deactivate, kind, member_id));
    }
    assert_eq!(get(&metrics, "/readyz").0, 200);
    assert!(Command::new(CAIRN).args(["healthcheck", "--endpoint", &metrics]).status().unwrap().success());
}

#[test]
fn a_member_cut_off_from_its_quorum_stays_live_and_turns_unready_until_it_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let members = three_member_cluster(dir.path());
    let lone = &members[0];
    let ep = lone.endpoint();
    let signal = |sig: &str, m: &Member| assert!(Command::new("kill").args([sig, &m.pid().to_string()]).status().unwrap().success());
    for m in &members[1..] {
        signal("-STOP", m);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let (code, body) = get(&ep, "/readyz");
        if code == 503 || Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("[-]linearizable_read failed: etcdserver: "), "{body}");
    assert_eq!(get(&ep, "/livez"), (200, "ok\n".into()));
    assert_eq!(get(&ep, "/health?serializable=true").0, 200, "a liveness probe must not restart it");
    assert_eq!(get(&ep, "/health").0, 503);
    assert!(!Command::new(CAIRN).args(["healthcheck", "--endpoint", &ep]).status().unwrap().success());

    for m in &members[1..] {
        signal("-CONT", m);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&ep, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "ready again after the others came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&ep, "/health").0, 200);
    assert!(Command::new(CAIRN).args(["healthcheck", "--endpoint", &ep]).status().unwrap().success());
}
