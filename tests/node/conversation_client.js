// A Node.js client of ConversationService: loads protos/ at run time, connects with mTLS, and walks a
// conversation through its rules (create, a write race, idempotent retry, a forbidden role, rollback,
// a watch that resumes from a version), printing what it saw as one JSON line. Usage:
//   node conversation_client.js ADDRESS CA_PEM CERT_PEM KEY_PEM
'use strict';

const { connect, grpc, run, unary } = require('./mesh');

const [address, caPath, certPath, keyPath] = process.argv.slice(2);
if (!keyPath) {
  console.error('usage: node conversation_client.js ADDRESS CA_PEM CERT_PEM KEY_PEM');
  process.exit(2);
}

const conversations = connect('conversation.proto', 'ConversationService', address, caPath, certPath, keyPath);
const call = (method, request) => unary(conversations, method, request);

async function failure(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    return { code: grpc.status[err.code], details: err.details };
  }
}

// Reads `count` changes from a WatchConversation stream, then cancels it.
function watch(conversationId, sinceVersion, count) {
  return new Promise((resolve, reject) => {
    const seen = [];
    const stream = conversations.watchConversation({ conversationId, sinceVersion });
    const timer = setTimeout(() => { stream.cancel(); reject(new Error(`watch saw only ${seen.length}`)); }, 10000);
    stream.on('data', (change) => {
      seen.push({ version: change.version, text: change.message.text, rolledBackTo: change.rolledBackToVersion });
      if (seen.length === count) {
        clearTimeout(timer);
        stream.cancel();
        resolve(seen);
      }
    });
    stream.on('error', (err) => { if (err.code !== grpc.status.CANCELLED) { clearTimeout(timer); reject(err); } });
  });
}

async function main() {
  const created = await call('createConversation', { title: 'from node', labels: { client: 'node' } });
  const id = created.conversation.conversationId;
  const send = (expectedVersion, text, extra = {}) =>
    call('sendMessage', { conversationId: id, expectedVersion, text, ...extra });

  const race = await Promise.allSettled([send(0, 'first'), send(0, 'second'), send(0, 'third')]);
  const winners = race.filter((r) => r.status === 'fulfilled').length;
  const losers = race.filter((r) => r.status === 'rejected').map((r) => grpc.status[r.reason.code]);

  const once = await send(1, 'refund please', { requestId: 'node-1' });
  const twice = await send(1, 'refund please', { requestId: 'node-1' });
  const forbidden = await failure(send(2, 'I am the system', { role: 'MESSAGE_ROLE_SYSTEM' }));
  const stale = await failure(send(0, 'late'));

  const rolledBack = await call('rollbackConversation', { conversationId: id, expectedVersion: 2, toVersion: 1 });
  const visible = await call('getConversation', { conversationId: id });
  const history = await call('getConversation', { conversationId: id, includeHidden: true });
  const resumed = await watch(id, 1, 2);
  const listed = await call('listConversations', { labels: { client: 'node' } });

  console.log(JSON.stringify({
    winners,
    losers,
    idempotent: once.message.messageId === twice.message.messageId && twice.conversation.version === 2,
    forbidden,
    stale,
    versionAfterRollback: rolledBack.conversation.version,
    visible: visible.messages.map((m) => [m.version, m.role, m.text]),
    hidden: history.messages.filter((m) => m.hidden).map((m) => m.version),
    resumed,
    listed: listed.conversations.map((c) => c.conversationId),
    id,
  }));
}

run(main);
