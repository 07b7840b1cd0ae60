//! keel-proxy's HTTP routing as a client sees it. Each test starts real
//! processes on loopback ports: keel-echo backends, keel-pilot reading a
//! ServiceEntry whose endpoints are those backends, DestinationRule subsets
//! and VirtualServices, and one keel-proxy. Requests go to the proxy's
//! outbound listener (origin-form with a `Host` header, absolute-form as an
//! explicit proxy, h2c, gRPC, `Upgrade`, `CONNECT`), and each test asserts
//! what the client got back (status, response headers, what keel-echo says it
//! saw, split counts) and the `istio_requests_total` series counted for it.

#[path = "routing/support.rs"]
mod support;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode, Version};
use keel_proto::keel::echo::v1::EchoRequest;
use keel_proto::keel::echo::v1::echo_client::EchoClient;
use support::{
    Client, Mesh, Ports, access_log_lines, docs, get, read_head, request, request_with_body,
    round_trip, service_entry, subsets,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The authority of the ServiceEntry most tests route to.
const ECHO: &str = "echo.test:9080";

/// `echo.test:9080` served by the first keel-echo (`version: v1`) and, when
/// there are two, the second (`version: v2`), with subsets `v1` and `v2`,
/// followed by `extra` documents.
fn echo_service(p: &Ports, extra: &str) -> String {
    let mut endpoints = vec![(p.echo[0], "v1")];
    if let Some(port) = p.echo.get(1) {
        endpoints.push((*port, "v2"));
    }
    docs(&[
        &service_entry("echo.test", 9080, "HTTP", &endpoints),
        &subsets("echo.test", &["v1", "v2"]),
        extra,
    ])
}

/// A VirtualService for `echo.test` with these `http:` routes.
fn echo_routes(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.test]
  http:
{http}"
    )
}

/// Request headers, `(name, value)`.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Two keel-echo processes: `echo-v1` and `echo-v2`.
const TWO_VERSIONS: &[&[&str]] = &[
    &["--name", "echo-v1", "--version", "v1"],
    &["--name", "echo-v2", "--version", "v2"],
];

#[tokio::test]
async fn virtual_host_is_chosen_by_authority() -> Result<()> {
    let mesh = Mesh::start(
        &[&["--name", "echo"], &["--name", "web"]],
        |p| {
            let web = format!(
                "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: 10.96.0.80
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: {}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: default, labels: {{app: web, version: v1}}}}
status: {{podIP: 127.0.0.1, phase: Running}}
",
                p.echo[1]
            );
            // Unknown hosts on a mesh port are refused (Istio's `block_all`).
            let registry_only = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: [\"./*\"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
";
            docs(&[
                &service_entry("echo.test", 9080, "HTTP", &[(p.echo[0], "v1")]),
                &web,
                registry_only,
            ])
        },
        false,
    )?;
    let out = mesh.outbound();
    let mut c = Client::h1(out).await?;

    // Origin-form: the Host header's port picks the route table, its name
    // the virtual host (case-insensitively).
    for host in [ECHO, "ECHO.Test:9080"] {
        let a = c.send(get("/origin?x=1", host)?).await?;
        assert_eq!(a.status, StatusCode::OK, "Host {host}: {}", a.text());
        let seen = a.json()?;
        assert_eq!(seen["name"], "echo", "Host {host}");
        assert_eq!(
            (&seen["path"], &seen["query"]),
            (&"/origin".into(), &"x=1".into())
        );
    }

    // Absolute-form, as an HTTP_PROXY client sends it: the URI's authority
    // routes and becomes the upstream Host.
    let abs = Request::get("http://echo.test:9080/absolute?y=2").body(Full::new(Bytes::new()))?;
    let a = c.send(abs).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let seen = a.json()?;
    assert_eq!(seen["name"], "echo");
    assert_eq!(seen["path"], "/absolute");
    assert_eq!(seen["query"], "y=2");
    assert_eq!(seen["host"], ECHO);
    // The request-target's authority wins over a Host header (RFC 9112
    // §3.2.2), for routing and upstream.
    let abs = Request::get("http://echo.test:9080/absolute")
        .header("host", "web")
        .body(Full::new(Bytes::new()))?;
    let a = c.send(abs).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let seen = a.json()?;
    assert_eq!(
        (&seen["name"], &seen["host"]),
        (&"echo".into(), &ECHO.into())
    );

    // A Kubernetes Service answers to all its aliases, with and without the
    // port (no port is port 80), and to its cluster IP.
    let web_hosts = [
        "web",
        "web:80",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
        "web.default.svc.cluster.local:80",
        "10.96.0.80",
        "10.96.0.80:80",
    ];
    for host in web_hosts {
        let a = c.send(get("/alias", host)?).await?;
        assert_eq!(a.status, StatusCode::OK, "Host {host}: {}", a.text());
        assert_eq!(a.json()?["name"], "web", "Host {host}");
    }

    // HTTP/2 prior knowledge downstream: `:authority` routes the same way.
    let mut h2 = Client::h2(out).await?;
    let a = h2
        .send(Request::get("http://echo.test:9080/h2").body(Full::new(Bytes::new()))?)
        .await?;
    assert_eq!(
        (a.status, a.version),
        (StatusCode::OK, Version::HTTP_2),
        "{}",
        a.text()
    );
    let seen = a.json()?;
    assert_eq!(
        (&seen["name"], &seen["path"]),
        (&"echo".into(), &"/h2".into())
    );
    assert_eq!(seen["host"], ECHO);
    let a = h2
        .send(Request::get("http://web/h2").body(Full::new(Bytes::new()))?)
        .await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()?["name"], "web");

    // An unknown host on a mesh port: the catch-all virtual host answers
    // 502 under REGISTRY_ONLY.
    let a = c.send(get("/", "nope.test:9080")?).await?;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert_eq!(a.header("x-echo-name"), None);

    // No listener serves the port: the proxy's own 404.
    let a = c.send(get("/", "nope.test:7777")?).await?;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());
    assert_eq!(a.header("x-keel-error"), Some("no_route"));

    let ok = [("response_code", "200"), ("response_flags", "-")];
    mesh.expect_requests(
        &[&ok[..], &[("destination_service", "echo.test")]].concat(),
        5,
    )?;
    let web = ("destination_service", "web.default.svc.cluster.local");
    mesh.expect_requests(&[&ok[..], &[web]].concat(), web_hosts.len() as u64 + 1)?;
    mesh.expect_requests(
        &[("response_code", "404"), ("response_flags", "no_route")],
        1,
    )?;
    Ok(())
}

