#!/bin/bash
# Instructions per proxied request, counted by valgrind's callgrind (user
# space only; deterministic where wall-clock CPU time on a shared VM is not).
#
#   e2e/scripts/proxy-callgrind.sh keel|haproxy h1|h2 [REQUESTS]
#
# Starts an nginx backend (64-byte 200) and keel-proxy (with keel-pilot and
# one ServiceEntry; release build: cargo build --release -p keel-proxy -p
# keel-pilot) or haproxy under callgrind, warms up with 2 000 requests,
# zeroes the counters, sends REQUESTS (default 20 000) with h2load
# (HTTP/1.1: --h1 -c64 -m1; HTTP/2: -c16 -m16), and prints the
# instructions per request and the callgrind output file (read it with
# callgrind_annotate). Needs valgrind, nginx, haproxy, h2load, curl.
# KEEL_EXTRA_YAML=FILE adds config for keel (see below).
set -e
which=$1; proto=$2; n=${3:-20000}
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}/release
if [ "$which" = haproxy ]; then bindir=haproxy; else bindir=$target; fi
d=$(mktemp -d /tmp/keel-callgrind.XXXX)
mkdir -p $d/mesh $d/backend-tmp
cat > $d/backend.conf <<NG
worker_processes 1; daemon off; master_process off; pid $d/backend.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  client_body_temp_path $d/backend-tmp/cb; proxy_temp_path $d/backend-tmp/p; fastcgi_temp_path $d/backend-tmp/f; uwsgi_temp_path $d/backend-tmp/u; scgi_temp_path $d/backend-tmp/s;
  server { listen 127.0.0.1:18081; listen 127.0.0.1:18082 http2;
    location / { default_type text/plain; return 200 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"; } } }
NG
nginx -p $d -c $d/backend.conf -e stderr 2>/dev/null & NG=$!
cat > $d/mesh/mesh.yaml <<Y
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench, namespace: default}
spec:
  hosts: [bench.test]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: 18081}}]
Y
# KEEL_EXTRA_YAML: a file of more config for pilot (a VirtualService or
# DestinationRule for bench.test, say) to measure what it costs.
if [ -n "${KEEL_EXTRA_YAML:-}" ]; then cp "$KEEL_EXTRA_YAML" $d/mesh/extra.yaml; fi
if [ "$bindir" = haproxy ]; then
  cat > $d/h.cfg <<H
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
frontend bench
  bind 127.0.0.1:18090
  bind 127.0.0.1:18091 proto h2
  default_backend backend
backend backend
  server b1 127.0.0.1:18081
H
  valgrind --tool=callgrind --callgrind-out-file=$d/cg.out haproxy -f $d/h.cfg -db 2>$d/vg.log & VP=$!
  h1port=18090; h2port=18091
else
  $target/keel-pilot --config-dir $d/mesh --xds-addr 127.0.0.1:18010 --http-addr 127.0.0.1:0 >$d/pilot.log 2>&1 & PP=$!
  sleep 0.5
  valgrind --tool=callgrind --callgrind-out-file=$d/cg.out $bindir/keel-proxy --xds-address 127.0.0.1:18010 --admin-addr 127.0.0.1:0 --ready-addr 127.0.0.1:0 --stats-addr 127.0.0.1:0 --outbound-addr 127.0.0.1:18090 --inbound-addr 127.0.0.1:0 --pod-name bench-client --labels app=bench-client --concurrency 1 >$d/proxy.log 2>$d/vg.log & VP=$!
  h1port=18090; h2port=18090
fi
for i in $(seq 100); do curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.test:9080' http://127.0.0.1:$h1port/ 2>/dev/null | grep -q 200 && break; sleep 0.2; done
if [ $proto = h2 ]; then
  L="h2load -c16 -m16 -H host:bench.test:9080 http://127.0.0.1:$h2port/"
  h2load -c16 -m16 -n 2000 -H ':authority: bench.test:9080' http://127.0.0.1:$h2port/ >/dev/null
else
  h2load --h1 -c64 -m1 -n 2000 -H ':authority: bench.test:9080' http://127.0.0.1:$h1port/ >/dev/null
fi
callgrind_control -z $VP >/dev/null
if [ $proto = h2 ]; then
  h2load -c16 -m16 -n $n -H ':authority: bench.test:9080' http://127.0.0.1:$h2port/ | grep -E "^requests:|status codes"
else
  h2load --h1 -c64 -m1 -n $n -H ':authority: bench.test:9080' http://127.0.0.1:$h1port/ | grep -E "^requests:|status codes"
fi
callgrind_control -d $VP >/dev/null
sleep 0.5
f=$(ls -t $d/cg.out.* | head -1)
tot=$(grep -E "^(summary|totals):" $f | head -1 | awk "{print \$2}")
echo "$which $proto: $((tot / n)) instructions per request (callgrind output: $f)"
kill $VP $NG ${PP:-} 2>/dev/null; wait 2>/dev/null || true
