//! A gateway and origins whose log reader went away (journald restarting, a log shipper's
//! pipe closed) keep serving: a log line that cannot be written is dropped, and never costs
//! a request or a connection.
//!
//! The formatter's default reports a failed write with `eprintln!`, which panics when stderr
//! itself failed; the panic killed whichever task logged. In the gateway that was every
//! request (its access-log line); in an origin, the connection that logged "connection up"
//! — an origin on two gateways lost connections to the healthy one when a test stopped
//! reading its log (issue 11's unexplained "two gateways" failure).

use http::StatusCode;
use ptth_tests::*;
use std::time::Duration;

/// POSTs are never retried by the gateway, so a connection lost under one shows.
async fn post_round(gw: &Gateway, host: &str, what: &str, n: usize) {
    let c = client(false);
    for i in 0..n {
        let body = format!("{what} request {i}").into_bytes();
        let req = http::Request::post(url(gw, host, "/echo-body"))
            .body(full(body.clone()))
            .unwrap();
        let (res, got) = send(&c, req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{what}: request {i}: {got:?}");
        assert_eq!(got, body, "{what}: request {i}");
        // Spread over more than the origin's admission quiet time (500 ms), after which
        // it logs its connections up.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_whose_log_reader_went_away_lose_no_request() {
    let dir = TempDir::new("closed-stderr");
    let gw = Gateway::start_with_stderr_closed(&dir.0, &[])
        .await
        .expect("a gateway whose stderr is closed starts and reports its addresses");
    for m in ["rh2", "rh1", "rh3"] {
        let host = format!("deaf-{m}.localhost");
        let mut origin = Origin::start_with_stderr_closed(&gw, m, &host, &["--connections", "2"])
            .await
            .unwrap();
        wait_serving(&gw, &host, 30).await.unwrap();
        post_round(&gw, &host, m, 30).await;
        assert!(
            origin.is_running(),
            "{m}: the origin exited while its stderr was closed"
        );
        origin.kill().await;
    }
}
