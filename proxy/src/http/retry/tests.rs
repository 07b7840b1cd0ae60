use std::collections::BTreeSet;

use http::HeaderValue;
use http_body_util::{BodyExt, StreamBody};

use super::*;
use crate::state::route::Backoff;

fn policy(on: &[RetryOn]) -> RetryPolicy {
    RetryPolicy {
        retry_on: on.iter().copied().collect::<BTreeSet<_>>(),
        num_retries: 2,
        per_try_timeout: None,
        retriable_status_codes: vec![418],
        backoff: None,
        avoid_previous_hosts: true,
        host_selection_max_attempts: 5,
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("a status")
}

#[test]
fn failures_are_retried_by_the_conditions_envoy_documents() {
    use Failure::*;
    let refused = Reset { refused: true };
    let reset = Reset { refused: false };
    let cases: &[(RetryOn, &[Failure], &[Failure])] = &[
        (RetryOn::FiveXx, &[Connect, reset, refused, Timeout], &[]),
        (
            RetryOn::GatewayError,
            &[Connect, reset, refused, Timeout],
            &[],
        ),
        (RetryOn::Reset, &[Connect, reset, refused, Timeout], &[]),
        (
            RetryOn::ConnectFailure,
            &[Connect],
            &[reset, refused, Timeout],
        ),
        (RetryOn::ResetBeforeRequest, &[Connect], &[reset, Timeout]),
        (
            RetryOn::RefusedStream,
            &[refused],
            &[Connect, reset, Timeout],
        ),
        (RetryOn::Unavailable, &[], &[Connect, reset, Timeout]),
        (RetryOn::Retriable4xx, &[], &[Connect, reset, Timeout]),
    ];
    for (on, yes, no) in cases {
        let p = policy(&[*on]);
        for f in *yes {
            assert!(retries_failure(&p, *f), "{on:?} retries {f:?}");
        }
        for f in *no {
            assert!(!retries_failure(&p, *f), "{on:?} does not retry {f:?}");
        }
    }
}

#[test]
fn responses_are_retried_by_status_grpc_status_and_headers() {
    let plain = HeaderMap::new();
    let grpc = |code: u32| {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from(code));
        h
    };
    let mut marked = HeaderMap::new();
    marked.insert("x-retry-me", HeaderValue::from_static("1"));
    let names = vec!["x-retry-me".to_string()];
    let p = |on| policy(&[on]);
    assert!(retries_response(
        &p(RetryOn::FiveXx),
        status(500),
        &plain,
        &[]
    ));
    assert!(retries_response(
        &p(RetryOn::FiveXx),
        status(503),
        &plain,
        &[]
    ));
    assert!(!retries_response(
        &p(RetryOn::FiveXx),
        status(404),
        &plain,
        &[]
    ));
    assert!(retries_response(
        &p(RetryOn::GatewayError),
        status(504),
        &plain,
        &[]
    ));
    assert!(!retries_response(
        &p(RetryOn::GatewayError),
        status(500),
        &plain,
        &[]
    ));
    assert!(retries_response(
        &p(RetryOn::Retriable4xx),
        status(409),
        &plain,
        &[]
    ));
    assert!(!retries_response(
        &p(RetryOn::Retriable4xx),
        status(429),
        &plain,
        &[]
    ));
    let codes = p(RetryOn::RetriableStatusCodes);
    assert!(retries_response(&codes, status(418), &plain, &[]));
    assert!(!retries_response(&codes, status(503), &plain, &[]));
    let headers = p(RetryOn::RetriableHeaders);
    assert!(retries_response(&headers, status(200), &marked, &names));
    assert!(!retries_response(&headers, status(200), &plain, &names));
    assert!(!retries_response(&headers, status(200), &marked, &[]));
    for (on, code) in [
        (RetryOn::Cancelled, 1),
        (RetryOn::DeadlineExceeded, 4),
        (RetryOn::ResourceExhausted, 8),
        (RetryOn::Internal, 13),
        (RetryOn::Unavailable, 14),
    ] {
        assert!(
            retries_response(&p(on), status(200), &grpc(code), &[]),
            "{on:?}"
        );
        assert!(
            !retries_response(&p(on), status(200), &grpc(0), &[]),
            "{on:?} on OK"
        );
        assert!(
            !retries_response(&p(on), status(200), &grpc(5), &[]),
            "{on:?} on NOT_FOUND"
        );
    }
    // Connection-level conditions never retry a response.
    for on in [
        RetryOn::Reset,
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
    ] {
        assert!(
            !retries_response(&p(on), status(503), &plain, &[]),
            "{on:?}"
        );
    }
}

#[test]
fn retriable_header_names_are_read_from_the_request() {
    let mut h = HeaderMap::new();
    h.append(RETRIABLE_HEADER_NAMES, HeaderValue::from_static("X-A, x-b"));
    h.append(RETRIABLE_HEADER_NAMES, HeaderValue::from_static(" ,x-c"));
    assert_eq!(retriable_header_names(&h), ["x-a", "x-b", "x-c"]);
}

