// What every Node.js client of the mesh in these tests shares: load a proto of protos/ at run time, connect
// to one of its services with mTLS, and promise-based unary calls with a deadline.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const repoProtos = path.resolve(__dirname, '..', '..', 'protos');

// A client of agentmesh.v1.<service> (defined in protos/agentmesh/v1/<protoFile>) at `address`.
function connect(protoFile, service, address, caPath, certPath, keyPath) {
  const definition = protoLoader.loadSync(path.join(repoProtos, 'agentmesh/v1', protoFile), {
    keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [repoProtos],
  });
  const loaded = grpc.loadPackageDefinition(definition);
  const credentials = grpc.credentials.createSsl(
    fs.readFileSync(caPath), fs.readFileSync(keyPath), fs.readFileSync(certPath),
  );
  return new loaded.agentmesh.v1[service](address, credentials);
}

// Call unary `method` of `client`; resolves with the reply, rejects with the gRPC error.
function unary(client, method, request, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client[method](request, { deadline }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

// Run `main`; on failure print the status and exit 1 (the test reads stderr).
function run(main) {
  main().catch((err) => {
    console.error(`${grpc.status[err.code] || 'ERROR'}: ${err.details || err.message}`);
    process.exit(1);
  });
}

module.exports = { connect, grpc, run, unary };
