#!/usr/bin/env node
'use strict';
// gRPC echo backends for the interop tests.
//
//   node backend.js --name echo-v1 --version v1 [--name echo-v2 --version v2 ...]
//
// Starts one server per --name/--version pair on 127.0.0.1:0 and prints
// `listening NAME PORT` per server once it is bound, then `ready`. Each answers
// Echo with its own name and version. Exits when stdin closes or on SIGTERM,
// so it never outlives the test that spawned it.

const { grpc, loadEcho } = require('./echo');

function parseArgs(argv) {
  const names = [];
  const versions = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (flag === '--name' && value !== undefined) {
      names.push(value);
      i++;
    } else if (flag === '--version' && value !== undefined) {
      versions.push(value);
      i++;
    } else {
      throw new Error(`unknown or incomplete argument ${flag}; usage: backend.js --name N --version V [...]`);
    }
  }
  if (names.length === 0 || names.length !== versions.length) {
    throw new Error('give one --version per --name, at least one pair');
  }
  return names.map((name, i) => ({ name, version: versions[i] }));
}

function bind(server, addr) {
  return new Promise((resolve, reject) => {
    server.bindAsync(addr, grpc.ServerCredentials.createInsecure(), (err, port) => {
      if (err) reject(err);
      else resolve(port);
    });
  });
}

async function main() {
  const echo = loadEcho();
  const servers = [];
  for (const { name, version } of parseArgs(process.argv.slice(2))) {
    const server = new grpc.Server();
    server.addService(echo.Echo.service, {
      Echo(call, callback) {
        callback(null, { message: call.request.message, name, version });
      },
    });
    const port = await bind(server, '127.0.0.1:0');
    servers.push(server);
    process.stdout.write(`listening ${name} ${port}\n`);
  }
  process.stdout.write('ready\n');

  const stop = () => {
    for (const s of servers) s.forceShutdown();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
}

main().catch((err) => {
  process.stderr.write(`backend.js: ${err.stack || err}\n`);
  process.exit(1);
});