#[test]
fn backoff_is_jittered_below_a_doubling_ceiling() {
    let mut p = policy(&[RetryOn::FiveXx]);
    p.backoff = Some(Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(35),
    });
    for (retry, ceiling) in [(1, 10), (2, 20), (3, 35), (30, 35)] {
        let waits: Vec<Duration> = (0..200).map(|_| backoff(&p, retry)).collect();
        let ceiling = Duration::from_millis(ceiling);
        assert!(waits.iter().all(|w| *w < ceiling), "retry {retry}");
        // Jittered: not all the same, and some in the upper half.
        assert!(waits.iter().any(|w| *w > ceiling / 2), "retry {retry}");
        assert!(waits.iter().any(|w| *w != waits[0]), "retry {retry}");
    }
    let default = policy(&[RetryOn::FiveXx]);
    assert!((0..100).all(|_| backoff(&default, 1) < Duration::from_millis(25)));
}

fn stream(frames: Vec<Frame<Bytes>>) -> Body {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = frames.into_iter().map(Ok).collect();
    StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
}

async fn read_all(body: Body) -> (Vec<u8>, Option<HeaderMap>) {
    let collected = body.collect().await.expect("the body");
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

#[tokio::test]
async fn every_attempt_gets_the_whole_body_and_trailers() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-t", HeaderValue::from_static("1"));
    let body = stream(vec![
        Frame::data(Bytes::from_static(b"hello ")),
        Frame::data(Bytes::from_static(b"world")),
        Frame::trailers(trailers.clone()),
    ]);
    let replay = Replay::new(body, 1024);
    // The first attempt reads one chunk and fails.
    let mut first = replay.attempt();
    let frame = first.frame().await.expect("a frame").expect("data");
    assert_eq!(frame.into_data().expect("data"), "hello ");
    drop(first);
    assert!(replay.replayable());
    // The second reads it all, the third replays it all from memory.
    for _ in 0..2 {
        let (bytes, t) = read_all(replay.attempt()).await;
        assert_eq!(bytes, b"hello world");
        assert_eq!(t.as_ref(), Some(&trailers));
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_sent_once_and_not_replayable() {
    let body = stream(vec![
        Frame::data(Bytes::from(vec![b'a'; 600])),
        Frame::data(Bytes::from(vec![b'b'; 600])),
    ]);
    let replay = Replay::new(body, 1000);
    let (bytes, _) = read_all(replay.attempt()).await;
    assert_eq!(bytes.len(), 1200);
    assert!(!replay.replayable());
    // Known to be too large from its length: not replayable from the start.
    let sized = http_body_util::Full::new(Bytes::from(vec![0u8; 2000]))
        .map_err(|never| match never {})
        .boxed_unsync();
    assert!(!Replay::new(sized, 1000).replayable());
}

#[tokio::test]
async fn an_attempt_waits_for_the_previous_one_to_give_the_body_back() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
    let replay = Replay::new(body, 1024);
    tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
        .await
        .expect("send");
    let mut first = replay.attempt();
    first.frame().await.expect("a frame").expect("data");
    // The first attempt is still alive (as when a client's connection task
    // holds it): the second must wait, not lose bytes.
    let second = tokio::spawn(read_all(replay.attempt()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!second.is_finished());
    drop(first);
    tx.send(Ok(Frame::data(Bytes::from_static(b"b"))))
        .await
        .expect("send");
    drop(tx);
    let (bytes, _) = second.await.expect("the second attempt");
    assert_eq!(bytes, b"ab");
}

#[tokio::test]
async fn a_failed_downstream_body_is_not_replayable() {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(b"a"))),
        Err("client went away".into()),
    ];
    let replay = Replay::new(
        StreamBody::new(futures::stream::iter(frames)).boxed_unsync(),
        1024,
    );
    assert!(replay.attempt().collect().await.is_err());
    assert!(!replay.replayable());
}

#[tokio::test]
async fn a_follower_reads_only_what_the_attempt_read_and_fails_on_overflow() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
    let replay = Replay::new(body, 1024);
    // The mirror starts first: it must not take the downstream body.
    let mirror = tokio::spawn(read_all(replay.follower()));
    let mut attempt = replay.attempt();
    tx.send(Ok(Frame::data(Bytes::from_static(b"one "))))
        .await
        .expect("send");
    tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
        .await
        .expect("send");
    drop(tx);
    let mut got = Vec::new();
    while let Some(frame) = attempt.frame().await {
        got.extend_from_slice(&frame.expect("a frame").into_data().expect("data"));
    }
    assert_eq!(got, b"one two");
    assert_eq!(mirror.await.expect("the mirror").0, b"one two");

    // Past the limit, a follower that has not got every byte fails.
    let big = stream(vec![
        Frame::data(Bytes::from(vec![b'a'; 600])),
        Frame::data(Bytes::from(vec![b'b'; 600])),
    ]);
    let replay = Replay::new(big, 1000);
    let follower = replay.follower();
    let (bytes, _) = read_all(replay.attempt()).await;
    assert_eq!(bytes.len(), 1200);
    assert!(follower.collect().await.is_err());
}
