// A Node.js client of TaskService: loads protos/ at run time, connects with mTLS, submits a task, waits for it
// to finish, and reads its explanation, printing what it saw as one JSON line. Usage:
//   node task_client.js ADDRESS CA_PEM CERT_PEM KEY_PEM PLAYBOOK INPUT_JSON
'use strict';

const { connect, grpc, run, unary } = require('./mesh');

const [address, caPath, certPath, keyPath, playbook, inputJson] = process.argv.slice(2);
if (!inputJson) {
  console.error('usage: node task_client.js ADDRESS CA_PEM CERT_PEM KEY_PEM PLAYBOOK INPUT_JSON');
  process.exit(2);
}

const tasks = connect('task.proto', 'TaskService', address, caPath, certPath, keyPath);
const call = (method, request) => unary(tasks, method, request);

// google.protobuf.Struct / Value <-> plain JSON (proto-loader hands over the wire shapes).
function toValue(value) {
  if (value === null) return { nullValue: 'NULL_VALUE' };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  switch (typeof value) {
    case 'string': return { stringValue: value };
    case 'number': return { numberValue: value };
    case 'boolean': return { boolValue: value };
    default: return { structValue: toStruct(value) };
  }
}
function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}
function fromValue(value) {
  if (!value) return null;
  switch (value.kind) {
    case 'stringValue': return value.stringValue;
    case 'numberValue': return value.numberValue;
    case 'boolValue': return value.boolValue;
    case 'structValue': return fromStruct(value.structValue);
    case 'listValue': return value.listValue.values.map(fromValue);
    default: return null;
  }
}
function fromStruct(struct) {
  return Object.fromEntries(Object.entries((struct && struct.fields) || {}).map(([k, v]) => [k, fromValue(v)]));
}

const FINAL = new Set(['TASK_STATE_SUCCEEDED', 'TASK_STATE_FAILED', 'TASK_STATE_CANCELLED']);

async function main() {
  const submitted = await call('submitTask', {
    goal: 'a task from node', playbook, input: toStruct(JSON.parse(inputJson)), requestId: 'node-task-1',
  });
  const again = await call('submitTask', {
    goal: 'a task from node', playbook, input: toStruct(JSON.parse(inputJson)), requestId: 'node-task-1',
  });
  const taskId = submitted.task.taskId;
  let task = submitted.task;
  const until = Date.now() + 30000;
  while (!FINAL.has(task.state)) {
    if (Date.now() > until) throw new Error(`task ${taskId} still ${task.state}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
    task = (await call('getTask', { taskId })).task;
  }
  const { explanation } = await call('explainTask', { taskId });
  let missing;
  try {
    await call('explainTask', { taskId: 'no-such-task' });
  } catch (err) {
    missing = grpc.status[err.code];
  }
  console.log(JSON.stringify({
    taskId,
    sameTaskOnRetry: again.task.taskId === taskId,
    state: task.state,
    output: fromStruct(task.output),
    plan: {
      playbook: explanation.plan.playbook,
      contentHash: explanation.plan.contentHash,
      steps: explanation.plan.steps.map((s) => s.stepId),
    },
    collaborators: explanation.collaborators.map((c) => ({
      step: c.stepId, chosen: `${c.chosen.namespace}/${c.chosen.name}@${c.chosen.version}`, reason: c.reason,
    })),
    substitutions: explanation.substitutions.map((s) => ({ step: s.stepId, template: s.template, value: fromValue(s.value) })),
    attempts: explanation.attempts.map((a) => ({ step: a.stepId, attempt: a.attempt, state: a.state })),
    missing,
  }));
}

run(main);
