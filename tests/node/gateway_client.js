// A Node.js outside caller of the gateway: TLS (server certificate checked against CA_PEM, no client
// certificate) and an OAuth2 bearer JWT. It submits a task, reads it back, and in "explain" mode waits for
// the task to end and reads its explanation; prints what it got as one JSON line. Usage:
//   node gateway_client.js ADDRESS CA_PEM TOKEN [submit|explain]
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [address, caPath, token, mode = 'submit'] = process.argv.slice(2);
if (!token) {
  console.error('usage: node gateway_client.js ADDRESS CA_PEM TOKEN [submit|explain]');
  process.exit(2);
}

const repoProtos = path.resolve(__dirname, '..', '..', 'protos');
const definition = protoLoader.loadSync(
  [path.join(repoProtos, 'agentmesh/v1/task.proto'), path.join(__dirname, 'grpc/health/v1/health.proto')],
  { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [repoProtos, __dirname] },
);
const loaded = grpc.loadPackageDefinition(definition);

// TLS only; the caller is identified by its token, sent with every call.
const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
  const metadata = new grpc.Metadata();
  metadata.add('authorization', `Bearer ${token}`);
  callback(null, metadata);
});
const tls = grpc.credentials.createSsl(fs.readFileSync(caPath));
const health = new loaded.grpc.health.v1.Health(address, tls);
const tasks = new loaded.agentmesh.v1.TaskService(address, grpc.credentials.combineChannelCredentials(tls, bearer));
const anonymous = new loaded.agentmesh.v1.TaskService(address, tls);

function call(client, method, request, seconds = 10) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: new Date(Date.now() + seconds * 1000) }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

const FINAL = new Set(['TASK_STATE_SUCCEEDED', 'TASK_STATE_FAILED', 'TASK_STATE_CANCELLED']);

async function main() {
  const status = (await call(health, 'check', { service: '' })).status;
  let withoutToken;
  try {
    await call(anonymous, 'getTask', { taskId: 'x' });
  } catch (err) {
    withoutToken = grpc.status[err.code];
  }
  const ticket = {
    goal: 'Answer a customer support ticket',
    playbook: process.env.PLAYBOOK || '',
    input: {
      fields: {
        subject: { stringValue: 'Blender arrived broken - I want my money back' },
        text: { stringValue: 'My order NW-10482 arrived with a cracked jug. I would like a refund please.' },
        email: { stringValue: 'maria.lopez@example.com' },
      },
    },
  };
  const submitted = (await call(tasks, 'submitTask', ticket)).task;
  let task = (await call(tasks, 'getTask', { taskId: submitted.taskId })).task;
  let explanation = null;
  if (mode === 'explain') {
    const deadline = Date.now() + 90000;
    while (!FINAL.has(task.state) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      task = (await call(tasks, 'getTask', { taskId: submitted.taskId })).task;
    }
    explanation = (await call(tasks, 'explainTask', { taskId: submitted.taskId })).explanation;
  }
  console.log(JSON.stringify({
    health: status,
    withoutToken,
    taskId: submitted.taskId,
    state: task.state,
    submittedInput: submitted.input,
    steps: explanation ? explanation.plan.steps.map((s) => s.stepId) : null,
    attempts: explanation ? explanation.attempts.length : null,
    output: explanation ? explanation.task.output : null,
  }));
}

main().catch((err) => {
  console.error(`${grpc.status[err.code] || 'ERROR'}: ${err.details || err.message}`);
  process.exit(1);
});
