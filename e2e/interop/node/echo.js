'use strict';
// Loads keel.echo.Echo from ../proto/echo.proto for backend.js and client.js.

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', 'proto', 'echo.proto');

function loadEcho() {
  const def = protoLoader.loadSync(PROTO, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(def).keel.echo;
}

module.exports = { grpc, loadEcho };
