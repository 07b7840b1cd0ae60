#!/usr/bin/env node
'use strict';
// A real grpc-js xDS client for the interop tests.
//
// The xDS server and node identity come from the bootstrap file named by
// GRPC_XDS_BOOTSTRAP. Modes:
//
//   node client.js --calls N [--metadata k=v ...] [--target xds:///echo.test:7070]
//       makes N Echo calls (up to --concurrency at once) and prints one JSON
//       summary: {"ok":N,"errors":{"UNAVAILABLE":N},"versions":{"v1":N},"messages":{...}}
//   node client.js --watch [--interval-ms 5] [--window 100] [--duration-ms 60000]
//       starts a call every --interval-ms and prints one JSON line per --window
//       completed calls: {"window":I,"at_ms":EPOCH_MS,"ok":N,"errors":{},"versions":{}}
//       until --duration-ms has passed or stdin closes.
//
// "messages" keeps the first error message per status code, so a failing test
// shows why the client failed (e.g. the xDS NACK reason).

const { grpc, loadEcho } = require('./echo');
require('@grpc/grpc-js-xds').register();

function usage(msg) {
  process.stderr.write(`client.js: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    target: 'xds:///echo.test:7070',
    calls: null,
    watch: false,
    metadata: [],
    concurrency: 20,
    deadlineMs: 5000,
    intervalMs: 5,
    window: 100,
    durationMs: 60000,
  };
  const num = (flag, v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) usage(`${flag} needs a positive integer, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const takes = () => {
      if (i + 1 >= argv.length) usage(`${flag} needs a value`);
      return argv[++i];
    };
    switch (flag) {
      case '--target': opts.target = takes(); break;
      case '--calls': opts.calls = num(flag, takes()); break;
      case '--watch': opts.watch = true; break;
      case '--metadata': {
        const kv = takes();
        const eq = kv.indexOf('=');
        if (eq <= 0) usage(`--metadata wants key=value, got ${kv}`);
        opts.metadata.push([kv.slice(0, eq), kv.slice(eq + 1)]);
        break;
      }
      case '--concurrency': opts.concurrency = num(flag, takes()); break;
      case '--deadline-ms': opts.deadlineMs = num(flag, takes()); break;
      case '--interval-ms': opts.intervalMs = num(flag, takes()); break;
      case '--window': opts.window = num(flag, takes()); break;
      case '--duration-ms': opts.durationMs = num(flag, takes()); break;
      default: usage(`unknown argument ${flag}`);
    }
  }
  if ((opts.calls === null) === !opts.watch) usage('give exactly one of --calls N or --watch');
  if (!process.env.GRPC_XDS_BOOTSTRAP) usage('set GRPC_XDS_BOOTSTRAP to the xDS bootstrap JSON file');
  return opts;
}

const STATUS_NAMES = Object.fromEntries(
  Object.entries(grpc.status).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k]),
);

class Tally {
  constructor() {
    this.ok = 0;
    this.errors = {};
    this.versions = {};
    this.messages = {};
  }

  record(err, resp) {
    if (err) {
      const code = STATUS_NAMES[err.code] || String(err.code);
      this.errors[code] = (this.errors[code] || 0) + 1;
      if (!(code in this.messages)) this.messages[code] = err.details || err.message;
    } else {
      this.ok++;
      this.versions[resp.version] = (this.versions[resp.version] || 0) + 1;
    }
  }

  count() {
    return this.ok + Object.values(this.errors).reduce((a, b) => a + b, 0);
  }
}

function makeCall(client, opts) {
  const md = new grpc.Metadata();
  for (const [k, v] of opts.metadata) md.add(k, v);
  return new Promise((resolve) => {
    client.Echo(
      { message: 'hello' },
      md,
      { deadline: Date.now() + opts.deadlineMs },
      (err, resp) => resolve([err, resp]),
    );
  });
}

async function runCalls(client, opts) {
  const tally = new Tally();
  let started = 0;
  const worker = async () => {
    while (started < opts.calls) {
      started++;
      const [err, resp] = await makeCall(client, opts);
      tally.record(err, resp);
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.concurrency, opts.calls) }, worker));
  process.stdout.write(JSON.stringify(tally) + '\n');
}

function runWatch(client, opts) {
  let window = 0;
  let tally = new Tally();
  let inflight = 0;
  const maxInflight = opts.concurrency * 10;
  const timer = setInterval(() => {
    if (inflight >= maxInflight) return;
    inflight++;
    makeCall(client, opts).then(([err, resp]) => {
      inflight--;
      tally.record(err, resp);
      if (tally.count() >= opts.window) {
        const line = { window: window++, at_ms: Date.now(), ...tally };
        process.stdout.write(JSON.stringify(line) + '\n');
        tally = new Tally();
      }
    });
  }, opts.intervalMs);
  const stop = () => {
    clearInterval(timer);
    client.close();
    process.exit(0);
  };
  setTimeout(stop, opts.durationMs);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
  process.on('SIGTERM', stop);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const echo = loadEcho();
  const client = new echo.Echo(opts.target, grpc.credentials.createInsecure());
  if (opts.watch) {
    runWatch(client, opts);
  } else {
    await runCalls(client, opts);
    client.close();
    process.exit(0);
  }
}

main().catch((err) => {
  process.stderr.write(`client.js: ${err.stack || err}\n`);
  process.exit(1);
});
