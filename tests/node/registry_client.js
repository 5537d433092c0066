// A Node.js client of the mesh: loads protos/ at run time, connects with mTLS, calls Health and the
// RegistryService, and prints what it got as one JSON line. Usage:
//   node registry_client.js ADDRESS CA_PEM CERT_PEM KEY_PEM
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [address, caPath, certPath, keyPath] = process.argv.slice(2);
if (!keyPath) {
  console.error('usage: node registry_client.js ADDRESS CA_PEM CERT_PEM KEY_PEM');
  process.exit(2);
}

const repoProtos = path.resolve(__dirname, '..', '..', 'protos');
const options = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true };
const definition = protoLoader.loadSync(
  [path.join(repoProtos, 'agentmesh/v1/registry.proto'), path.join(__dirname, 'grpc/health/v1/health.proto')],
  { ...options, includeDirs: [repoProtos, __dirname] },
);
const loaded = grpc.loadPackageDefinition(definition);

const credentials = grpc.credentials.createSsl(
  fs.readFileSync(caPath), fs.readFileSync(keyPath), fs.readFileSync(certPath),
);
const deadline = () => new Date(Date.now() + 5000);

const health = new loaded.grpc.health.v1.Health(address, credentials);
const registry = new loaded.agentmesh.v1.RegistryService(address, credentials);

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

async function main() {
  const overall = await call(health, 'check', { service: '' });
  const registryHealth = await call(health, 'check', { service: 'agentmesh.v1.RegistryService' });
  const listed = await call(registry, 'listAgents', { pageSize: 10 });
  let missing;
  try {
    await call(registry, 'getAgent', { namespace: 'nowhere', name: 'no-such-agent' });
  } catch (err) {
    missing = { code: grpc.status[err.code], details: err.details };
  }
  console.log(JSON.stringify({
    health: overall.status,
    registryHealth: registryHealth.status,
    instances: listed.instances.map((i) => `${i.card.namespace}/${i.card.name}@${i.card.version}`),
    missing,
  }));
}

main().catch((err) => {
  console.error(`${grpc.status[err.code] || 'ERROR'}: ${err.details || err.message}`);
  process.exit(1);
});