#[tokio::test]
async fn routes_match_path_headers_query_and_method() -> Result<()> {
    // Every route tags the request with its name; keel-echo shows the tag.
    let routes = [
        ("exact", "[{uri: {exact: /exact}}]"),
        ("prefix", "[{uri: {prefix: /prefix}}]"),
        ("regex", r#"[{uri: {regex: "/items/[0-9]+"}}]"#),
        (
            "ignore-case",
            "[{uri: {exact: /CaseLess}, ignoreUriCase: true}]",
        ),
        ("header-exact", "[{headers: {x-user: {exact: jason}}}]"),
        ("header-prefix", "[{headers: {x-team: {prefix: blue}}}]"),
        (
            "header-regex",
            r#"[{headers: {x-build: {regex: "v[0-9]+"}}}]"#,
        ),
        ("header-present", "[{headers: {x-present: {}}}]"),
        ("query", r#"[{queryParams: {debug: {exact: "1"}}}]"#),
        ("method", "[{method: {exact: POST}}]"),
        ("any-of", "[{uri: {exact: /a}}, {uri: {exact: /b}}]"),
        (
            "all-of",
            "[{uri: {prefix: /both}, headers: {x-user: {exact: ann}}}]",
        ),
        (
            "without",
            "[{uri: {prefix: /without}, withoutHeaders: {x-user: {exact: jason}}}]",
        ),
    ];
    let mut http = String::new();
    for (name, matches) in routes {
        http.push_str(&format!(
            "  - name: {name}\n    match: {matches}\n    \
             headers: {{request: {{set: {{x-route: {name}}}}}}}\n    \
             route: [{{destination: {{host: echo.test}}}}]\n"
        ));
    }
    http.push_str(
        "  - name: default\n    headers: {request: {set: {x-route: default}}}\n    \
         route: [{destination: {host: echo.test}}]\n",
    );
    let mesh = Mesh::start(
        &TWO_VERSIONS[..1],
        |p| echo_service(p, &echo_routes(&http)),
        false,
    )?;

    use Method as M;
    // (method, path and query, request headers, the route that must match)
    let cases: &[(Method, &str, Headers<'_>, &str)] = &[
        (M::GET, "/exact", &[], "exact"),
        (M::GET, "/exact?x=1", &[], "exact"),
        (M::GET, "/exact/more", &[], "default"),
        (M::GET, "/EXACT", &[], "default"),
        (M::GET, "/prefix", &[], "prefix"),
        (M::GET, "/prefix/a/b", &[], "prefix"),
        (M::GET, "/items/42", &[], "regex"),
        (M::GET, "/items/42?page=2", &[], "regex"),
        (M::GET, "/items/42/x", &[], "default"),
        (M::GET, "/items/abc", &[], "default"),
        (M::GET, "/caseless", &[], "ignore-case"),
        (M::GET, "/CASELESS", &[], "ignore-case"),
        (M::GET, "/x", &[("x-user", "jason")], "header-exact"),
        (M::GET, "/x", &[("x-user", "jason2")], "default"),
        (M::GET, "/x", &[("x-team", "blueberry")], "header-prefix"),
        (M::GET, "/x", &[("x-team", "red")], "default"),
        (M::GET, "/x", &[("x-build", "v12")], "header-regex"),
        (M::GET, "/x", &[("x-build", "v12-rc")], "default"),
        (M::GET, "/x", &[("x-present", "anything")], "header-present"),
        (M::GET, "/x?debug=1", &[], "query"),
        (M::GET, "/x?a=b&debug=1", &[], "query"),
        (M::GET, "/x?debug=10", &[], "default"),
        (M::POST, "/x", &[], "method"),
        (M::PUT, "/x", &[], "default"),
        (M::GET, "/a", &[], "any-of"),
        (M::GET, "/b", &[], "any-of"),
        (M::GET, "/both", &[("x-user", "ann")], "all-of"),
        (M::GET, "/both", &[], "default"),
        (M::GET, "/without", &[("x-user", "bob")], "without"),
        (M::GET, "/without", &[("x-user", "jason")], "header-exact"),
        // Istio marks withoutHeaders value matches
        // `treat_missing_header_as_empty`: an absent header matches.
        (M::GET, "/without", &[], "without"),
        (M::GET, "/", &[], "default"),
    ];
    let mut c = Client::h1(mesh.outbound()).await?;
    let mut wrong = Vec::new();
    for (method, path, headers, want) in cases {
        let a = c
            .send(request(method.clone(), path, ECHO, headers)?)
            .await?;
        ensure!(
            a.status == StatusCode::OK,
            "{method} {path}: {} {}",
            a.status,
            a.text()
        );
        let seen = a.json()?;
        let got = seen["headers"]["x-route"]
            .as_str()
            .unwrap_or("(none)")
            .to_string();
        if got != *want {
            wrong.push(format!(
                "{method} {path} {headers:?}: route {got}, want {want}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong routes:\n{}\nthe proxy's route table: {:#}",
        wrong.join("\n"),
        mesh.proxy.config_dump()?["routes"]["9080"]
    );
    mesh.expect_requests(&[("response_code", "200")], cases.len() as u64)?;
    Ok(())
}

#[tokio::test]
async fn weighted_split_and_subset_routes() -> Result<()> {
    let vs = echo_routes(
        "  - name: v2-only
    match: [{uri: {prefix: /v2-only}}]
    route: [{destination: {host: echo.test, subset: v2}}]
  - name: split
    route:
    - {destination: {host: echo.test, subset: v1}, weight: 80}
    - {destination: {host: echo.test, subset: v2}, weight: 20}
",
    );
    let mesh = Mesh::start(TWO_VERSIONS, |p| echo_service(p, &vs), false)?;
    let mut c = Client::h1(mesh.outbound()).await?;

    const SPLIT: u64 = 1000;
    let (mut v1, mut v2) = (0u64, 0u64);
    for _ in 0..SPLIT {
        let a = c.send(get("/split", ECHO)?).await?;
        ensure!(a.status == StatusCode::OK, "{} {}", a.status, a.text());
        match a.header("x-echo-version") {
            Some("v1") => v1 += 1,
            Some("v2") => v2 += 1,
            other => anyhow::bail!("answered by version {other:?}"),
        }
    }
    eprintln!("80/20 split over {SPLIT} requests: v1 {v1}, v2 {v2}");
    // 80 % ± 5 points (the standard deviation is 1.3 points).
    assert!(
        (750..=850).contains(&v1),
        "v1 got {v1} of {SPLIT}, want 800 ± 50"
    );

    const ONLY: u64 = 100;
    for _ in 0..ONLY {
        let a = c.send(get("/v2-only/x", ECHO)?).await?;
        assert_eq!(
            a.header("x-echo-version"),
            Some("v2"),
            "{} {}",
            a.status,
            a.text()
        );
    }

    let ok = [
        ("response_code", "200"),
        ("destination_service", "echo.test"),
    ];
    mesh.expect_requests(&[&ok[..], &[("destination_version", "v1")]].concat(), v1)?;
    mesh.expect_requests(
        &[&ok[..], &[("destination_version", "v2")]].concat(),
        v2 + ONLY,
    )?;
    Ok(())
}

#[tokio::test]
async fn open_connections_follow_a_route_change() -> Result<()> {
    let to = |subset: &str| {
        echo_routes(&format!(
            "  - route: [{{destination: {{host: echo.test, subset: {subset}}}}}]\n"
        ))
    };
    let mesh = Mesh::start(TWO_VERSIONS, |p| echo_service(p, &to("v1")), false)?;
    let ports = Ports {
        echo: mesh.echoes.iter().map(|e| e.addr.port()).collect(),
        refused: 0,
    };
    let mut clients = [
        Client::h1(mesh.outbound()).await?,
        Client::h2(mesh.outbound()).await?,
    ];
    for c in &mut clients {
        let a = c.send(get("/", ECHO)?).await?;
        assert_eq!(a.header("x-echo-version"), Some("v1"), "{}", a.text());
    }
    // The proxy remembers each connection's route table between requests;
    // the change must reach the connections already open.
    mesh.reconfigure(&echo_service(&ports, &to("v2")))?;
    for c in &mut clients {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let a = c.send(get("/", ECHO)?).await?;
            if a.header("x-echo-version") == Some("v2") {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "still routed to {:?} 15 s after the change",
                a.header("x-echo-version")
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for _ in 0..5 {
            let a = c.send(get("/", ECHO)?).await?;
            assert_eq!(a.header("x-echo-version"), Some("v2"), "{}", a.text());
        }
    }
    Ok(())
}

#[tokio::test]
async fn header_operations_apply_per_route_and_per_destination() -> Result<()> {
    let vs = echo_routes(
        "  - name: split
    match: [{uri: {prefix: /split}}]
    route:
    - destination: {host: echo.test, subset: v1}
      weight: 50
      headers:
        request: {set: {x-dest: v1}}
        response: {set: {x-served-by: v1}}
    - destination: {host: echo.test, subset: v2}
      weight: 50
      headers:
        request: {set: {x-dest: v2}}
        response: {set: {x-served-by: v2}}
  - name: authority
    match: [{uri: {exact: /authority}}]
    headers: {request: {set: {host: custom.test}}}
    route: [{destination: {host: echo.test, subset: v1}}]
  - name: authority-split
    match: [{uri: {exact: /authority-split}}]
    route:
    - destination: {host: echo.test, subset: v1}
      weight: 50
      headers: {request: {set: {host: v1.echo.test}}}
    - destination: {host: echo.test, subset: v2}
      weight: 50
      headers: {request: {set: {':authority': v2.echo.test}}}
  - name: single
    headers:
      request:
        set: {x-set: set-value, x-overwritten: new}
        add: {x-added: added}
        remove: [x-remove-me]
      response:
        set: {x-resp-set: s, x-echo-name: renamed}
        add: {x-resp-add: a}
        remove: [x-echo-version]
    route:
    - destination: {host: echo.test, subset: v1}
      headers:
        request: {set: {x-dest-single: v1}}
        response: {add: {x-dest-single: v1}}
",
    );
    let mesh = Mesh::start(TWO_VERSIONS, |p| echo_service(p, &vs), false)?;
    let mut c = Client::h1(mesh.outbound()).await?;

    let client_headers = [
        ("x-overwritten", "old"),
        ("x-remove-me", "secret"),
        ("x-added", "client"),
        ("x-untouched", "kept"),
    ];
    let a = c
        .send(request(Method::GET, "/page", ECHO, &client_headers)?)
        .await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let seen = a.json()?;
    let h = &seen["headers"];
    assert_eq!(seen["version"], "v1");
    assert_eq!(h["x-set"], "set-value", "{h}");
    assert_eq!(h["x-overwritten"], "new", "{h}");
    assert_eq!(h["x-added"], "client,added", "add appends: {h}");
    assert!(
        h.get("x-remove-me").is_none(),
        "removed header reached the upstream: {h}"
    );
    assert_eq!(h["x-untouched"], "kept", "{h}");
    assert_eq!(h["x-dest-single"], "v1", "{h}");
    assert_eq!(a.header("x-resp-set"), Some("s"));
    assert_eq!(
        a.header("x-echo-name"),
        Some("renamed"),
        "set overwrites the upstream's"
    );
    assert_eq!(a.header("x-resp-add"), Some("a"));
    assert_eq!(
        a.header("x-echo-version"),
        None,
        "removed from the response"
    );
    assert_eq!(a.header("x-dest-single"), Some("v1"));

    // Each weighted destination's own headers go with it, both ways.
    let mut versions = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let a = c.send(get("/split", ECHO)?).await?;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        let version = a
            .header("x-echo-version")
            .context("x-echo-version")?
            .to_string();
        assert_eq!(a.header("x-served-by"), Some(version.as_str()));
        assert_eq!(a.json()?["headers"]["x-dest"], version.as_str());
        assert_eq!(
            a.header("x-resp-set"),
            None,
            "route headers of another route"
        );
        versions.insert(version);
    }
    assert_eq!(
        versions.len(),
        2,
        "20 requests split 50/50 reached only {versions:?}"
    );

    // Setting `host` (or `:authority`) rewrites the authority: Istio turns
    // it into `host_rewrite_literal` on the route or the weighted cluster.
    let a = c.send(get("/authority", ECHO)?).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()?["host"], "custom.test");
    for _ in 0..10 {
        let a = c.send(get("/authority-split", ECHO)?).await?;
        let seen = a.json()?;
        let want = format!("{}.echo.test", seen["version"].as_str().unwrap_or("?"));
        assert_eq!(seen["host"], want.as_str());
    }
    Ok(())
}

#[tokio::test]
async fn rewrites_redirects_and_direct_responses() -> Result<()> {
    let vs = echo_routes(
        "  - name: rewrite
    match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: rewritten.test}
    route: [{destination: {host: echo.test}}]
  - name: regex-rewrite
    match: [{uri: {prefix: /users/}}]
    rewrite: {uriRegexRewrite: {match: '^/users/([0-9]+)/profile$', rewrite: '/profiles/\\1'}}
    route: [{destination: {host: echo.test}}]
  - name: rewrite-exact
    match: [{uri: {exact: /exact-old}}]
    rewrite: {uri: /replaced}
    route: [{destination: {host: echo.test}}]
  - name: moved
    match: [{uri: {exact: /moved}}]
    redirect: {uri: /new-home, authority: other.test}
  - name: secure
    match: [{uri: {prefix: /secure}}]
    redirect: {scheme: https}
  - name: found
    match: [{uri: {prefix: /found}}]
    redirect: {uri: /elsewhere, redirectCode: 302}
  - name: teapot
    match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {string: teapot}}
  - name: default
    route: [{destination: {host: echo.test}}]
",
    );
    let mesh = Mesh::start(&TWO_VERSIONS[..1], |p| echo_service(p, &vs), false)?;
    let mut c = Client::h1(mesh.outbound()).await?;

    // rewrite.uri replaces the matched prefix and keeps the query;
    // rewrite.authority sets the upstream Host.
    let a = c.send(get("/old/page?q=1", ECHO)?).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let seen = a.json()?;
    assert_eq!(seen["path"], "/new/page");
    assert_eq!(seen["query"], "q=1");
    assert_eq!(seen["host"], "rewritten.test");

    // On an exact match the whole path is replaced; the query stays.
    let a = c.send(get("/exact-old?x=2", ECHO)?).await?;
    let seen = a.json()?;
    assert_eq!(
        (&seen["path"], &seen["query"]),
        (&"/replaced".into(), &"x=2".into())
    );

    // uriRegexRewrite substitutes in the path only.
    let a = c.send(get("/users/42/profile?tab=a", ECHO)?).await?;
    let seen = a.json()?;
    assert_eq!(
        (&seen["path"], &seen["query"]),
        (&"/profiles/42".into(), &"tab=a".into())
    );

    // Redirects are answered by the proxy: 301 by default, with the new
    // authority (port dropped) or the request's own; a new path keeps the
    // request's query.
    let a = c.send(get("/moved?from=old", ECHO)?).await?;
    assert_eq!(a.status, StatusCode::MOVED_PERMANENTLY, "{}", a.text());
    assert_eq!(
        a.header("location"),
        Some("http://other.test/new-home?from=old")
    );
    assert_eq!(
        a.header("x-echo-name"),
        None,
        "a redirect must not reach the upstream"
    );
    let a = c.send(get("/found", ECHO)?).await?;
    assert_eq!(a.status, StatusCode::FOUND, "{}", a.text());
    assert_eq!(
        a.header("location"),
        Some("http://echo.test:9080/elsewhere")
    );
    // A scheme redirect keeps a port that is not the old scheme's default.
    let a = c.send(get("/secure/page", ECHO)?).await?;
    assert_eq!(a.status, StatusCode::MOVED_PERMANENTLY, "{}", a.text());
    assert_eq!(
        a.header("location"),
        Some("https://echo.test:9080/secure/page")
    );

    let a = c.send(get("/teapot/pot", ECHO)?).await?;
    assert_eq!(a.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(&a.body[..], b"teapot");
    assert_eq!(a.header("x-echo-name"), None);
    assert_eq!(
        a.header("x-keel-error"),
        None,
        "a configured response is not an error"
    );

    let a = c.send(get("/other", ECHO)?).await?;
    let seen = a.json()?;
    assert_eq!(
        (&seen["path"], &seen["host"]),
        (&"/other".into(), &ECHO.into())
    );

    for (code, n) in [("200", 4), ("301", 2), ("302", 1), ("418", 1)] {
        mesh.expect_requests(&[("response_code", code), ("response_flags", "-")], n)?;
    }
    Ok(())
}

#[tokio::test]
async fn proxy_errors_carry_codes_and_response_flags() -> Result<()> {
    let vs = echo_routes(
        "  - name: dead
    match: [{uri: {prefix: /dead}}]
    retries: {attempts: 0}
    route: [{destination: {host: echo.test, subset: dead}}]
  - name: empty
    match: [{uri: {prefix: /empty}}]
    retries: {attempts: 0}
    route: [{destination: {host: echo.test, subset: empty}}]
  - name: slow
    match: [{uri: {prefix: /slow}}]
    timeout: 0.2s
    retries: {attempts: 0}
    headers: {request: {set: {x-echo-delay-ms: \"1000\"}}}
    route: [{destination: {host: echo.test, subset: v1}}]
  - name: upstream-status
    match: [{uri: {prefix: /status}}]
    retries: {attempts: 0}
    route: [{destination: {host: echo.test, subset: v1}}]
  - name: ok
    route: [{destination: {host: echo.test, subset: v1}}]
",
    );
    let mesh = Mesh::start(
        &TWO_VERSIONS[..1],
        |p| {
            docs(&[
                &service_entry(
                    "echo.test",
                    9080,
                    "HTTP",
                    &[(p.echo[0], "v1"), (p.refused, "dead")],
                ),
                &subsets("echo.test", &["v1", "dead", "empty"]),
                &vs,
            ])
        },
        false,
    )?;
    let mut c = Client::h1(mesh.outbound()).await?;

    let cases = [
        (
            "/dead",
            StatusCode::SERVICE_UNAVAILABLE,
            "connect_failure",
            3,
        ),
        (
            "/empty",
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_upstream",
            2,
        ),
        ("/slow", StatusCode::GATEWAY_TIMEOUT, "timeout", 2),
    ];
    for (path, status, code, n) in cases {
        for _ in 0..n {
            let a = c.send(get(path, ECHO)?).await?;
            assert_eq!(a.status, status, "{path}: {}", a.text());
            assert_eq!(a.header("x-keel-error"), Some(code), "{path}");
            assert!(a.text().starts_with(code), "{path}: body {:?}", a.text());
        }
    }
    const OK: u64 = 5;
    for _ in 0..OK {
        let a = c.send(get("/fine", ECHO)?).await?;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.header("x-keel-error"), None);
    }

    // The upstream's own error statuses pass through as they are: not the
    // proxy's errors.
    for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::NO_CONTENT] {
        let a = c
            .send(request(
                Method::GET,
                "/status",
                ECHO,
                &[("x-echo-status", status.as_str())],
            )?)
            .await?;
        assert_eq!(a.status, status, "{}", a.text());
        assert_eq!(a.header("x-keel-error"), None);
        assert_eq!(a.header("x-echo-name"), Some("echo-v1"));
        if status == StatusCode::NO_CONTENT {
            assert!(a.body.is_empty(), "204 with a body: {}", a.text());
        }
    }

    let svc = ("destination_service", "echo.test");
    let v1 = ("destination_version", "v1");
    mesh.expect_requests(
        &[("response_code", "503"), ("response_flags", "-"), v1, svc],
        1,
    )?;
    mesh.expect_requests(
        &[("response_code", "204"), ("response_flags", "-"), v1, svc],
        1,
    )?;
    for (_, status, code, n) in cases {
        mesh.expect_requests(
            &[
                ("response_code", status.as_str()),
                ("response_flags", code),
                svc,
            ],
            n,
        )?;
    }
    mesh.expect_requests(
        &[
            ("response_code", "200"),
            ("response_flags", "-"),
            ("destination_version", "v1"),
            svc,
        ],
        OK,
    )?;
    Ok(())
}

#[tokio::test]
async fn grpc_goes_through_with_status_from_trailers() -> Result<()> {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: grpc, namespace: default}
spec:
  hosts: [grpc.test]
  http:
  - name: dead
    match: [{headers: {x-target: {exact: dead}}}]
    retries: {attempts: 0}
    route: [{destination: {host: grpc.test, subset: dead}}]
  - name: slow
    match: [{headers: {x-target: {exact: slow}}}]
    timeout: 0.2s
    retries: {attempts: 0}
    route: [{destination: {host: grpc.test, subset: v1}}]
  - name: grpc
    route: [{destination: {host: grpc.test, subset: v1}}]
";
    let mesh = Mesh::start(
        &[&["--name", "grpc-echo", "--version", "v1"]],
        |p| {
            docs(&[
                &service_entry(
                    "grpc.test",
                    9090,
                    "GRPC",
                    &[(p.echo[0], "v1"), (p.refused, "dead")],
                ),
                &subsets("grpc.test", &["v1", "dead"]),
                vs,
            ])
        },
        false,
    )?;
    // h2c to the outbound listener, with `:authority: grpc.test:9090`.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.outbound()))?
        .origin("http://grpc.test:9090".parse()?)
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await?;
    let mut client = EchoClient::new(channel);

    let resp = client
        .echo(EchoRequest {
            message: "through the mesh".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        resp.metadata()
            .get("x-echo-name")
            .and_then(|v| v.to_str().ok()),
        Some("grpc-echo")
    );
    let resp = resp.into_inner();
    assert_eq!(
        (resp.message.as_str(), resp.version.as_str()),
        ("through the mesh", "v1")
    );
    assert_eq!(
        resp.metadata.get("x-forwarded-proto").map(String::as_str),
        Some("http"),
        "the call did not go through the proxy: {:?}",
        resp.metadata
    );

    // A server stream ends with grpc-status 0 in trailers.
    let mut stream = client
        .server_stream(EchoRequest {
            count: 4,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut indexes = Vec::new();
    while let Some(answer) = stream.message().await? {
        indexes.push(answer.index);
    }
    assert_eq!(indexes, [0, 1, 2, 3]);

    // The upstream's failure reaches the client with its code.
    let failed = client
        .echo(EchoRequest {
            fail_code: tonic::Code::PermissionDenied as i32,
            ..Default::default()
        })
        .await
        .err()
        .context("fail_code 7 should fail the call")?;
    assert_eq!(failed.code(), tonic::Code::PermissionDenied, "{failed:?}");

    // The proxy's own failure is a gRPC status too, with its code.
    let mut dead = tonic::Request::new(EchoRequest::default());
    dead.metadata_mut().insert("x-target", "dead".parse()?);
    let failed = client
        .echo(dead)
        .await
        .err()
        .context("a call to a refusing endpoint should fail")?;
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    assert_eq!(
        failed
            .metadata()
            .get("x-keel-error")
            .and_then(|v| v.to_str().ok()),
        Some("connect_failure")
    );
    // The route timeout: 504 mapped to UNAVAILABLE, as Envoy does.
    let mut slow = tonic::Request::new(EchoRequest {
        delay_ms: 1000,
        ..Default::default()
    });
    slow.metadata_mut().insert("x-target", "slow".parse()?);
    let failed = client
        .echo(slow)
        .await
        .err()
        .context("a call slower than the route timeout should fail")?;
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    assert_eq!(
        failed
            .metadata()
            .get("x-keel-error")
            .and_then(|v| v.to_str().ok()),
        Some("timeout")
    );

    let grpc = [("request_protocol", "grpc"), ("response_code", "200")];
    let with = |extra: &[(&'static str, &'static str)]| [&grpc[..], extra].concat();
    mesh.expect_requests(
        &with(&[("grpc_response_status", "0"), ("response_flags", "-")]),
        2,
    )?;
    mesh.expect_requests(
        &with(&[("grpc_response_status", "7"), ("response_flags", "-")]),
        1,
    )?;
    mesh.expect_requests(
        &with(&[
            ("grpc_response_status", "14"),
            ("response_flags", "connect_failure"),
        ]),
        1,
    )?;
    mesh.expect_requests(
        &with(&[
            ("grpc_response_status", "14"),
            ("response_flags", "timeout"),
        ]),
        1,
    )?;
    Ok(())
}

#[tokio::test]
async fn large_bodies_stream_through_whole() -> Result<()> {
    const SIZE: usize = 5 << 20;
    let mesh = Mesh::start(&TWO_VERSIONS[..1], |p| echo_service(p, ""), false)?;
    let out = mesh.outbound();
    let upload = Bytes::from(vec![b'u'; SIZE]);
    let size_path = format!("/download?size={SIZE}");

    for mut c in [Client::h1(out).await?, Client::h2(out).await?] {
        let host = if matches!(c, Client::H1(_)) { ECHO } else { "" };
        let (post_uri, get_uri) = if host.is_empty() {
            (
                format!("http://{ECHO}/upload"),
                format!("http://{ECHO}{size_path}"),
            )
        } else {
            ("/upload".to_string(), size_path.clone())
        };
        let post = request_with_body(Method::POST, &post_uri, host, &[], upload.clone())?;
        let a = c.send(post).await?;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(
            a.json()?["body_bytes"],
            SIZE,
            "{post_uri} over {:?}",
            a.version
        );

        let a = c.send(get(&get_uri, host)?).await?;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body.len(), SIZE, "{get_uri} over {:?}", a.version);
        assert!(
            a.body.iter().all(|b| *b == b'a'),
            "the download was corrupted"
        );
    }

    // HEAD: the length of the body it would have, and no body; the
    // connection stays usable.
    let mut c = Client::h1(out).await?;
    let a = c
        .send(request(Method::HEAD, &size_path, ECHO, &[])?)
        .await?;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-length"), Some(SIZE.to_string().as_str()));
    assert!(
        a.body.is_empty(),
        "HEAD answered with {} bytes",
        a.body.len()
    );
    let a = c.send(get("/after-head", ECHO)?).await?;
    assert_eq!(a.json()?["path"], "/after-head");

    // `Expect: 100-continue` (curl sends it for bodies over 1 MiB): the
    // client gets 100 before it sends the body.
    let mut stream = TcpStream::connect(out).await?;
    stream
        .write_all(
            b"POST /expect HTTP/1.1\r\nHost: echo.test:9080\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await?;
    let (status, head) = read_head(&mut stream).await?;
    assert_eq!(status, 100, "{head}");
    stream.write_all(b"hello").await?;
    let (status, head) = read_head(&mut stream).await?;
    assert_eq!(status, 200, "{head}");

    mesh.expect_requests(
        &[
            ("response_code", "200"),
            ("destination_service", "echo.test"),
        ],
        7,
    )?;
    Ok(())
}

#[tokio::test]
async fn websocket_upgrade_passes_through() -> Result<()> {
    let mesh = Mesh::start(&TWO_VERSIONS[..1], |p| echo_service(p, ""), false)?;
    // As curl and Chrome send it, and as Firefox does (`keep-alive, Upgrade`).
    let connections = ["Upgrade", "keep-alive, Upgrade"];
    for connection in connections {
        let mut stream = TcpStream::connect(mesh.outbound()).await?;
        let upgrade = format!(
            "GET /ws HTTP/1.1\r\nHost: echo.test:9080\r\nConnection: {connection}\r\n\
             Upgrade: websocket\r\n\r\n"
        );
        stream.write_all(upgrade.as_bytes()).await?;
        let (status, head) = read_head(&mut stream).await?;
        assert_eq!(status, 101, "Connection: {connection}: {head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("upgrade: websocket"), "{head}");
        assert!(lower.contains("x-echo-name: echo-v1"), "{head}");
        for msg in [&b"hello through the mesh"[..], &[0u8, 255, 10, 13, 10][..]] {
            assert_eq!(round_trip(&mut stream, msg).await?, msg);
        }
    }
    mesh.expect_requests(
        &[
            ("response_code", "101"),
            ("destination_service", "echo.test"),
        ],
        connections.len() as u64,
    )?;
    Ok(())
}

#[tokio::test]
async fn connect_tunnels_to_the_service() -> Result<()> {
    let mesh = Mesh::start(&TWO_VERSIONS[..1], |p| echo_service(p, ""), false)?;
    // To a mesh service by name, and (passthrough) to an address the mesh
    // does not know.
    let direct = mesh.echoes[0].addr.to_string();
    for target in [ECHO, direct.as_str()] {
        let mut stream = TcpStream::connect(mesh.outbound()).await?;
        let connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        stream.write_all(connect.as_bytes()).await?;
        let (status, head) = read_head(&mut stream).await?;
        assert_eq!(status, 200, "CONNECT {target}: {head}");

        // Plain HTTP/1.1 inside the tunnel reaches keel-echo unmodified.
        let inner = format!("GET /inside HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        stream.write_all(inner.as_bytes()).await?;
        let mut raw = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut raw),
        )
        .await
        .context("the tunnelled answer did not end")??;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("no head in the answer")?;
        assert!(head.starts_with("HTTP/1.1 200"), "CONNECT {target}: {text}");
        let seen: serde_json::Value =
            serde_json::from_str(body).with_context(|| text.to_string())?;
        assert_eq!(
            (&seen["name"], &seen["path"], &seen["host"]),
            (&"echo-v1".into(), &"/inside".into(), &target.into())
        );
        assert!(
            seen["headers"].get("x-forwarded-proto").is_none(),
            "a tunnelled request is not an HTTP hop of the proxy: {seen}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn access_log_has_one_json_line_per_request() -> Result<()> {
    let vs = echo_routes(
        "  - name: to-v2
    match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: echo.test, subset: v2}}]
  - name: teapot
    match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {string: teapot}}
  - name: to-v1
    route: [{destination: {host: echo.test, subset: v1}}]
",
    );
    let mesh = Mesh::start(TWO_VERSIONS, |p| echo_service(p, &vs), true)?;
    let mut c = Client::h1(mesh.outbound()).await?;
    let plan: [(&str, &str, usize); 4] = [
        ("/v1", ECHO, 5),
        ("/v2", ECHO, 3),
        ("/teapot", ECHO, 2),
        ("/", "nope.test:7777", 1),
    ];
    let mut sent = 0;
    for (path, host, n) in plan {
        for _ in 0..n {
            let id = format!("req-{sent}");
            c.send(request(Method::GET, path, host, &[("x-request-id", &id)])?)
                .await?;
            sent += 1;
        }
    }

    keel_e2e::wait_until(std::time::Duration::from_secs(5), || {
        access_log_lines(&mesh.access_log).is_ok_and(|l| l.len() >= sent)
    });
    let lines = access_log_lines(&mesh.access_log)?;
    assert_eq!(lines.len(), sent, "{lines:#?}");
    let (v1, v2) = (
        mesh.echoes[0].addr.to_string(),
        mesh.echoes[1].addr.to_string(),
    );
    // Lines are written as responses end; match them to requests by id.
    let mut ids = Vec::new();
    for line in &lines {
        let id = line["request_id"].as_str().unwrap_or_default();
        let i: usize = id
            .strip_prefix("req-")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("request_id {id:?} is not one sent: {line}"))?;
        ids.push(i);
        let (code, flags, cluster, route, upstream, authority) = match i {
            0..5 => (
                200,
                "-",
                "outbound|9080|v1|echo.test",
                "to-v1",
                v1.as_str(),
                ECHO,
            ),
            5..8 => (
                200,
                "-",
                "outbound|9080|v2|echo.test",
                "to-v2",
                v2.as_str(),
                ECHO,
            ),
            8..10 => (418, "-", "", "teapot", "", ECHO),
            _ => (404, "no_route", "", "", "", "nope.test:7777"),
        };
        let field = |k: &str| line[k].clone();
        assert_eq!(field("method"), "GET", "{line}");
        assert_eq!(field("authority"), authority, "{line}");
        assert_eq!(field("response_code"), code, "{line}");
        assert_eq!(field("response_flags"), flags, "{line}");
        assert_eq!(field("upstream_cluster"), cluster, "{line}");
        assert_eq!(field("route_name"), route, "{line}");
        assert_eq!(field("upstream_host"), upstream, "{line}");
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..sent).collect::<Vec<_>>(), "one line per request");
    Ok(())
}
